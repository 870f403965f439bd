"""A latency plan timed end to end before it is written, and tightened where it runs slower than its budget.

The latency table is a model of the device; the plan is what the user runs. On this project's 2-core CPU the
table's estimates of search plans were up to 17% optimistic at batch 64 (`bench/results/latency_search.md`):
layers timed alone, and the work the table does not time (activations, adds), do not add up exactly to a network
whose widths the search chose. So the final mask is timed for real, paired with the unpruned network round by
round (the ratio is the median over rounds, so load drifts hit both alike). Where it exceeds the budget by more
than `TOLERANCE`, the table's budget is scaled down by estimated / measured, every group of the mask is shrunk by
one common factor to meet it (`rescale`, which keeps the allocation the search chose) and the mask is filled
again, at most `ATTEMPTS` times; the measurement is kept in the plan's metrics either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from autoprune.constraints import Constraints, fill, rescale
from autoprune.errors import AutopruneError
from autoprune.graph.channel_graph import ChannelGraph
from autoprune.recovery import Log

ATTEMPTS = 3
"""Tightenings of the table budget before the plan is kept as it is (with its measured latency reported)."""
TOLERANCE = 0.05
"""Measured latency may exceed the budget by this fraction of it before the plan is tightened: one paired
measurement on a shared CPU varies by a few percent, and tightening costs accuracy (a plan 7% tighter than the
search's best lost half its accuracy before fine-tuning on ResNet-56, `bench/results/latency_search.md`)."""
SECONDS = 4.0
"""Wall time one paired measurement aims for (within `ROUNDS`)."""
ROUNDS = (10, 200)
WARMUP = 3
"""Rounds timed and dropped first: they allocate and fill caches."""


@dataclass
class LatencyCheck:
    """The final plan's latency as measured on the search's device."""

    estimated: float
    """The table's latency ratio of the final mask."""
    measured: float
    """Median over paired rounds of the pruned network's time over the unpruned one's."""
    rounds: int
    """Paired rounds of the last measurement."""
    tightened: int
    """Times the mask was projected onto a tighter table budget because it measured over its budget."""

    def metrics(self) -> dict[str, float | int]:
        return {
            "latency_measured_ratio": round(self.measured, 4),
            "latency_estimated_ratio": round(self.estimated, 4),
            "latency_measured_rounds": self.rounds,
            "latency_tightened": self.tightened,
        }


@torch.no_grad()
def paired_times(models: list[nn.Module], x: torch.Tensor, rounds: int) -> np.ndarray:
    """Seconds of one forward pass of each model on `x`, (rounds, models): every round times all models in turn,
    so that load drifts hit them alike. The first rounds of cold models include allocation: drop them."""

    def timed(net: nn.Module) -> float:
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        net(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        return time.perf_counter() - start

    return np.array([[timed(net) for net in models] for _ in range(rounds)])


def measured_ratio(unpruned: nn.Module, pruned: nn.Module, x: torch.Tensor) -> tuple[float, int]:
    """Median over rounds of `pruned`'s forward time over `unpruned`'s in the same round, and the rounds timed."""
    first = paired_times([unpruned, pruned], x, WARMUP + 1)[-1].sum()  # after the rounds that fill caches
    rounds = int(np.clip(SECONDS / max(first, 1e-6), *ROUNDS))
    times = paired_times([unpruned, pruned], x, rounds)
    return float(np.median(times[:, 1] / times[:, 0])), rounds


def check_latency(
    model: nn.Module,
    graph: ChannelGraph,
    keep: np.ndarray,
    constraints: Constraints,
    device: torch.device | str,
    log: Log | None = None,
) -> tuple[np.ndarray, LatencyCheck]:
    """Time `keep` end to end against `constraints.latency`, tightening it while it measures over budget.

    Returns the mask to write (`keep` itself when it measured within budget) and the measurement.
    """
    from autoprune.plan import Plan  # the plan layer sits above the cost models

    table = constraints.latency_table
    if constraints.latency is None or table is None:
        raise ValueError("check_latency needs a latency budget and its table")
    device = torch.device(device)
    unpruned = model.to(device).eval()
    x = torch.randn(int(table.key["batch"]), *graph.input_shape, device=device)
    budget, tightened = constraints.latency, 0
    while True:
        pruned = Plan.from_mask(model, graph, keep).apply(model).to(device).eval()
        measured, rounds = measured_ratio(unpruned, pruned, x)
        estimated = table.ratio(graph, keep)
        if log:
            log(f"latency measured end to end: {measured:.1%} of the unpruned model (table: {estimated:.1%})")
        if measured <= constraints.latency * (1 + TOLERANCE) or tightened == ATTEMPTS:
            return keep, LatencyCheck(estimated, measured, rounds, tightened)
        budget = min(budget, constraints.latency * estimated / measured)  # the table's bias on this mask
        tighter = Constraints(
            flops=constraints.flops, params=constraints.params, latency=budget, latency_table=table
        )  # fmt: skip
        try:
            keep = fill(graph, rescale(graph, keep, tighter), tighter)
        except AutopruneError as error:  # the tighter budget is out of reach: keep the plan, say so
            if log:
                log(f"cannot tighten the latency budget further ({error}); keeping the plan")
            return keep, LatencyCheck(estimated, measured, rounds, tightened)
        tightened += 1
        if log:
            log(f"over budget: shrinking the plan onto {budget:.1%} of the table's latency")
