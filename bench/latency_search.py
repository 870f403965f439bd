"""Latency-constrained search and one search for several targets, measured on this machine.

    OMP_NUM_THREADS=1 python bench/latency_search.py --weights ../shared/models/resnet56-cifar10jpeg.pt \
        --multi-weights ../shared/models/resnet20-cifar10jpeg.pt --data-dir ../shared/data/cifar10-jpeg.tar.gz

Writes bench/results/latency_search.md:

1. `--target-latency 0.5` searches at batch 64 and batch 1 (ResNet-56), and a `--target-flops` search whose FLOPs
   budget is the one at which uniform widths hit 50% latency in the batch-64 table: the FLOPs a user would ask for
   to get that latency. Each plan's latency is measured end to end, paired round-robin with the unpruned model
   (the ratio is the median over rounds of pruned / unpruned time in the same round), next to the table's
   estimate, with test accuracy after BN recalibration.
2. One `--targets 0.3,0.5,0.7` search (FLOPs) against three single-target searches with a third of its
   evaluations each (ResNet-20 by default, to keep the study short).

Everything runs in this process with the torch threads fixed (`--threads`); the load average is recorded at the
start and the end, since timings on a shared machine are only as good as its quiet.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from autoprune.latency import latency_table, uniform_width
from autoprune.latency_check import WARMUP, paired_times
from autoprune.plan import Plan
from autoprune.problem import ProblemConfig, load_problem
from autoprune.search.config import SearchConfig
from autoprune.search.runner import run_search


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def paired_ratios(models: list[torch.nn.Module], x: torch.Tensor, rounds: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Per round, each model's forward time over the first model's (the unpruned one) in the same round."""
    times = paired_times(models, x, WARMUP + rounds)[WARMUP:]
    return [times[:, k] / times[:, 0] for k in range(len(models))], times


def search(config: SearchConfig, runs: Path, name: str, reuse: bool) -> Path:
    config.out = str(runs / name)
    if not (reuse and (runs / name / "summary.md").is_file()):
        if (runs / name).exists():
            raise SystemExit(f"{runs / name} exists; remove it or pass --reuse")
        start = time.perf_counter()
        run_search(config, progress=False)
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    return runs / name


def flops_budgets(graph, tables: dict, target: float) -> list[float]:
    """FLOPs budgets for the searches the latency plans are compared with: per batch, the FLOPs at which uniform
    widths meet `target` latency in that batch's table (what a FLOPs user would ask for), 15% below and above it
    so that the FLOPs plans' measured latencies bracket the latency plans' (merged when closer than 0.02)."""
    widths = np.linspace(0.2, 1.0, 81)
    budgets: list[float] = []
    for table in tables.values():
        w = widths[np.argmin([abs(table.ratio(graph, uniform_width(graph, w)) - target) for w in widths])]
        flops = graph.flops(uniform_width(graph, w)) / graph.base_flops
        for f in (0.85 * flops, 1.15 * flops):
            if all(abs(f - b) >= 0.02 for b in budgets):
                budgets.append(round(f, 3))
    return sorted(budgets)


def at_latency(points: list[tuple[float, float]], latency: float) -> tuple[float | None, str]:
    """Accuracy of the (measured latency, accuracy) points linearly interpolated at `latency`, with how: between
    the two nearest points that bracket it, or None when none do."""
    points = sorted(points)
    for (l0, a0), (l1, a1) in itertools.pairwise(points):
        if l0 <= latency <= l1:
            w = 0.0 if l1 == l0 else (latency - l0) / (l1 - l0)
            return a0 + w * (a1 - a0), f"between {l0:.3f} and {l1:.3f}"
    return None, f"outside {points[0][0]:.3f}-{points[-1][0]:.3f}"


