"""Candidates side by side: one candidate at a time on every torch thread, or one per thread (`ThreadedScorer`).

    python bench/threads.py --model resnet56 --weights ../shared/models/resnet56-cifar10jpeg.pt \
        --data-dir ../shared/data/cifar10-jpeg.tar.gz --masks 24 --threads 2

The same feasible masks (`throughput.candidate_masks`) are scored by `SlicedScorer` on `--threads` torch threads
and by `ThreadedScorer`, `--threads` candidates at a time on one thread each, taking turns batch by batch: with
racing off (every mask on every image; the scores must agree) and on (the search's setting: a batch races
against the incumbent at its start, so which masks stop early may differ). Appends a section to
bench/results/threads.md.
"""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from throughput import accelerator, bench_arguments, candidate_masks, in_turns, load_bench_problem

from autoprune.constraints import Constraints
from autoprune.scoring import SlicedScorer
from autoprune.threaded_scoring import ThreadedScorer


def main() -> None:
    args = bench_arguments(
        __doc__.splitlines()[0], masks=24, samples=1000, results="bench/results/threads.md"
    ).parse_args()
    problem = load_bench_problem(args)
    masks = candidate_masks(problem, Constraints(flops=args.target_flops), args.masks, args.seed)
    base = problem.evaluator
    common = (problem.model, problem.graph, base.batches(), base.recalibration)
    scorers: dict[str, SlicedScorer] = {}
    for racing, z in (("off", math.inf), ("on", 2.0)):
        scorers[f"one at a time, {args.threads} threads, racing {racing}"] = SlicedScorer(*common, z=z)
        scorers[f"`ThreadedScorer`: {args.threads} at a time, 1 thread each, racing {racing}"] = ThreadedScorer(
            *common, z=z, candidates=args.threads, threads=1
        )
    seconds, scores = in_turns(scorers, masks, args.threads)

    names = list(scorers)
    flops = [problem.graph.flops(keep) / problem.graph.base_flops for keep in masks]
    recal_images = sum(len(y) for _, y in base.recalibration)
    lines = [
        f"## {args.model}, FLOPs ≤ {args.target_flops:.0%}, {len(masks)} masks ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"Command: `python bench/threads.py --model {args.model} --weights {args.weights} --data-dir {args.data_dir} "
        f"--target-flops {args.target_flops} --masks {args.masks} --samples {args.samples} --threads {args.threads}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} torch threads, "
        f"{accelerator()}; torch {torch.__version__}; load average at the end {os.getloadavg()[0]:.1f}. Masks at "
        f"{min(flops):.1%}-{max(flops):.1%} of the FLOPs; BN recalibration on {recal_images} "
        f"training images, {args.samples} validation images.",
        "",
        "| scorer | seconds per candidate | speed-up | scored on every image | images per candidate |",
        "|---|---|---|---|---|",
    ]
    for i, name in enumerate(names):
        reference = names[i - i % 2]
        scorer = scorers[name]
        lines.append(
            f"| {name} | {seconds[name] / len(masks):.2f} | {seconds[reference] / seconds[name]:.2f}× | "
            f"{scorer.full_evaluations} of {scorer.evaluations} | {scorer.images_forwarded / scorer.evaluations:.0f} |"
        )
    gap = np.abs(np.subtract(scores[names[0]], scores[names[1]])).max()
    lines += ["", f"Racing off: the largest score difference between the two scorers is {gap:.4f}.", ""]
    path = Path(args.results)
    text = (
        path.read_text()
        if path.exists()
        else "# Candidates side by side\n\nSee `bench/threads.py`. Newest section last.\n\n"
    )
    path.write_text(text + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
