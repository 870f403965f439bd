"""Quality study: at the same evaluation budget, which method finds the best plan?

Runs every (method, target, seed) as a normal `autoprune` search into its own run directory (skipping runs that
already finished, so the study resumes), then writes a markdown table of mean ± std over seeds.

    python bench/quality.py --model resnet20 --weights ../shared/models/resnet20-cifar10jpeg.pt \
        --data-dir ../shared/data/cifar10-jpeg.tar.gz --targets 0.5 --seeds 0 1 2 --evaluations 48
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from autoprune.problem import ProblemConfig
from autoprune.search.config import SearchConfig
from autoprune.search.runner import run_search

METHODS = [
    "rl",
    "structural",
    "sensitivity",
    "global-magnitude",
    "global-taylor",
    "random-search",
    "random-masks",
    "l1-uniform",
]
ABLATIONS = {
    "rl-frozen": {"method": "rl", "learning_rate": 0.0},
    "rl-refit": {"method": "rl", "problem": {"score_with_reconstruction": True}},
    "rl-finalists": {"method": "rl", "finalists": 8},
}
"""Study-only variants: `rl-frozen` samples from the warm-started policy without ever updating it (what PPO adds);
`rl-refit` scores every candidate after the least-squares re-fit (`--score-with-reconstruction`); `rl-finalists`
chooses the plan among its 8 best masks re-scored on fresh validation images (`--finalists 8`)."""
COLUMNS = [
    ("val_acc_pruned", "val pruned"),
    ("val_acc_recalibrated", "val +BN"),
    ("val_acc_finetuned", "val +FT"),
    ("test_acc_pruned", "test pruned"),
    ("test_acc_recalibrated", "test +BN"),
    ("test_acc_reconstructed", "test +refit"),
    ("test_acc_finetuned", "test +FT"),
]


def best_so_far_curves(runs: Path, method: str, target: float, seeds: list[int]) -> list[list[float]]:
    """Per finished seed, the best validation score after each evaluation (from the run's metrics.csv)."""
    curves = []
    for seed in seeds:
        run = runs / f"{method}-t{target}-s{seed}"
        if (run / "plan.json").exists():
            with open(run / "metrics.csv", newline="") as f:
                best = [float(row["best_score"]) for row in csv.DictReader(f)]
                curves.append([b if np.isfinite(b) else np.nan for b in best])  # nan until the first candidate
    return curves


def plot_curves(args: argparse.Namespace, runs: Path) -> list[Path]:
    """One figure per target: mean best-so-far validation accuracy against evaluations, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for target in args.targets:
        fig, ax = plt.subplots(figsize=(6, 4))
        for method in args.methods:
            curves = best_so_far_curves(runs, method, target, args.seeds)
            if not curves:
                continue
            # Deterministic methods stop after one evaluation: their best stays flat for the rest of the budget.
            padded = np.array([c + [c[-1]] * (args.evaluations - len(c)) for c in curves]) * 100
            mean = padded.mean(axis=0)
            x = np.arange(1, len(mean) + 1)
            ax.plot(x, mean, label=f"{method} ({len(curves)} seeds)")
            if len(curves) > 1:
                std = padded.std(axis=0)
                ax.fill_between(x, mean - std, mean + std, alpha=0.15)
        ax.set(xlabel="candidate evaluations", ylabel="best validation accuracy so far (%)")
        ax.set_title(f"{args.model}, FLOPs ≤ {target:.0%}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out = Path(args.results) / f"quality_{args.model}_t{target}.png"
        fig.tight_layout()
        fig.savefig(out, dpi=120)
        plt.close(fig)
        written.append(out)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--methods", nargs="+", default=METHODS, help=f"of {METHODS} and {list(ABLATIONS)}")
    parser.add_argument("--targets", nargs="+", type=float, default=[0.5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--evaluations", type=int, default=48)
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--finetune-epochs", type=float, default=0.1)
    parser.add_argument("--runs", default="bench/runs")
    parser.add_argument("--results", default="bench/results")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (the PPO update runs on the CPU)")
    parser.add_argument("--report-only", action="store_true", help="only write the table from finished runs")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    runs = Path(args.runs) / f"quality-{args.model}"
    for target in [] if args.report_only else args.targets:
        for seed in args.seeds:  # seed-major: a partial study still compares every method
            for method in args.methods:
                out = runs / f"{method}-t{target}-s{seed}"
                if (out / "plan.json").exists():
                    continue
                if out.exists():  # an interrupted run: start it again
                    import shutil

                    shutil.rmtree(out)
                variant = dict(ABLATIONS.get(method, {"method": method}))
                problem = ProblemConfig(
                    model=args.model, weights=args.weights, dataset=args.dataset, data_dir=args.data_dir,
                    eval_samples=args.eval_samples, **variant.pop("problem", {}),
                )  # fmt: skip
                config = SearchConfig(
                    problem=problem, target_flops=target, evaluations=args.evaluations, seed=seed, **variant,
                    finetune_epochs=args.finetune_epochs, out=str(out),
                )  # fmt: skip
                start = time.perf_counter()
                run_search(config, progress=False)
                print(f"{out.name}: {time.perf_counter() - start:.0f} s", flush=True)
    write_table(args, runs)
    plot_curves(args, runs)


def accelerator() -> str:
    """Where the networks ran: the GPU's name, or "CPU only"."""
    return f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "CPU only"


def mean_std(values: list[float], percent: bool = True) -> str:
    scale = 100 if percent else 1
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0] * scale:.2f}"
    return f"{statistics.mean(values) * scale:.2f} ± {statistics.stdev(values) * scale:.2f}"


