"""Inference rewrite: a candidate's validation pass with and without `autoprune.inference.for_inference`.

    python bench/inference.py --model resnet56 --weights ../shared/models/resnet56-cifar10jpeg.pt \
        --data-dir ../shared/data/cifar10-jpeg.tar.gz --masks 12 --threads 2

For feasible masks met as a search meets them (`throughput.candidate_masks`), each physically pruned and BN-
recalibrated network is run on the validation images three times, taking turns: as it is (eval mode, default
memory layout), with channels-last weights only, and rewritten by `for_inference` (BatchNorm folded, channels-last
on a CPU); the rewrite's own cost is included. Reports seconds per pass, the speed-up, and how often the
rewritten networks disagree with the first on a prediction. Appends a section to bench/results/inference.md.
"""

from __future__ import annotations

import copy
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from throughput import accelerator, bench_arguments, candidate_masks, load_bench_problem

from autoprune.constraints import Constraints
from autoprune.inference import fast_layout, for_inference

VARIANTS = {
    "as it is (eval mode, default layout)": lambda net: net.to(memory_format=torch.contiguous_format).eval(),
    "channels-last only": lambda net: fast_layout(net.to(memory_format=torch.contiguous_format)).eval(),
    "`for_inference`: BN folded + channels-last": lambda net: for_inference(net, inplace=True),
}


@torch.no_grad()
def timed_pass(net: torch.nn.Module, batches: list, variant: str) -> tuple[float, torch.Tensor]:
    """Seconds for one validation pass of `net` rewritten as `variant` (the rewrite included), and the predicted
    classes."""
    start = time.perf_counter()
    run = VARIANTS[variant](net)
    predicted = torch.cat([run(x).argmax(1) for x, _ in batches])
    return time.perf_counter() - start, predicted


def main() -> None:
    args = bench_arguments(
        __doc__.splitlines()[0], masks=12, samples=1000, results="bench/results/inference.md"
    ).parse_args()
    problem = load_bench_problem(args)
    masks = candidate_masks(problem, Constraints(flops=args.target_flops), args.masks, args.seed)
    scorer = problem.evaluator
    batches = scorer.batches()
    names = list(VARIANTS)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    disagree, flops = 0, []
    for i, keep in enumerate(masks):
        net, _ = scorer.prepare(keep)
        flops.append(problem.graph.flops(keep) / problem.graph.base_flops)
        predicted = {}
        for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate which goes first
            dt, predicted[name] = timed_pass(copy.deepcopy(net), batches, name)
            seconds[name].append(dt)
        disagree += sum(int((predicted[name] != predicted[names[0]]).sum()) for name in names[1:])

    plain = np.mean(seconds[names[0]])
    lines = [
        f"## {args.model}, FLOPs ≤ {args.target_flops:.0%}, {len(masks)} masks ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"Command: `python bench/inference.py --model {args.model} --weights {args.weights} --data-dir "
        f"{args.data_dir} --target-flops {args.target_flops} --masks {args.masks} --samples {args.samples} "
        f"--threads {args.threads}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {args.threads} threads, {accelerator()}; torch "
        f"{torch.__version__}; load average at the end {os.getloadavg()[0]:.1f}. Masks at {min(flops):.1%}-"
        f"{max(flops):.1%} of the FLOPs; {args.samples} validation images per pass, batches of {scorer.batch_size}.",
        "",
        "| validation pass (rewrite included) | seconds (mean ± sd) | speed-up |",
        "|---|---|---|",
        *(
            f"| {name} | {np.mean(seconds[name]):.2f} ± {np.std(seconds[name]):.2f} | "
            f"{plain / np.mean(seconds[name]):.2f}× |"
            for name in names
        ),
        "",
        f"Predictions that differ from the first row's: {disagree} of {(len(names) - 1) * len(masks) * args.samples}.",
        "",
    ]
    path = Path(args.results)
    header = "# Inference rewrite\n\nSee `bench/inference.py`. Newest section last.\n\n"
    text = path.read_text() if path.exists() else header
    path.write_text(text + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
