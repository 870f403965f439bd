"""Latency study: how much faster on this CPU is ResNet-56 pruned to a FLOPs budget, by plan and width rounding?

    python bench/latency.py --weights ../shared/models/resnet56-cifar10jpeg.pt \
        --plan bench/runs/quality-resnet56/rl-t0.5-s0/plan.json

Writes bench/results/latency.md: for each plan (L1 projection, torch-pruning global magnitude ranking, uniform
L1 width, with widths rounded to multiples of 1 or 8, and any `--plan` files such as a search's plan.json) the
achieved FLOPs and the forward time of the physically pruned network against the unpruned one at batch 1 and 64.
Models are timed round-robin; a speed-up is the median over rounds of the unpruned time over the pruned time in
the same round (with its interquartile range), so load that drifts between rounds cancels.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from autoprune.agents.baselines import drop_lowest, group_importance, l1_priority, uniform_mask, uniform_ratio
from autoprune.constraints import Constraints, project
from autoprune.graph import build_channel_graph
from autoprune.models import build_model, load_weights
from autoprune.plan import Plan

BATCHES = (1, 64)


def interleaved_times(models: dict[str, torch.nn.Module], x: torch.Tensor, rounds: int, warmup: int = 3) -> dict:
    """Forward times of each model in seconds, one per round, timed round-robin so that load drifts hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            for _ in range(warmup):
                model(x)
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - start)
    return times


def speedup(times: dict[str, list[float]], name: str) -> str:
    """Median and interquartile range over rounds of the unpruned time over `name`'s time in the same round."""
    q1, median, q3 = np.percentile(np.array(times["unpruned"]) / np.array(times[name]), [25, 50, 75])
    return f"{median:.2f}× ({q1:.2f}-{q3:.2f})"


def plans(model: torch.nn.Module, graph, constraints: Constraints) -> dict[str, np.ndarray]:
    example = torch.zeros(1, 3, 32, 32)
    priority = l1_priority(graph)
    return {
        "L1 projection": project(graph, graph.full_mask(), constraints),
        "global magnitude": drop_lowest(graph, constraints, group_importance(model, example, graph)),
        "uniform L1": uniform_mask(graph, uniform_ratio(graph, constraints, priority), priority),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="ResNet-56 weights (random init when omitted)")
    parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--plan", action="append", default=[], help="a plan.json for ResNet-56 to time (repeatable)")
    parser.add_argument("--out", default="bench/results/latency.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = build_model("resnet56").eval()
    if args.weights:
        load_weights(model, args.weights)
    constraints = Constraints(flops=args.target_flops)
    models: dict[str, torch.nn.Module] = {"unpruned": model}
    costs = {"unpruned": "| – | 100.0% | 100.0% |"}
    for round_to in (1, 8):
        graph = build_channel_graph(model, torch.zeros(1, 3, 32, 32), model_name="resnet56", round_to=round_to)
        for name, keep in plans(model, graph, constraints).items():
            key = f"{name} | {round_to}"
            models[key] = Plan.from_mask(model, graph, keep).apply(model).eval()
            flops, params = graph.flops(keep) / graph.base_flops, graph.params(keep) / graph.base_params
            costs[key] = f"| {flops:.1%} | {params:.1%} |"
    for path in args.plan:
        plan = Plan.load(path)
        key = f"{plan.metrics.get('method', 'searched')} plan `{path}` | –"
        models[key] = plan.apply(model).eval()
        costs[key] = f"| {plan.achieved['flops_ratio']:.1%} | {plan.achieved['params_ratio']:.1%} |"
    rounds = {1: 200, 64: 40}
    times = {b: interleaved_times(models, torch.randn(b, 3, 32, 32), rounds[b]) for b in BATCHES}
    rows = [
        "| plan | round to | FLOPs | params | batch 1 ms | speed-up (IQR) | batch 64 ms | speed-up (IQR) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in models:
        cells = " | ".join(f"{statistics.median(times[b][key]) * 1e3:.2f} | {speedup(times[b], key)}" for b in BATCHES)
        rows.append(f"| {key} {costs[key]} {cells} |")
    lines = [
        "# Latency of pruned ResNet-56 on CPU",
        "",
        f"Command: `python bench/latency.py{' --weights ' + args.weights if args.weights else ''} "
        f"--target-flops {args.target_flops}{''.join(' --plan ' + p for p in args.plan)}`; "
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, CPU only, "
        f"torch {torch.__version__}; date {time.strftime('%Y-%m-%d %H:%M')}; load average at "
        f"the end {'/'.join(f'{v:.1f}' for v in os.getloadavg())}.",
        "",
        f"Target: FLOPs ≤ {args.target_flops:.0%}. {rounds[1]} (batch 1) and {rounds[64]} (batch 64) rounds of "
        "forward passes of each physically pruned network (torch-pruning removes the channels), timed round-robin "
        "with the unpruned one; ms: median time; speed-up: median over rounds of the unpruned time over the pruned "
        "time in the same round, with the interquartile range of that ratio.",
        "",
        *rows,
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