def latency_study(args, runs: Path) -> list[str]:
    problem_config = ProblemConfig(
        model=args.model, weights=args.weights, data_dir=args.data_dir, eval_samples=args.eval_samples, device="cpu"
    )
    problem = load_problem(problem_config)
    graph, model = problem.graph, problem.model
    tables = {b: latency_table(model, graph, b, "cpu", cache_dir=args.cache_dir) for b in args.batches}
    if args.stage == "tables":
        return [f"tables: batch {b}, {'cached' if t.from_cache else 'measured'}" for b, t in tables.items()]
    budgets = args.flops_budgets or flops_budgets(graph, tables, args.target)
    base = {"problem": problem_config, "evaluations": args.evaluations, "seed": args.seed, "target_flops": None}
    configs = {
        f"latency-b{b}": (
            f"latency ≤ {args.target:.0%} @ batch {b}",
            SearchConfig(**base, target_latency=args.target, latency_batch=b),
        )
        for b in args.batches
    } | {
        f"flops-{f:g}": (f"FLOPs ≤ {f:.1%}", SearchConfig(**{**base, "target_flops": f})) for f in budgets
    }  # fmt: skip
    plans = {}
    for run, (name, config) in configs.items():
        if args.only and run not in args.only:
            continue
        plans[name] = search(config, runs, run, args.reuse)
    if args.stage == "searches":
        return [f"searched: {', '.join(plans)}"]
    loaded = {name: Plan.load(path / "plan.json") for name, path in plans.items()}
    nets = [model.eval()] + [plan.apply(model).eval() for plan in loaded.values()]
    lines = [
        f"### 1. Latency budget vs FLOPs budget ({args.model}, {args.evaluations} evaluations each)",
        "",
        f"FLOPs budgets of the FLOPs searches: {', '.join(f'{b:.1%}' for b in budgets)} (by default per batch, 15% "
        f"below and above the FLOPs at which uniform widths meet {args.target:.0%} latency in that batch's table). "
        "Measured: "
        f"median over paired rounds ({args.rounds} at batch 64, {args.rounds * 5} at batch 1) of pruned / unpruned "
        "forward time (interquartile range); estimate: the search's latency table for that batch; error = "
        "estimate / measured − 1.",
        "",
        "| plan | FLOPs | params | " + " | ".join(
            f"batch {b}: measured (IQR) | estimate | error" for b in args.batches
        ) + " | test acc + BN recal. | val (search) | search s |",
        "|---" * (6 + 3 * len(args.batches)) + "|",
    ]  # fmt: skip
    measured = {}
    for b in args.batches:
        x = torch.randn(b, *graph.input_shape)
        ratios, times = paired_ratios(nets, x, args.rounds if b > 1 else args.rounds * 5)
        measured[b] = {name: float(np.median(r)) for name, r in zip(["unpruned", *loaded], ratios, strict=True)}
        measured[b, "iqr"] = ratios
        print(f"batch {b}: unpruned {np.median(times[:, 0]) * 1e3:.2f} ms", flush=True)
    for k, (name, plan) in enumerate(loaded.items(), start=1):
        cells = []
        for b in args.batches:
            q1, med, q3 = np.percentile(measured[b, "iqr"][k], [25, 50, 75])
            est = tables[b].ratio(graph, np.asarray(plan.mask))
            cells.append(f"{med:.3f} ({q1:.3f}-{q3:.3f}) | {est:.3f} | {est / med - 1:+.1%}")
        m, a = plan.metrics, plan.achieved
        lines.append(
            f"| {name} | {a['flops_ratio']:.1%} | {a['params_ratio']:.1%} | " + " | ".join(cells)
            + f" | {m['test_acc_recalibrated']:.2%} | {m['search_val_acc_best']:.2%} | {m['search_seconds']:.0f} |"
        )  # fmt: skip
    for b in args.batches:
        t = tables[b]
        lines.append(
            f"\nTable at batch {b}: unpruned {t.base_seconds * 1e3:.2f} ms when measured; held-out random-width "
            f"models: estimate / measured − 1 = {', '.join(f'{e / m_ - 1:+.1%}' for e, m_ in t.validation)}; "
            f"{'read from the cache' if t.from_cache else 'measured for this run'}."
        )
    lines += [
        "",
        "At equal measured latency: the FLOPs plans' test accuracy after BN recalibration, linearly interpolated "
        "against their measured latency at the latency plan's measured latency.",
        "",
        "| latency plan | measured latency | its test + BN | FLOPs plans at that latency | interpolated |",
        "|---|---|---|---|---|",
    ]
    flops_names = [n for n in loaded if n.startswith("FLOPs")]
    for b in args.batches:
        name = f"latency ≤ {args.target:.0%} @ batch {b}"
        if name not in loaded or not flops_names:
            continue
        points = [(measured[b][n], loaded[n].metrics["test_acc_recalibrated"]) for n in flops_names]
        acc, how = at_latency(points, measured[b][name])
        lines.append(
            f"| {name} | {measured[b][name]:.3f} | {loaded[name].metrics['test_acc_recalibrated']:.2%} | "
            f"{'–' if acc is None else f'{acc:.2%}'} | {how} |"
        )
    return lines


