"""`random-masks`: per-channel Bernoulli masks biased towards large weights, best of the budget."""

from __future__ import annotations

import numpy as np

from autoprune.constraints import Constraints, check_feasible, rescale
from autoprune.errors import AutopruneError
from autoprune.graph.channel_graph import ChannelGraph

from ..search_result import EvalCallback, Harness, ScoreFn, SearchResult
from .common import l1_priority

_BISECT_STEPS = 60


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
        keeps = [
            rescale(graph, (rng.random(graph.num_decisions) < p).astype(np.int8), constraints, priority)
            for _ in range(harness.batch)
        ]
        harness.prefetch(keeps)
        for keep in keeps:
            harness(keep)
    return harness.result("random-masks")
