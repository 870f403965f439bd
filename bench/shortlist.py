"""What the shortlist chose in finished runs: every shortlisted mask's validation accuracy after the quick re-fit,
the choice, and the delivered plan's test accuracy after the final re-fit (`autoprune/search/shortlist.py`).

    python bench/shortlist.py bench/runs/v13/quality-resnet20 --out bench/results/v13/shortlist_resnet20.md
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def rows(run: Path) -> list[dict[str, str]]:
    with open(run / "shortlist.csv", newline="") as f:
        return list(csv.DictReader(f))


def table(root: Path) -> list[str]:
    lines = [
        "| run | shortlist: validation % after the quick re-fit (chosen in bold) | chosen | test % +BN | "
        "test % +refit | shortlist s |",
        "|---|---|---|---|---|---|",
    ]
    for run in sorted(p.parent for p in root.glob("*/shortlist.csv")):
        if not (run / "plan.json").exists():
            continue
        m = json.loads((run / "plan.json").read_text())["metrics"]
        cells = []
        for r in rows(run):
            cell = f"{r['name']} {float(r['val_acc_refit']):.2%}".replace("%", "")
            cells.append(f"**{cell}**" if r["chosen"] == "1" else cell)
        lines.append(
            f"| {run.name} | {'; '.join(cells)} | {m['shortlist_chosen']} | {m['test_acc_recalibrated']:.2%} | "
            f"{m.get('test_acc_reconstructed', float('nan')):.2%} | {m['shortlist_seconds']:.0f} |".replace("%", "")
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="directories of run directories")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    lines = ["# What the shortlist chose", "", f"Command: `python bench/shortlist.py {' '.join(map(str, args.roots))}"
             f" --out {args.out}`", ""]  # fmt: skip
    for root in args.roots:
        lines += [f"## {root}", "", *table(root), ""]
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
