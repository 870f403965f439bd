"""How well the latency table predicts widths on its grid and off it, measured on this machine.

    OMP_NUM_THREADS=1 python bench/latency_grid.py --weights ../shared/models/resnet56-cifar10jpeg.pt \
        --data-dir ../shared/data/cifar10-jpeg.tar.gz

Draws random per-group widths, times each physically pruned network end to end round-robin with the unpruned
one, and compares the table's latency ratio with the measured one: once for the widths as drawn (off the grid,
interpolated) and once with each width rounded to the table's grid (what a latency search proposes). Writes
bench/results/latency_grid.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from autoprune.graph.channel_graph import ChannelGraph
from autoprune.latency import grid_mask, latency_table, time_masks
from autoprune.problem import ProblemConfig, load_problem


def drawn_widths(graph: ChannelGraph, rng: np.random.Generator) -> np.ndarray:
    """Fractions in [0.2, 1] per prunable group."""
    return rng.uniform(0.2, 1.0, len(graph.prunable_groups))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--data-dir", default=None, help="the model's dataset (loaded, not used for timing)")
    parser.add_argument("--batches", default="64,1")
    parser.add_argument("--masks", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=15, help="timed passes per network at batch 64 (4x at 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="bench/results/latency_grid.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    problem = load_problem(
        ProblemConfig(model=args.model, weights=args.weights, data_dir=args.data_dir, eval_samples=100, device="cpu")
    )
    graph, model = problem.graph, problem.model
    rng = np.random.default_rng(args.seed)
    draws = [drawn_widths(graph, rng) for _ in range(args.masks)]
    masks = {
        kind: [grid_mask(graph, d, on_grid=kind == "on the grid") for d in draws]
        for kind in ("off the grid", "on the grid")
    }
    load = "/".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        "# Latency table: widths on its grid vs off it",
        "",
        f"Command: `OMP_NUM_THREADS={args.threads} python bench/latency_grid.py {' '.join(sys.argv[1:])}`; "
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}; load average at the start {load}.",
        "",
        f"{args.masks} random width draws (a fraction in [0.2, 1] per group), as drawn (off the grid) and rounded to "
        "multiples of an eighth of each group (on the grid). Error = table ratio / measured ratio − 1, the ratio "
        "being the pruned network's time over the unpruned one's timed in the same rounds.",
        "",
        "| batch | widths | median abs. error | largest abs. error | mean error | errors |",
        "|---|---|---|---|---|---|",
    ]
    for batch in (int(b) for b in args.batches.split(",")):
        table = latency_table(model, graph, batch, "cpu")
        for kind, group in masks.items():
            repeats = args.repeats if batch > 1 else args.repeats * 4
            seconds = time_masks(model, graph, [graph.full_mask(), *group], batch, "cpu", repeats)
            errors = np.array(
                [table.ratio(graph, m) / (s / seconds[0]) - 1 for m, s in zip(group, seconds[1:], strict=True)]
            )
            lines.append(
                f"| {batch} | {kind} | {np.median(np.abs(errors)):.1%} | {np.abs(errors).max():.1%} | "
                f"{errors.mean():+.1%} | {', '.join(f'{e:+.1%}' for e in errors)} |"
            )
            print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
