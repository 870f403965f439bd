"""Baseline pruning searches, all run through the same `Harness` and evaluation budget as the agent.

- `l1-uniform`: the same keep ratio in every group, the top weight-L1 channels kept (deterministic).
- `global-magnitude` / `global-taylor`: torch-pruning's group importance ranked across all groups, as in its
  global pruning, with the FLOPs budget instead of a channel ratio as the stopping rule (deterministic).
- `random-search`: random per-group keep ratios, top-L1 channels per group, best of the budget.
- `random-masks`: per-channel Bernoulli masks biased towards large weights, best of the budget.

Every scored mask is projected onto the constraints first (`autoprune.constraints.project`), so every entry of
every history is a feasible network. Randomness comes only from `np.random.default_rng(seed)`; a random method
draws its candidates in sequence, so a run with a larger budget scores the smaller run's candidates first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from autoprune.constraints import Constraints, check_feasible, project
from autoprune.errors import AutopruneError
from autoprune.graph.channel_graph import ChannelGraph
from autoprune.nn import CUSTOM_PRUNERS

from .search_result import EvalCallback, Harness, ScoreFn, SearchResult

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]

# The root types `autoprune.graph.tracing` groups from, so torch-pruning's groups line up with the graph's.
_ROOT_TYPES = (nn.Conv2d, nn.Conv1d, nn.Linear)
_BISECT_STEPS = 60


def l1_priority(graph: ChannelGraph) -> np.ndarray:
    """Weight L1 of every decision relative to its group's mean (`graph.channel_stats[:, 0]`)."""
    return graph.channel_stats[:, 0].astype(np.float64)


def top_channels(graph: ChannelGraph, counts: Sequence[int] | np.ndarray, priority: np.ndarray) -> np.ndarray:
    """The legal mask keeping the `counts[i]` highest-priority channels of prunable group `i`."""
    keep = np.zeros(graph.num_decisions, dtype=np.int8)
    for g, k in zip(graph.prunable_groups, counts, strict=True):
        order = np.argsort(-priority[g.offset : g.offset + g.size], kind="stable")
        keep[g.offset + order[: int(k)]] = 1
    return graph.legalize(keep, priority)


def uniform_mask(graph: ChannelGraph, ratio: float | np.ndarray, priority: np.ndarray) -> np.ndarray:
    """Keep `ceil(ratio * size)` top-priority channels per group; `ratio` is a scalar or one value per group."""
    sizes = np.array([g.size for g in graph.prunable_groups])
    counts = np.clip(np.ceil(np.asarray(ratio) * sizes - 1e-9), 0, sizes).astype(int)
    return top_channels(graph, counts, priority)


def uniform_ratio(graph: ChannelGraph, constraints: Constraints, priority: np.ndarray | None = None) -> float:
    """The largest uniform keep ratio whose `uniform_mask` meets the constraints (bisection on costs only).

    Only the ratios `k / size` of some group change a mask, so the search runs over those exact fractions.
    """
    priority = l1_priority(graph) if priority is None else priority
    ratios = np.unique(np.concatenate([np.arange(g.size + 1) / g.size for g in graph.prunable_groups] or [[1.0]]))
    lo, hi = 0, len(ratios) - 1  # ratio 0 is the smallest network, feasible after `check_feasible`
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if constraints.feasible(graph, uniform_mask(graph, ratios[mid], priority)):
            lo = mid
        else:
            hi = mid - 1
    return float(ratios[lo])


def l1_uniform(
    graph: ChannelGraph,
    constraints: Constraints,
    score_fn: ScoreFn,
    budget: int = 1,
    on_eval: EvalCallback | None = None,
) -> SearchResult:
    """Uniform-width L1 pruning: one keep ratio for every group, the top weight-L1 channels kept.

    The ratio is the largest meeting the budget, found by bisection on the cost model; the mask is then projected
    (a no-op unless rounding left it over a budget). Deterministic, so it scores one mask and leaves the rest of
    `budget` unused.
    """
    harness = Harness(graph, constraints, score_fn, budget, on_eval)
    check_feasible(graph, constraints)
    priority = l1_priority(graph)
    keep = uniform_mask(graph, uniform_ratio(graph, constraints, priority), priority)
    harness(project(graph, keep, constraints, priority))
    return harness.result("l1-uniform")


