"""`sensitivity`: measure how much each group costs in accuracy when cut, then allocate widths to the budget.

In the manner of NetAdapt and ModelOpt's FastNAS: every prunable group is cut alone to a few widths (its top
weight-L1 channels kept, every other group whole) and scored; those probes count against the evaluation budget
like any candidate. The widths are then allocated greedily: starting from the full network, the group whose next
cut loses the least predicted accuracy per unit of budgeted cost is cut, until the budget holds. Predicted loss
is the sum of the groups' measured drops, interpolated linearly between the measured widths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from autoprune.constraints import Constraints, check_feasible, project
from autoprune.errors import AutopruneError
from autoprune.graph.channel_graph import ChannelGraph

from ..search_result import EvalCallback, Harness, ScoreFn, SearchResult
from .common import l1_priority, top_channels

WIDTHS = (0.25, 0.5, 0.75)
"""Fractions of a group's channels each probe keeps."""
STEPS = 16
"""A group is cut in steps of 1/STEPS of its channels (at least one channel)."""


@dataclass(frozen=True)
class Sensitivity:
    """Measured accuracy drops of cutting one group alone.

    Attributes:
        widths: kept fractions probed, ascending.
        drops: (groups, widths) the unpruned score minus the probe's score.
    """

    widths: np.ndarray
    drops: np.ndarray

    def drop(self, group: int, width: float) -> float:
        """Predicted drop of group `group` at kept fraction `width` (linear between probes, 0 at width 1;
        below the narrowest probe, the first segment's slope is continued)."""
        xs = np.concatenate([self.widths, [1.0]])
        ys = np.concatenate([self.drops[group], [0.0]])
        if width >= xs[0]:
            return float(np.interp(width, xs, ys))
        slope = (ys[1] - ys[0]) / (xs[1] - xs[0])
        return float(ys[0] + slope * (width - xs[0]))

    def at_half(self) -> np.ndarray:
        """Each group's predicted drop at half its width (a node feature of the agent)."""
        return np.array([self.drop(g, 0.5) for g in range(len(self.drops))])


def probes_needed(graph: ChannelGraph, widths: Sequence[float] = WIDTHS) -> int:
    return len(graph.prunable_groups) * len(widths)


def measure_sensitivity(
    graph: ChannelGraph,
    probe: ScoreFn,
    base_score: float,
    widths: Sequence[float] = WIDTHS,
    priority: np.ndarray | None = None,
    prefetch: Callable[[list[np.ndarray]], None] | None = None,
) -> Sensitivity:
    """Probe every group at every width in `widths` (one evaluation each) and record the drops.

    Args:
        graph: the channel graph.
        probe: scores a mask that need not meet the budget (e.g. `Harness.probe`).
        base_score: the unpruned network's score.
        widths: kept fractions to probe.
        priority: which channels a cut group keeps (default weight L1).
        prefetch: given every probe's mask first, to score them together (`BatchedScorer.prefetch_probes`).
    """
    priority = l1_priority(graph) if priority is None else priority
    groups = graph.prunable_groups
    sizes = np.array([g.size for g in groups])
    masks = []
    for i in range(len(groups)):
        for width in widths:
            counts = sizes.copy()
            counts[i] = max(1, int(np.ceil(width * sizes[i] - 1e-9)))
            masks.append(top_channels(graph, counts, priority))
    if prefetch is not None:
        prefetch(masks)
    drops = base_score - np.array([probe(keep) for keep in masks], dtype=float).reshape(len(groups), len(widths))
    return Sensitivity(widths=np.asarray(widths, dtype=float), drops=drops)


def budget_cost(graph: ChannelGraph, constraints: Constraints, keep: np.ndarray) -> float:
    """Sum of the budgeted cost ratios of `keep` (FLOPs and/or parameters, whichever are constrained)."""
    ratios = constraints.ratios(graph, keep)
    return sum(ratios[k] for k, t in (("flops", constraints.flops), ("params", constraints.params)) if t is not None)


def allocate(
    graph: ChannelGraph, constraints: Constraints, sensitivity: Sensitivity, priority: np.ndarray | None = None
) -> np.ndarray:
    """Greedy widths: cut the group with the least predicted drop per unit of cost saved until the budget holds."""
    check_feasible(graph, constraints)
    priority = l1_priority(graph) if priority is None else priority
    sizes = np.array([g.size for g in graph.prunable_groups])
    floor = np.array([graph.width_floor(int(size)) for size in sizes])
    step = np.array([max(int(size) // STEPS, graph.width_step(int(size))) for size in sizes])
    counts = sizes.copy()
    keep = top_channels(graph, counts, priority)
    while not constraints.feasible(graph, keep):
        cost = budget_cost(graph, constraints, keep)
        best, best_value = -1, np.inf
        for g in np.flatnonzero(counts > floor):
            trial = counts.copy()
            trial[g] = max(floor[g], counts[g] - step[g])
            saved = cost - budget_cost(graph, constraints, top_channels(graph, trial, priority))
            if saved <= 0:
                continue
            loss = sensitivity.drop(g, trial[g] / sizes[g]) - sensitivity.drop(g, counts[g] / sizes[g])
            if loss / saved < best_value:
                best, best_value = g, loss / saved
        if best < 0:
            break  # nothing left to cut group by group; the projection below finishes the job
        counts[best] = max(floor[best], counts[best] - step[best])
        keep = top_channels(graph, counts, priority)
    return project(graph, keep, constraints, priority)


def sensitivity_search(
    graph: ChannelGraph,
    constraints: Constraints,
    score_fn: ScoreFn,
    budget: int,
    probe_fn: ScoreFn | None = None,
    on_eval: EvalCallback | None = None,
) -> SearchResult:
    """Probe the unpruned network and every group (`probes_needed`), allocate widths, score the allocation.

    Args:
        graph: the channel graph.
        constraints: the budgets.
        score_fn: scores a feasible keep-mask, higher is better.
        budget: evaluations allowed; at least `probes_needed(graph) + 2`.
        probe_fn: scores the probes (default `score_fn`); e.g. a cheaper estimate against the unpruned network.
        on_eval: called with each candidate's history record.
    """
    harness = Harness(graph, constraints, score_fn, budget, on_eval)
    check_feasible(graph, constraints)
    needed = probes_needed(graph) + 2
    if budget < needed:
        raise AutopruneError(
            f"the sensitivity baseline needs at least {needed} evaluations for this network (the unpruned "
            f"network, {len(graph.prunable_groups)} groups × {len(WIDTHS)} widths, the allocation); raise --evaluations"
        )
    base = harness.probe(graph.full_mask(), probe_fn)
    profile = measure_sensitivity(
        graph, lambda keep: harness.probe(keep, probe_fn), base, prefetch=getattr(probe_fn, "prefetch", None)
    )
    harness(allocate(graph, constraints, profile))
    return harness.result("sensitivity")
