"""Baseline pruning searches, all run through the same `Harness` and evaluation budget as the agent.

- `l1-uniform`: the same keep ratio in every group, the top weight-L1 channels kept (deterministic).
- `global-magnitude` / `global-taylor`: torch-pruning's group importance ranked across all groups, as in its
  global pruning, with the FLOPs budget instead of a channel ratio as the stopping rule (deterministic).
- `random-search`: random per-group keep ratios, top-L1 channels per group, best of the budget.
- `random-masks`: per-channel Bernoulli masks biased towards large weights, best of the budget.
- `structural`: groups that merge with others (residual streams, concats) kept whole while the budget allows,
  one uniform L1 ratio for the rest (deterministic; the rule of thumb a practitioner applies by hand).
- `sensitivity`: every group probed alone at a few widths, widths allocated greedily by measured accuracy drop
  per unit of cost (NetAdapt / ModelOpt FastNAS style; the probes count against the budget).

One file per method; `common.py` holds what they share.

Every scored mask is projected onto the constraints first (`autoprune.constraints.project`), so every entry of
every history is a feasible network. Randomness comes only from `np.random.default_rng(seed)`; a random method
draws its candidates in sequence, so a run with a larger budget scores the smaller run's candidates first.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from autoprune.constraints import Constraints
from autoprune.errors import AutopruneError
from autoprune.graph.channel_graph import ChannelGraph

from ..search_result import EvalCallback, ScoreFn, SearchResult
from .common import (
    Batches,
    drop_lowest,
    group_importance,
    l1_priority,
    top_channels,
    uniform_mask,
    uniform_ratio,
)
from .global_ranking import global_ranking
from .l1_uniform import l1_uniform
from .random_masks import keep_probabilities, random_masks
from .random_search import random_search
from .sensitivity import sensitivity_search
from .structural import structural_rule


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
        probe_fn: ScoreFn | None = None,
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


def _structural(graph, constraints, score_fn, *, budget, on_eval=None, **_) -> SearchResult:
    return structural_rule(graph, constraints, score_fn, budget, on_eval=on_eval)


def _sensitivity(graph, constraints, score_fn, *, budget, probe_fn=None, on_eval=None, **_) -> SearchResult:
    return sensitivity_search(graph, constraints, score_fn, budget, probe_fn=probe_fn, on_eval=on_eval)


BASELINES: dict[str, Baseline] = {
    "structural": _structural,
    "sensitivity": _sensitivity,
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
    probe_fn: ScoreFn | None = None,
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
        probe_fn: scores masks outside the budget (sensitivity probes; default `score_fn`).
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
        probe_fn=probe_fn,
        on_eval=on_eval,
    )


__all__ = [
    "BASELINES",
    "Baseline",
    "drop_lowest",
    "global_ranking",
    "group_importance",
    "keep_probabilities",
    "l1_priority",
    "l1_uniform",
    "random_masks",
    "random_search",
    "run_baseline",
    "sensitivity_search",
    "structural_rule",
    "top_channels",
    "uniform_mask",
    "uniform_ratio",
]
