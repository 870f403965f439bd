"""`l1-uniform`: the same keep ratio in every group, the top weight-L1 channels kept (one evaluation)."""

from __future__ import annotations

from autoprune.constraints import Constraints, check_feasible, project
from autoprune.graph.channel_graph import ChannelGraph

from ..search_result import EvalCallback, Harness, ScoreFn, SearchResult
from .common import l1_priority, uniform_mask, uniform_ratio


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
