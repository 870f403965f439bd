"""Speed study: graph conversion, cost model, evaluation throughput and env + agent overhead.

    python bench/speed.py [--weights ../shared/models/resnet56-cifar10jpeg.pt]

Writes bench/results/speed.md. Each number is the median of repeated runs on this machine. Pruned-model latency
is its own study, `bench/latency.py`.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from autoprune.constraints import Constraints, project
from autoprune.graph import build_channel_graph
from autoprune.masking import MaskedEvaluator
from autoprune.models import MODELS, build_model, load_weights
from autoprune.plan import Plan

CONVERT_SNIPPET = """
import resource, sys, time, torch
from autoprune.graph import build_channel_graph
from autoprune.models import MODELS, build_model
name = sys.argv[1]
model = build_model(name).eval()
x = torch.zeros(1, *MODELS[name].input_shape)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(3):
    start = time.perf_counter()
    graph = build_channel_graph(model, x)
    times.append(time.perf_counter() - start)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(sorted(times)[1], (after - before) / 1024, graph.num_decisions, len(graph.groups))
"""


def median_time(fn, repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_batches(batch_size: int, samples: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """CIFAR-shaped inputs: timing does not depend on the pixel values."""
    return [
        (torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))) for _ in range(samples // batch_size)
    ]


def conversion_rows() -> list[str]:
    rows = ["| model | decisions | groups | convert s | extra peak RSS MiB |", "|---|---|---|---|---|"]
    for name in ("resnet56", "resnet110", "mobilenet_v2", "vgg16_bn"):
        out = subprocess.run(
            [sys.executable, "-c", CONVERT_SNIPPET, name], capture_output=True, text=True, check=True
        ).stdout.split()
        seconds, mib, decisions, groups = float(out[0]), float(out[1]), out[2], out[3]
        rows.append(f"| {name} | {decisions} | {groups} | {seconds:.2f} | {mib:.0f} |")
    return rows


def cost_rows(graph) -> list[str]:
    rng = np.random.default_rng(0)
    masks = [graph.legalize((rng.random(graph.num_decisions) < 0.6).astype(np.int8)) for _ in range(200)]
    per_mask = median_time(lambda: [graph.flops(m) for m in masks], repeat=5) / len(masks)
    per_project = median_time(lambda: project(graph, graph.full_mask(), Constraints(flops=0.5)), repeat=5)
    return [
        "| operation (ResNet-56) | time |",
        "|---|---|",
        f"| FLOPs of one mask (analytic) | {per_mask * 1e6:.1f} µs |",
        f"| projection of the full mask onto 50% FLOPs | {per_project * 1e3:.2f} ms |",
    ]


def evaluation_rows(model, graph, batch_size: int, samples: int) -> list[str]:
    """Throughput of masked scoring vs the same batches through the physically pruned network."""
    torch.manual_seed(0)
    batches = [
        (torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))) for _ in range(samples // batch_size)
    ]
    recal = batches[:2]
    keep = project(graph, graph.full_mask(), Constraints(flops=0.5))
    evaluator = MaskedEvaluator(model, graph, batches, None)
    masked = median_time(lambda: evaluator(keep), repeat=3)
    evaluator_recal = MaskedEvaluator(model, graph, batches, recal)
    masked_recal = median_time(lambda: evaluator_recal(keep), repeat=3)
    evaluator.close()
    evaluator_recal.close()
    pruned = Plan.from_mask(model, graph, keep).apply(model).eval()
    with torch.no_grad():
        physical = median_time(lambda: [pruned(x) for x, _ in batches], repeat=3)
        full = median_time(lambda: [model(x) for x, _ in batches], repeat=3)
    return [
        f"| scoring {samples} samples (ResNet-56, 50% FLOPs mask) | seconds | evaluations/s |",
        "|---|---|---|",
        f"| unpruned forward | {full:.3f} | {1 / full:.2f} |",
        f"| masked forward (autoprune's evaluator) | {masked:.3f} | {1 / masked:.2f} |",
        f"| masked + BN recalibration on 2 batches | {masked_recal:.3f} | {1 / masked_recal:.2f} |",
        f"| physically pruned forward (floor) | {physical:.3f} | {1 / physical:.2f} |",
    ]


def agent_overhead_rows(model, graph, batch_size: int, samples: int, steps: int = 48) -> list[str]:
    """Env + agent time per evaluation beyond the score function, from a short PPO run."""
    from autoprune.agents.ppo import make_ppo
    from autoprune.envs.channel_prune import ChannelPruneEnv

    torch.manual_seed(0)
    batches = [
        (torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))) for _ in range(samples // batch_size)
    ]
    evaluator = MaskedEvaluator(model, graph, batches, batches[:2])
    spent = [0.0]

    def score(keep):
        start = time.perf_counter()
        value = evaluator(keep)
        spent[0] += time.perf_counter() - start
        return value

    env = ChannelPruneEnv(graph, score, Constraints(flops=0.5))
    ppo = make_ppo(env, seed=0, n_steps=16, batch_size=16)
    start = time.perf_counter()
    ppo.learn(total_timesteps=steps)
    total = time.perf_counter() - start
    overhead = total - spent[0]
    return [
        f"| PPO search, {steps} evaluations (ResNet-56, {samples} samples each) | value |",
        "|---|---|",
        f"| total wall time | {total:.1f} s |",
        f"| in the score function (masked forward + BN recalibration) | {spent[0]:.1f} s |",
        f"| env + agent (projection, features, GAT forward, PPO updates) | {overhead:.1f} s ({overhead / total:.1%}) |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="ResNet-56 weights (random init when omitted)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--out", default="bench/results/speed.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = build_model("resnet56").eval()
    if args.weights:
        load_weights(model, args.weights)
    graph = build_channel_graph(model, torch.zeros(1, *MODELS["resnet56"].input_shape), model_name="resnet56")
    sections = [
        ("Graph conversion (3 runs, median; peak RSS growth in a fresh process)", conversion_rows()),
        ("Cost model", cost_rows(graph)),
        ("Candidate evaluation", evaluation_rows(model, graph, 250, args.samples)),
        ("Env + agent overhead", agent_overhead_rows(model, graph, 250, args.samples)),
    ]
    lines = [
        "# Speed",
        "",
        f"Command: `python bench/speed.py{' --weights ' + args.weights if args.weights else ''}`; "
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, CPU only, torch {torch.__version__}; "
        f"date {time.strftime('%Y-%m-%d %H:%M')}; peak RSS of this process "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; load average at the end "
        f"{'/'.join(f'{v:.1f}' for v in os.getloadavg())} (other jobs on the 2 cores slow every row alike).",
        "",
    ]
    for title, rows in sections:
        lines += [f"## {title}", "", *rows, ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
