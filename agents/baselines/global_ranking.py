"""`global-magnitude` / `global-taylor`: torch-pruning's group importance ranked across all groups."""

from __future__ import annotations

import torch
from torch import nn

from autoprune.constraints import Constraints, check_feasible
from autoprune.graph.channel_graph import ChannelGraph

from ..search_result import EvalCallback, Harness, ScoreFn, SearchResult
from .common import Batches, drop_lowest, group_importance


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
