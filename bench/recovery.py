"""What predicts a pruned network's accuracy after fine-tuning? An analysis of finished quality-study runs.

Reads every `plan.json` under the given quality-study run directories (`bench/quality.py` writes them), groups the
runs by study and FLOPs target, and reports the Spearman correlation of test accuracy after fine-tuning with what
a search knows before it: the search score of the chosen mask, its test accuracy after BN recalibration, and its
kept FLOPs and parameter fractions. Every method and seed counts as one mask.

    python bench/recovery.py bench/runs/quality-resnet20 bench/runs/quality-resnet56
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

from scipy.stats import spearmanr

PREDICTORS = {
    "search score": lambda plan: plan["metrics"]["search_val_acc_best"],
    "test +BN": lambda plan: plan["metrics"]["test_acc_recalibrated"],
    "FLOPs kept": lambda plan: plan["achieved"]["flops_ratio"],
    "params kept": lambda plan: plan["achieved"]["params_ratio"],
}


def load_studies(run_dirs: list[Path]) -> dict[tuple[str, float], list[dict]]:
    """Finished plans by (study directory name, FLOPs target); a run that repeats another's mask and result (an
    ablation that chose the same plan) counts once."""
    studies: dict[tuple[str, float], list[dict]] = defaultdict(list)
    seen = set()
    for root in run_dirs:
        for path in sorted(root.glob("*/plan.json")):
            plan = json.loads(path.read_text())
            finetuned = plan["metrics"].get("test_acc_finetuned")
            key = (root.name, json.dumps(plan["mask"]), finetuned)
            if finetuned is not None and key not in seen:
                seen.add(key)
                studies[(root.name, plan["constraint"]["flops"])].append(plan)
    return dict(studies)


def table(studies: dict[tuple[str, float], list[dict]]) -> list[str]:
    header = ["study", "FLOPs target", "masks", "test +FT range", *(f"ρ {name}" for name in PREDICTORS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (study, target), plans in sorted(studies.items()):
        finetuned = [plan["metrics"]["test_acc_finetuned"] for plan in plans]
        row = [study, f"{target:.0%}", str(len(plans)), f"{min(finetuned):.2%}-{max(finetuned):.2%}"]
        row += [f"{spearmanr([get(p) for p in plans], finetuned)[0]:.2f}" for get in PREDICTORS.values()]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="quality-study run directories (bench/runs/quality-*)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/recovery.md"))
    args = parser.parse_args()
    studies = load_studies(args.runs)
    if not studies:
        raise SystemExit("no finished, fine-tuned runs under " + ", ".join(map(str, args.runs)))
    lines = [
        "# What predicts accuracy after fine-tuning",
        "",
        f"Command: `python bench/recovery.py {' '.join(map(str, args.runs))}`; date {time.strftime('%Y-%m-%d')}.",
        "",
        "Spearman correlation (ρ) over the finished runs of each study (every method and seed is one mask) of the "
        "test accuracy after fine-tuning with what is known before it.",
        "",
        *table(studies),
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
