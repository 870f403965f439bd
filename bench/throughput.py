"""Throughput: candidate evaluations per second, today's masked scorer and the sliced racing scorer side by side.

    python bench/throughput.py --model resnet56 --weights ../shared/models/resnet56-cifar10jpeg.pt \
        --data-dir ../shared/data/cifar10-jpeg.tar.gz --masks 60

The same feasible masks (half sampled from the agent's starting policy, half from random search, interleaved as
a search would meet them) are scored by (a) `MaskedEvaluator`, the scorer of the quality studies so far
(500 validation images, BN recalibration on 4 training batches), (b) the same on the physically sliced network,
(c) `SlicedScorer` with racing on `--samples` images (the default now), (d) `BatchedScorer`: the same racing,
`--candidate-batch` masks per pass of the masked network (each its own BN statistics; what pays on a GPU), and
(e) the reference: every mask on all `--samples` validation images. Ranking fidelity is
Spearman's rho of each scorer's order against the reference. Appends a section to bench/results/throughput.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from math import inf
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from autoprune.agents.baselines import l1_priority, uniform_mask, uniform_ratio
from autoprune.agents.warm_start import ranking_warm_start
from autoprune.batched_scoring import BatchedScorer
from autoprune.constraints import Constraints, project
from autoprune.masking import MaskedEvaluator
from autoprune.problem import Problem, ProblemConfig, load_problem
from autoprune.scoring import PrefetchingScorer, SlicedScorer


def candidate_masks(problem, constraints: Constraints, count: int, seed: int) -> list[np.ndarray]:
    """`count` feasible masks, alternately from the agent's starting policy and from random search."""
    graph = problem.graph
    rng = np.random.default_rng(seed)
    start = ranking_warm_start(problem.model, problem.example_input(), graph, constraints)
    p_keep = 1 / (1 + np.exp(-np.asarray(start.logits)))
    priority = l1_priority(graph)
    low = max(0.0, 2 * uniform_ratio(graph, constraints, priority) - 1)
    masks = [start.keep]
    while len(masks) < count:
        if len(masks) % 2:
            keep = (rng.random(graph.num_decisions) < p_keep).astype(np.int8)
            masks.append(project(graph, keep, constraints, start.importance))
        else:
            ratios = rng.uniform(low, 1.0, size=len(graph.prunable_groups))
            masks.append(project(graph, uniform_mask(graph, ratios, priority), constraints, priority))
    return masks


def in_turns(scorers: dict, masks: list[np.ndarray], batch: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Seconds each scorer spent and the scores it gave, taking turns per batch of masks (so that a busy machine
    slows every scorer alike); a `PrefetchingScorer` scores each batch together."""
    seconds = dict.fromkeys(scorers, 0.0)
    scores: dict[str, list[float]] = {name: [] for name in scorers}
    for first in range(0, len(masks), batch):
        part = masks[first : first + batch]
        for name, scorer in scorers.items():
            start = time.perf_counter()
            if isinstance(scorer, PrefetchingScorer):
                scores[name] += [r.score for r in scorer.score_many(part)]
            else:
                scores[name] += [float(scorer(keep)) for keep in part]
            seconds[name] += time.perf_counter() - start
    return seconds, scores


def accelerator() -> str:
    return f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "CPU only"


def bench_arguments(description: str, masks: int, samples: int, results: str) -> argparse.ArgumentParser:
    """The arguments every scoring benchmark takes (problem, masks, threads, results file)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--masks", type=int, default=masks)
    parser.add_argument("--samples", type=int, default=samples, help="validation images per candidate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", default=results)
    return parser


def load_bench_problem(args: argparse.Namespace) -> Problem:
    """`args.threads` torch threads, and the problem `args` names (scored one candidate at a time)."""
    torch.set_num_threads(args.threads)
    return load_problem(
        ProblemConfig(model=args.model, weights=args.weights, dataset=args.dataset, data_dir=args.data_dir,
                      eval_samples=args.samples, candidate_batch=1)
    )  # fmt: skip


def main() -> None:
    parser = bench_arguments(__doc__.splitlines()[0], masks=60, samples=1000, results="bench/results/throughput.md")
    parser.add_argument("--today-samples", type=int, default=500, help="validation images of today's scorer")
    parser.add_argument("--candidate-batch", type=int, default=16, help="masks per pass of the batched scorer")
    args = parser.parse_args()
    problem = load_bench_problem(args)
    constraints = Constraints(flops=args.target_flops)
    masks = candidate_masks(problem, constraints, args.masks, args.seed)
    graph, recal, device = problem.graph, problem.evaluator.recalibration, problem.device
    val = problem.bundle.batches("val", 500, limit=args.samples, device=device)
    today_val = problem.bundle.batches("val", 500, limit=args.today_samples, device=device)
    today = MaskedEvaluator(problem.model, graph, today_val, recal)
    scorers = {
        f"today: masked network, {args.today_samples} images": today,
        f"sliced network, {args.today_samples} images": SlicedScorer(problem.model, graph, today_val, recal, z=inf),
        f"sliced + racing (new default), {args.samples} images": SlicedScorer(problem.model, graph, val, recal),
        f"batched masked network, {args.candidate_batch} per pass, racing, {args.samples} images": BatchedScorer(
            problem.model, graph, val, recal, candidates=args.candidate_batch
        ),
        f"reference: sliced, all {args.samples} images, no racing": SlicedScorer(
            problem.model, graph, val, recal, z=inf
        ),
    }
    seconds, scores = in_turns(scorers, masks, args.candidate_batch)
    today.close()

    n = len(masks)
    recal_images = sum(len(x) for x, _ in recal)
    names = list(scorers)
    reference = scores[names[-1]]
    lines = [
        f"## {args.model}, FLOPs ≤ {args.target_flops:.0%}, {n} masks ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"Command: `python bench/throughput.py --model {args.model} --weights {args.weights} --data-dir "
        f"{args.data_dir} --target-flops {args.target_flops} --masks {args.masks} --candidate-batch "
        f"{args.candidate_batch} --threads {args.threads}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {args.threads} threads, {accelerator()}; "
        f"torch {torch.__version__}; load average at the end {os.getloadavg()[0]:.1f}. Every scorer recalibrates "
        f"BN on the same {recal_images} training images per candidate; scorers take turns on each mask.",
        "",
        "| scorer | evaluations/s | speed-up vs today | images forwarded / evaluation | Spearman vs reference |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        scorer = scorers[name]
        images = scorer.images_forwarded / n if isinstance(scorer, SlicedScorer) else recal_images + args.today_samples
        rho = spearmanr(scores[name], reference).statistic
        speed = seconds[names[0]] / seconds[name]
        lines.append(f"| {name} | {n / seconds[name]:.2f} | {speed:.2f}× | {images:.0f} | {rho:.3f} |")
    racing = scorers[names[2]]
    lines += [
        "",
        f"Racing scored {racing.full_evaluations} of {n} masks on the validation images; the reference scores range "
        f"{min(reference):.3f}-{max(reference):.3f}.",
        "",
    ]
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.write_text("# Evaluation throughput\n\n")
    with out.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