def group_importance(
    model: nn.Module,
    example_input: torch.Tensor,
    graph: ChannelGraph,
    criterion: str = "magnitude",
    batches: Batches | None = None,
) -> np.ndarray:
    """Torch-pruning's group importance of every decision, normalised per group as its global pruning does.

    Uses `tp.importance.GroupMagnitudeImportance()` or `GroupTaylorImportance()` with torch-pruning's defaults
    (group L2 norm resp. |w * dL/dw|, mean over the group's layers, divided by the group mean). Taylor gradients
    are summed over `batches` under cross-entropy, in eval mode; the model's parameters, gradients, BN
    statistics and mode are left as they were.

    Args:
        model: the unpruned network `graph` was built from.
        example_input: an input batch for tracing, on the model's device.
        graph: its channel graph.
        criterion: `magnitude` or `taylor`.
        batches: labelled training batches (x, y) for `taylor`.

    Returns:
        One score per decision, higher means more important.
    """
    if criterion == "magnitude":
        importance: tp.importance.GroupMagnitudeImportance = tp.importance.GroupMagnitudeImportance()
    elif criterion == "taylor":
        if not batches:
            raise AutopruneError("the taylor criterion needs a few labelled training batches for its gradients")
        importance = tp.importance.GroupTaylorImportance()
    else:
        raise AutopruneError(f"unknown importance criterion {criterion!r}; use 'magnitude' or 'taylor'")

    names = {m: n for n, m in model.named_modules()}
    was_training = model.training
    model.eval()
    params = list(model.parameters())
    saved = [(p.grad, p.requires_grad) for p in params]
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, customized_pruners=dict(CUSTOM_PRUNERS)
            )
            if criterion == "taylor":
                for p in params:
                    p.grad = None
                    p.requires_grad_(True)
                device = example_input.device
                for x, y in batches or ():
                    F.cross_entropy(model(x.to(device)), y.to(device)).backward()
        tp_groups = {}
        for group in dg.get_all_groups(ignored_layers=[], root_module_types=_ROOT_TYPES):
            tp_groups[(names.get(group[0].dep.target.module, ""), len(group[0].idxs))] = group
        scores = l1_priority(graph).copy()  # kept for groups torch-pruning finds no weights in
        for g in graph.prunable_groups:
            group = tp_groups.get((g.root, g.size))
            if group is None:
                raise AutopruneError(
                    f"torch-pruning has no group rooted at {g.root!r} with {g.size} channels: "
                    "build the channel graph from this same model"
                )
            values = importance(group)
            if values is not None:
                # torch-pruning indexes importance by root channel, which is the decision's position in the group.
                values = values.detach().double().cpu().numpy()
                scores[g.offset : g.offset + g.size] = np.nan_to_num(values, nan=0.0, posinf=0.0)
        return scores
    finally:
        for p, (grad, requires_grad) in zip(params, saved, strict=True):
            p.grad = grad
            p.requires_grad_(requires_grad)
        model.train(was_training)