def multi_study(args, runs: Path) -> list[str]:
    problem = ProblemConfig(
        model=args.multi_model, weights=args.multi_weights, data_dir=args.data_dir, eval_samples=args.eval_samples,
        device="cpu",
    )  # fmt: skip
    targets = (0.3, 0.5, 0.7)
    base = {"problem": problem, "seed": args.seed, "target_flops": None}
    one = search(SearchConfig(**base, evaluations=args.multi_evaluations, targets=targets), runs, "multi", args.reuse)
    share = args.multi_evaluations // len(targets)
    lines = [
        "",
        f"### 2. One 3-target search ({args.multi_evaluations} evaluations) vs three searches of {share} each "
        f"({args.multi_model}, FLOPs)",
        "",
        "| target | one search: FLOPs | val (search) | test + BN recal. | separate: FLOPs | val (search) | "
        "test + BN recal. |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in targets:
        single = search(
            SearchConfig(**{**base, "target_flops": t}, evaluations=share), runs, f"single-{t:g}", args.reuse
        )
        a, b = Plan.load(one / f"flops-{t:g}" / "plan.json"), Plan.load(single / "plan.json")
        cells = [
            f"{p.achieved['flops_ratio']:.1%} | {p.metrics['search_val_acc_best']:.2%} | "
            f"{p.metrics['test_acc_recalibrated']:.2%}"
            for p in (a, b)
        ]
        lines.append(f"| {t:.0%} | {cells[0]} | {cells[1]} |")
    front = json.loads((one / "front.json").read_text())["front"]
    lines.append(f"\nThe one search's front (`{one}/front.png`, `front.json`) holds {len(front)} masks.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--multi-model", default="resnet20")
    parser.add_argument("--multi-weights", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--batches", default="64,1")
    parser.add_argument("--evaluations", type=int, default=40)
    parser.add_argument("--multi-evaluations", type=int, default=60)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=30, help="paired timing rounds at batch 64 (5x at batch 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--runs", default="bench/runs/latency-search")
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs in --runs")
    parser.add_argument("--skip-multi", action="store_true")
    parser.add_argument(
        "--stage", choices=("tables", "searches", "all"), default="all",
        help="stop after measuring the tables (on a quiet machine) or after the searches (which need no quiet)",
    )  # fmt: skip
    parser.add_argument("--only", default="", help="comma-separated run names of the latency study to search")
    parser.add_argument(
        "--flops-budgets", default="", help="comma-separated FLOPs budgets (default: from the tables)"
    )  # fmt: skip
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--out", default="bench/results/latency_search.md")
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.only = [r for r in args.only.split(",") if r]
    args.flops_budgets = sorted(float(b) for b in args.flops_budgets.split(",") if b)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    runs = Path(args.runs)
    started, load_start = time.strftime("%Y-%m-%d %H:%M"), load()
    lines = [] if args.skip_latency else latency_study(args, runs)
    if args.stage != "all":
        print("\n".join(lines))
        return
    if not args.skip_multi:
        lines += multi_study(args, runs)
    header = [
        "# Latency-constrained search and one search for several targets",
        "",
        f"Command: `OMP_NUM_THREADS=1 python bench/latency_search.py {' '.join(sys.argv[1:])}`; machine: "
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU, torch {torch.__version__}; "
        f"started {started}, finished {time.strftime('%H:%M')}; load average at the start {load_start}, at the "
        f"end {load()} (the machine has 2 cores).",
        "",
    ]  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(header + lines) + "\n")
    print("\n".join(header + lines))


if __name__ == "__main__":
    main()
