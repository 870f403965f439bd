"""Did the finalists choose well? Test accuracy of every finalist of finished runs, against the rule's choice.

For every run directory given (as written by `bench/quality.py`) that confirmed finalists
(`autoprune.search.finalists`), each finalist is made into a plan as the search's own finish does (filled to the
budget, BN recalibrated on 20 training batches of 128) and measured on the test split. The table shows, per run,
the test accuracy of the mask each rule would pick: the search's best score (no finalists), the fresh images
alone, both image sets pooled (the rule the search uses), and the best finalist in hindsight.

    python bench/finalists.py bench/runs/v10/quality-resnet56/rl-t0.5-s* --out bench/results/v10/finalists_resnet56.md
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from autoprune.constraints import Constraints, fill
from autoprune.plan import Plan
from autoprune.problem import load_problem
from autoprune.recovery import recalibration
from autoprune.search.config import SearchConfig
from autoprune.training import evaluate

RULES = [("search", "search best"), ("fresh", "fresh images"), ("pooled", "pooled (used)"), ("test", "hindsight")]


def finalist_tests(run: Path, problem, constraints: Constraints) -> list[dict]:
    """The run's finalists.csv rows, each with the test accuracy of its plan after BN recalibration."""
    with open(run / "finalists.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    saved = json.loads((run / "checkpoint" / "state.json").read_text())["finalists"]
    test = problem.bundle.batches("test", 500, device=problem.device)
    for row, finalist in zip(rows, saved, strict=True):
        keep = fill(problem.graph, np.asarray(finalist["keep"], dtype=np.int8), constraints)
        pruned = Plan.from_mask(problem.model, problem.graph, keep, constraints).apply(problem.model)
        recalibration().run(pruned, problem.bundle, problem.device)
        row["test"] = evaluate(pruned.eval(), test, problem.device)
        for key in ("search", "fresh", "pooled"):
            row[key] = float(row[key])
    return rows


def pick(rows: list[dict], rule: str) -> dict:
    """The finalist `rule` picks (the search's rank decides ties)."""
    return max(rows, key=lambda r: (r[rule], -int(r["rank"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        "# Finalists: test accuracy (after BN recalibration) of the mask each rule picks",
        "",
        f"Command: `python bench/finalists.py {' '.join(str(r) for r in args.runs)} --out {args.out}`",
        "",
        "| run | finalists | " + " | ".join(label for _, label in RULES) + " | rank picked (pooled) |",
        "|---|---|" + "---|" * len(RULES) + "---|",
    ]
    picked: dict[str, list[float]] = {rule: [] for rule, _ in RULES}
    for run in args.runs:
        if not (run / "finalists.csv").exists():
            continue
        config = SearchConfig.load(run / "config.json")
        problem = load_problem(config.problem)
        budgets = config.budgets()
        constraints = Constraints(flops=budgets.get("flops"), params=budgets.get("params"))
        rows = finalist_tests(run, problem, constraints)
        cells = []
        for rule, _ in RULES:
            value = pick(rows, rule)["test"]
            picked[rule].append(value)
            cells.append(f"{value:.2%}")
        lines.append(f"| {run.name} | {len(rows)} | " + " | ".join(cells) + f" | {pick(rows, 'pooled')['rank']} |")
        print(lines[-1], flush=True)
    means = [f"{statistics.mean(v):.2%}" if v else "–" for v in picked.values()]
    lines.append(f"| mean | | {' | '.join(means)} | |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
