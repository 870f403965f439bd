"""`random-search`: random per-group keep ratios, top-L1 channels per group, best of the budget."""

from __future__ import annotations

import numpy as np

from autoprune.constraints import Constraints, check_feasible, rescale
from autoprune.errors import AutopruneError
from autoprune.graph.channel_graph import ChannelGraph

from ..search_result import EvalCallback, Harness, ScoreFn, SearchResult
from .common import l1_priority, uniform_mask, uniform_ratio


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
        keeps = [
            rescale(graph, uniform_mask(graph, rng.uniform(low, 1.0, size=len(graph.prunable_groups)), priority),
                    constraints, priority)
            for _ in range(harness.batch)
        ]  # fmt: skip
        harness.prefetch(keeps)
        for keep in keeps:
            harness(keep)
    return harness.result("random-search")
