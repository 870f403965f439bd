"""Episode structure: one-shot masks (1 step per episode) vs iterative refinement (4 steps), equal budgets.

A synthetic score with known channel importances on the real digits-CNN channel graph, so the study is cheap
and the optimum is known: each channel's hidden importance is uniform random times a per-group scale, and the
score of a mask is the share of total importance it keeps under a 50% FLOPs budget.

    python bench/episodes.py            # writes bench/results/episodes.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from autoprune.agents import make_ppo, train
from autoprune.constraints import Constraints, project
from autoprune.envs import ChannelPruneEnv
from autoprune.graph import build_channel_graph
from autoprune.models import build_model

GROUP_SCALES = (8.0, 1.0, 4.0, 0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", nargs="+", type=int, default=[320, 640])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="bench/results/episodes.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    graph = build_channel_graph(build_model("digits_cnn").eval(), torch.randn(1, 1, 8, 8))
    rng = np.random.default_rng(1)
    importance = np.concatenate(
        [scale * rng.random(g.size) for scale, g in zip(GROUP_SCALES, graph.prunable_groups, strict=True)]
    )
    constraints = Constraints(flops=0.5)

    def score(keep: np.ndarray) -> float:
        return float(importance @ keep / importance.sum())

    optimum = score(project(graph, graph.full_mask(), constraints, priority=importance))
    rows = [
        "| evaluations | steps per episode | best score (mean ± std) | mean of last 64 | s per run |",
        "|---|---|---|---|---|",
    ]
    for budget in args.budgets:
        for steps in (1, 4):
            best, late, seconds = [], [], []
            for seed in args.seeds:
                env = ChannelPruneEnv(graph, score, constraints, steps_per_episode=steps)
                ppo = make_ppo(env, seed=seed)
                scores: list[float] = []
                start = time.perf_counter()
                train(ppo, budget, callback=lambda record, scores=scores: scores.append(record["score"]))
                seconds.append(time.perf_counter() - start)
                best.append(max(scores))
                late.append(statistics.mean(scores[-64:]))
            rows.append(
                f"| {budget} | {steps} | {statistics.mean(best):.3f} ± {statistics.stdev(best):.3f} | "
                f"{statistics.mean(late):.3f} | {statistics.mean(seconds):.0f} |"
            )
            print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# Episode structure: one-shot vs iterative refinement",
            "",
            f"Command: `python bench/episodes.py`; {platform.machine()}, 1 torch thread, CPU; "
            f"date {time.strftime('%Y-%m-%d')}; seeds {args.seeds}.",
            "",
            "Synthetic score on the digits-CNN channel graph (176 decisions, 50% FLOPs): hidden importance per "
            f"channel = uniform random × group scale {GROUP_SCALES}; score = kept share of importance. The mask "
            f"ranked by the true importance scores {optimum:.3f}.",
            "",
            *rows,
            "",
        ]
    )
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