def drop_lowest(graph: ChannelGraph, constraints: Constraints, scores: np.ndarray) -> np.ndarray:
    """Remove channels in ascending `scores` across all groups until the constraints hold.

    Channels whose removal would take a group below its floor (`min_channels`, rounded) are skipped, as
    torch-pruning's global pruning skips groups at their maximum sparsity. The fewest removals that fit are
    found by bisection on the cost model.
    """
    check_feasible(graph, constraints)
    full = graph.full_mask()
    if constraints.feasible(graph, full):
        return full
    floor = -(-graph.min_channels // graph.round_to) * graph.round_to
    spare = {g.index: max(0, g.size - floor) for g in graph.prunable_groups}
    group_of = graph.decision_group
    order = []
    for i in np.argsort(scores, kind="stable"):
        if spare[group_of[i]] > 0:
            spare[group_of[i]] -= 1
            order.append(i)
    order = np.asarray(order, dtype=np.int64)

    def dropped(k: int) -> np.ndarray:
        keep = full.copy()
        keep[order[:k]] = 0
        return graph.legalize(keep, scores)

    lo, hi = 0, len(order)
    while lo < hi:
        mid = (lo + hi) // 2
        if constraints.feasible(graph, dropped(mid)):
            hi = mid
        else:
            lo = mid + 1
    # Rounding in `legalize` can break monotonicity; projection restores feasibility if it did.
    return project(graph, dropped(lo), constraints, scores)


def global_ranking(
    model: nn.Module,
    example_input: torch.Tensor,
    graph: ChannelGraph,
    constraints: Constraints,
    score_fn: ScoreFn,
    criterion: str = "magnitude",
    batches: Batches | None = None,
    budget: int = 1,
    on_eval: EvalCallback | None = None,
) -> SearchResult:
    """Torch-pruning-style global pruning: rank every channel by normalised group importance, drop the lowest.

    See `group_importance` for the scores and `drop_lowest` for the cut. Deterministic, so it scores one mask and
    leaves the rest of `budget` unused.

    Args:
        model: the unpruned network `graph` was built from.
        example_input: an input batch for tracing, on the model's device.
        graph: its channel graph.
        constraints: the budgets.
        score_fn: scores a keep-mask, higher is better.
        criterion: `magnitude` (`GroupMagnitudeImportance`) or `taylor` (`GroupTaylorImportance`).
        batches: labelled training batches for `taylor` gradients (a few are enough).
        budget: evaluations allowed (one is used).
        on_eval: called with each history record.
    """
    harness = Harness(graph, constraints, score_fn, budget, on_eval)
    check_feasible(graph, constraints)
    scores = group_importance(model, example_input, graph, criterion, batches)
    harness(drop_lowest(graph, constraints, scores))
    return harness.result(f"global-{criterion}")


def random_search(
    graph: ChannelGraph,
    constraints: Constraints,
    score_fn: ScoreFn,
    budget: int,
    seed: int = 0,
    low: float | None = None,
    on_eval: EvalCallback | None = None,
) -> SearchResult:
    """Random per-group widths: each candidate draws a keep ratio per group uniformly from [low, 1].

    Each group keeps its top weight-L1 channels at the drawn ratio; the mask is projected onto the constraints
    and scored. Returns the best of `budget` candidates.

    Args:
        graph: the channel graph.
        constraints: the budgets.
        score_fn: scores a keep-mask, higher is better.
        budget: evaluations (candidates).
        seed: seeds `np.random.default_rng`.
        low: smallest ratio drawn; default `max(0, 2 r - 1)` with `r` the uniform ratio meeting the budget, so
            the mean width is that of `l1-uniform`, the all-`low` mask is feasible, and wider draws are
            projected down.
        on_eval: called with each history record.
    """
    harness = Harness(graph, constraints, score_fn, budget, on_eval)
    check_feasible(graph, constraints)
    rng = np.random.default_rng(seed)
    priority = l1_priority(graph)
    if low is None:
        low = max(0.0, 2 * uniform_ratio(graph, constraints, priority) - 1)
    if not 0 <= low <= 1:
        raise AutopruneError(f"low must be in [0, 1], got {low}")
    while harness.remaining:
        ratios = rng.uniform(low, 1.0, size=len(graph.prunable_groups))
        harness(project(graph, uniform_mask(graph, ratios, priority), constraints, priority))
    return harness.result("random-search")


def keep_probabilities(graph: ChannelGraph, constraints: Constraints, temperature: float = 1.0) -> np.ndarray:
    """Per-decision keep probability `sigmoid((log L1 - shift) / temperature)` at the expected-cost target.

    The global `shift` is found by bisection so that the expected FLOPs (and parameters) of the sampled mask
    meet the constraints, just. The cost model is bilinear in kept channels, so the cost of the probability
    vector is the expected cost whenever a module's input and output channels belong to different decisions.
    """
    if temperature <= 0:
        raise AutopruneError(f"temperature must be positive, got {temperature}")
    log_l1 = np.log(np.maximum(l1_priority(graph), 1e-12))

    def probs(shift: float) -> np.ndarray:
        return 1 / (1 + np.exp(-np.clip((log_l1 - shift) / temperature, -60, 60)))

    lo = float(log_l1.min()) - 60 * temperature  # every channel kept (probability ~1)
    hi = float(log_l1.max()) + 60 * temperature  # every channel dropped
    if constraints.feasible(graph, probs(lo)):
        return probs(lo)
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        if constraints.feasible(graph, probs(mid)):
            hi = mid
        else:
            lo = mid
    return probs(hi)


def random_masks(
    graph: ChannelGraph,
    constraints: Constraints,
    score_fn: ScoreFn,
    budget: int,
    seed: int = 0,
    temperature: float = 1.0,
    on_eval: EvalCallback | None = None,
) -> SearchResult:
    """Randomised mask generation and selection: sample magnitude-biased masks, keep the best.

    Each channel is kept independently with the probability from `keep_probabilities`; the sample is projected
    onto the constraints and scored. Returns the best of `budget` samples.

    Args:
        graph: the channel graph.
        constraints: the budgets.
        score_fn: scores a keep-mask, higher is better.
        budget: evaluations (samples).
        seed: seeds `np.random.default_rng`.
        temperature: spread of the probabilities in log-L1 units; small is nearly greedy by magnitude,
            large nearly uniform.
        on_eval: called with each history record.
    """
    harness = Harness(graph, constraints, score_fn, budget, on_eval)
    check_feasible(graph, constraints)
    rng = np.random.default_rng(seed)
    priority = l1_priority(graph)
    p = keep_probabilities(graph, constraints, temperature)
    while harness.remaining:
        keep = (rng.random(graph.num_decisions) < p).astype(np.int8)
        harness(project(graph, keep, constraints, priority))
    return harness.result("random-masks")


class Baseline(Protocol):
    """The uniform signature of every `BASELINES` entry; entries ignore what they do not use."""

    def __call__(
        self,
        graph: ChannelGraph,
        constraints: Constraints,
        score_fn: ScoreFn,
        *,
        budget: int,
        seed: int = 0,
        model: nn.Module | None = None,
        example_input: torch.Tensor | None = None,
        batches: Batches | None = None,
        on_eval: EvalCallback | None = None,
    ) -> SearchResult: ...


def _l1_uniform(graph, constraints, score_fn, *, budget, on_eval=None, **_) -> SearchResult:
    return l1_uniform(graph, constraints, score_fn, budget, on_eval=on_eval)


def _global(criterion: str) -> Baseline:
    def run(graph, constraints, score_fn, *, budget, model=None, example_input=None, batches=None, on_eval=None, **_):
        if model is None or example_input is None:
            raise AutopruneError(f"global-{criterion} needs the model and an example input")
        return global_ranking(
            model, example_input, graph, constraints, score_fn, criterion, batches, budget=budget, on_eval=on_eval
        )

    return run


def _random_search(graph, constraints, score_fn, *, budget, seed=0, on_eval=None, **_) -> SearchResult:
    return random_search(graph, constraints, score_fn, budget, seed, on_eval=on_eval)


def _random_masks(graph, constraints, score_fn, *, budget, seed=0, on_eval=None, **_) -> SearchResult:
    return random_masks(graph, constraints, score_fn, budget, seed, on_eval=on_eval)


BASELINES: dict[str, Baseline] = {
    "l1-uniform": _l1_uniform,
    "global-magnitude": _global("magnitude"),
    "global-taylor": _global("taylor"),
    "random-search": _random_search,
    "random-masks": _random_masks,
}
"""Baseline name -> search with the `Baseline` signature."""


def run_baseline(
    name: str,
    graph: ChannelGraph,
    constraints: Constraints,
    score_fn: ScoreFn,
    *,
    budget: int,
    seed: int = 0,
    model: nn.Module | None = None,
    example_input: torch.Tensor | None = None,
    batches: Batches | None = None,
    on_eval: EvalCallback | None = None,
) -> SearchResult:
    """Run the baseline called `name` (a key of `BASELINES`) with at most `budget` evaluations.

    Args:
        name: which baseline.
        graph: the channel graph.
        constraints: the budgets.
        score_fn: scores a keep-mask, higher is better.
        budget: most evaluations; deterministic baselines use one.
        seed: seeds the random baselines.
        model: the unpruned network (global-* only).
        example_input: an input batch for tracing (global-* only).
        batches: labelled training batches (global-taylor only).
        on_eval: called with each history record.
    """
    if name not in BASELINES:
        raise AutopruneError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    return BASELINES[name](
        graph,
        constraints,
        score_fn,
        budget=budget,
        seed=seed,
        model=model,
        example_input=example_input,
        batches=batches,
        on_eval=on_eval,
    )


__all__ = [
    "BASELINES",
    "Baseline",
    "drop_lowest",
    "global_ranking",
    "group_importance",
    "keep_probabilities",
    "l1_uniform",
    "random_masks",
    "random_search",
    "run_baseline",
    "top_channels",
    "uniform_mask",
    "uniform_ratio",
]