def write_table(args: argparse.Namespace, runs: Path) -> Path:
    lines = [
        f"# Quality: {args.model} on {args.dataset}",
        "",
        f"Command: `python bench/quality.py --model {args.model} --weights {args.weights} "
        + (f"--dataset {args.dataset} " if args.dataset != "cifar10" else "")
        + f"--data-dir {args.data_dir} "
        f"--methods {' '.join(args.methods)} --targets {' '.join(map(str, args.targets))} "
        f"--seeds {' '.join(map(str, args.seeds))} --evaluations {args.evaluations} "
        f"--eval-samples {args.eval_samples} --finetune-epochs {args.finetune_epochs} --threads {args.threads}"
        + (f" --runs {args.runs} --results {args.results}" if args.runs != "bench/runs" else "")
        + "`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {accelerator()}; "
        f"torch {torch.__version__}; date {time.strftime('%Y-%m-%d')}.",
        "",
        f"Every method gets the same budget of {args.evaluations} evaluations on the same {args.eval_samples} "
        "validation samples (carved from train; candidates scored after BN recalibration on 4 training batches). "
        "Accuracies in %, mean ± std over seeds; +BN: after BN recalibration on 20 training batches; +refit: then "
        "the least-squares re-fit every search applies (kept only where it does not lower validation accuracy); "
        f"+FT: after {args.finetune_epochs} epoch(s) of fine-tuning; search s: wall time of the search alone.",
        "",
        "Methods: `rl` is the GAT policy trained by PPO with the self-competition reward: it probes every group's "
        "sensitivity (when the budget is at least 3× the probes), scores the cheap plans (sensitivity allocation, "
        "structural rule, global magnitude ranking), starts from the best of them and learns per-group widths and "
        "single channels from there (`autoprune/agents/warm_start.py`); `rl-frozen` (ablation) does the same but "
        "never updates the policy; `rl-refit` (variant) scores every candidate after the least-squares re-fit of "
        "`--score-with-reconstruction`; `structural` keeps groups that merge with others (residual streams, concats) "
        "whole and cuts the rest uniformly by L1 (1 evaluation); `sensitivity` probes each group alone at 3 widths "
        "and allocates widths by measured drop per unit of FLOPs (probes count as evaluations); `global-magnitude` "
        "/ `global-taylor` are torch-pruning's global rankings (1 evaluation); `random-search` draws per-group "
        "widths, `random-masks` magnitude-weighted per-channel masks (best of the budget); `l1-uniform` keeps the "
        "same fraction of every group (1 evaluation). Candidates are scored on the physically pruned network with "
        "racing (`autoprune/scoring.py`): evals counts every scoring, images every image forwarded.",
        "",
    ]
    for target in args.targets:
        header = (
            ["method", "seeds"] + [label for _, label in COLUMNS] + ["FLOPs", "params", "evals", "images", "search s"]
        )
        lines += [f"## Target FLOPs ≤ {target:.0%}", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "---|" * len(header))
        for method in args.methods:
            metrics = []
            plans = []
            for seed in args.seeds:
                path = runs / f"{method}-t{target}-s{seed}" / "plan.json"
                if path.exists():
                    plan = json.loads(path.read_text())
                    plans.append(plan)
                    metrics.append(plan["metrics"])
            if not metrics:
                continue
            row = [method, str(len(metrics))]
            row += [mean_std([m[key] for m in metrics if key in m]) for key, _ in COLUMNS]
            row.append(mean_std([p["achieved"]["flops_ratio"] for p in plans]))
            row.append(mean_std([p["achieved"]["params_ratio"] for p in plans]))
            row.append(mean_std([m["evaluations"] for m in metrics], percent=False))
            row.append(mean_std([m.get("images_forwarded", float("nan")) for m in metrics], percent=False))
            row.append(mean_std([m["search_seconds"] for m in metrics], percent=False))
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", f"![best validation accuracy so far](quality_{args.model}_t{target}.png)", ""]
    out = Path(args.results) / f"quality_{args.model}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(out.read_text())
    return out


if __name__ == "__main__":
    main()
