"""`structural`: the rule of thumb a practitioner applies by hand, defined for any network (one evaluation).

Groups whose channels merge with other layers' channels (a residual stream written by several layers, or
channels re-indexed into a concat; `ChannelGraph.crosses_merge`) are kept whole while the budget allows; every
other group keeps the same fraction of its channels, top weight-L1 first. When even cutting every other group to
its floor breaks the budget, those stay at the floor and the merged groups share one uniform ratio instead.
"""

from __future__ import annotations

import numpy as np

from autoprune.constraints import Constraints, check_feasible, project
from autoprune.graph.channel_graph import ChannelGraph

from ..search_result import EvalCallback, Harness, ScoreFn, SearchResult
from .common import l1_priority, uniform_mask, uniform_ratio


def structural_mask(graph: ChannelGraph, constraints: Constraints) -> np.ndarray:
    """The rule's feasible mask (see the module docstring)."""
    check_feasible(graph, constraints)
    priority = l1_priority(graph)
    merged = np.array([graph.crosses_merge(g) for g in graph.prunable_groups], dtype=bool)
    inner_floor = uniform_mask(graph, np.where(merged, 1.0, 0.0), priority)
    if merged.all() or not constraints.feasible(graph, inner_floor):
        ratio = uniform_ratio(graph, constraints, priority, groups=merged, others=0.0)
        keep = uniform_mask(graph, np.where(merged, ratio, 0.0), priority)
    else:
        ratio = uniform_ratio(graph, constraints, priority, groups=~merged, others=1.0)
        keep = uniform_mask(graph, np.where(merged, 1.0, ratio), priority)
    return project(graph, keep, constraints, priority)


def structural_rule(
    graph: ChannelGraph,
    constraints: Constraints,
    score_fn: ScoreFn,
    budget: int = 1,
    on_eval: EvalCallback | None = None,
) -> SearchResult:
    """Score the rule's mask once; deterministic, so the rest of `budget` is left unused."""
    harness = Harness(graph, constraints, score_fn, budget, on_eval)
    harness(structural_mask(graph, constraints))
    return harness.result("structural")
