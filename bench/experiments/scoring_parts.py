"""Time the parts of scoring one ResNet-56 candidate at 50% FLOPs on one torch thread: cutting the copy, BN
recalibration (256 images, train mode), validation (1000 images, folded), and the whole network's probe.

    python bench/experiments/scoring_parts.py   # from the repository root, data and weights in ../shared

A check of the machine's own speed: run it before and after a timed search (the README's 0.84 s against
1.27-1.50 s for the recalibration pass come from it, 2026-12-02).
"""

import copy
import sys
import time
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from throughput import candidate_masks, load_bench_problem

from autoprune.constraints import Constraints
from autoprune.inference import fast_layout, for_inference
from autoprune.masking import recalibrate_bn
from autoprune.problem import Problem
from autoprune.pruning import apply_kept_channels


def fastest(work: Callable[[], object], repeats: int = 3) -> float:
    """Best of `repeats` wall times of `work`, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def parts(problem: Problem, keep: np.ndarray) -> str:
    """The timed parts of scoring `keep`, as one line."""
    scorer, graph = problem.evaluator, problem.graph
    kept = graph.kept_channels(graph.check_mask(keep))

    def cut() -> nn.Module:
        return fast_layout(apply_kept_channels(copy.deepcopy(problem.model), kept))

    net = cut()
    folded = for_inference(copy.deepcopy(net), inplace=True, pairs=scorer.fold_pairs)
    recalibration = fastest(lambda: recalibrate_bn(net, scorer.recalibration))
    validation = fastest(lambda: scorer.predict(folded, 0, scorer.num_samples))
    return f"cut copy {fastest(cut):.3f} s, recalibration {recalibration:.3f} s, validation {validation:.3f} s"


def main() -> None:
    args = Namespace(model="resnet56", weights="../shared/models/resnet56-cifar10jpeg.pt", dataset="cifar10",
                     data_dir="../shared/data/cifar10-jpeg.tar.gz", samples=1000, threads=1)  # fmt: skip
    problem = load_bench_problem(args)
    for keep in candidate_masks(problem, Constraints(flops=0.5), 2, 0):
        print(parts(problem, keep))
    whole = fastest(lambda: problem.evaluator.prepare(problem.graph.full_mask()))
    print(f"whole network's first stage {whole:.3f} s")


if __name__ == "__main__":
    main()
