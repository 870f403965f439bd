"""Helpers shared by the baselines: channel priorities, per-group widths, global rankings and the cut."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from autoprune.constraints import Constraints, check_feasible, project
from autoprune.errors import AutopruneError
from autoprune.graph.channel_graph import ChannelGraph
from autoprune.nn import CUSTOM_PRUNERS

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]

# The root types `autoprune.graph.tracing` groups from, so torch-pruning's groups line up with the graph's.
_ROOT_TYPES = (nn.Conv2d, nn.Conv1d, nn.Linear)


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


def uniform_ratio(
    graph: ChannelGraph,
    constraints: Constraints,
    priority: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    others: float | np.ndarray = 1.0,
) -> float:
    """The largest uniform keep ratio whose `uniform_mask` meets the constraints (bisection on costs only).

    Only the ratios `k / size` of some group change a mask, so the search runs over those exact fractions.

    Args:
        graph: the channel graph.
        constraints: the budgets.
        priority: channel priority within each group (default weight L1).
        groups: which prunable groups share the ratio (boolean, one per group; default all); the others keep
            `others` (a ratio, or one per group).
        others: keep ratio of the groups not in `groups`.

    Returns:
        The ratio; 0 when even ratio 0 breaks the budget (the caller checks feasibility).
    """
    priority = l1_priority(graph) if priority is None else priority
    prunable = graph.prunable_groups
    chosen = np.ones(len(prunable), dtype=bool) if groups is None else np.asarray(groups, dtype=bool)
    sizes = [g.size for g, c in zip(prunable, chosen, strict=True) if c]
    ratios = np.unique(np.concatenate([np.arange(n + 1) / n for n in sizes] or [[1.0]]))

    def mask(r: float) -> np.ndarray:
        return uniform_mask(graph, np.where(chosen, r, others), priority)

    lo, hi = 0, len(ratios) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if constraints.feasible(graph, mask(ratios[mid])):
            lo = mid
        else:
            hi = mid - 1
    return float(ratios[lo])


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
            group = tp_groups.get((g.root, g.size * g.blocks))
            if group is None:
                raise AutopruneError(
                    f"torch-pruning has no group rooted at {g.root!r} with {g.size * g.blocks} channels: "
                    "build the channel graph from this same model"
                )
            values = importance(group)
            if values is not None:
                # torch-pruning indexes importance by root channel; a group folded into equal blocks (grouped
                # convs, heads) has one decision per position in a block: its channels' mean, as torch-pruning does.
                values = values.detach().double().cpu().numpy().reshape(g.blocks, g.size).mean(0)
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
    spare = {g.index: max(0, g.size - graph.width_floor(g.size)) for g in graph.prunable_groups}
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
