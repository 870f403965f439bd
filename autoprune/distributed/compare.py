"""The comparison table of a sweep: one row per run, and mean ± std over seeds per method and target."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("unpruned", "pruned", "recalibrated", "finetuned")
"""Accuracy stages of a run (`finetuned` only when the sweep fine-tunes)."""

COLUMNS = (
    "method",
    "target",
    "seed",
    *(f"{split}_acc_{stage}" for stage in STAGES for split in ("val", "test")),
    "search_val_acc_best",
    "flops_ratio",
    "params_ratio",
    "evaluations",
    "search_seconds",
    "wall_seconds",
    "run_dir",
)
"""Columns of `comparison.csv` (accuracies are fractions in [0, 1]; empty where a stage was not run)."""

SUMMARY_METRICS = (
    "val_acc_recalibrated",
    "test_acc_recalibrated",
    "test_acc_finetuned",
    "flops_ratio",
    "params_ratio",
    "wall_seconds",
)
"""What `comparison_summary.csv` averages over seeds."""


def read_rows(runs: Iterable[tuple[str, float, int, Path]]) -> list[dict[str, Any]]:
    """One row per finished run `(method, target, seed, run_dir)`, from its plan.json (unfinished ones skipped)."""
    rows = []
    for method, target, seed, run_dir in runs:
        plan_path = run_dir / "plan.json"
        if not plan_path.exists():
            continue
        plan = json.loads(plan_path.read_text())
        metrics, achieved = plan.get("metrics", {}), plan.get("achieved", {})
        timing = json.loads((run_dir / "trial.json").read_text()) if (run_dir / "trial.json").exists() else {}
        row: dict[str, Any] = {"method": method, "target": target, "seed": seed}
        for column in COLUMNS[3:]:
            row[column] = metrics.get(column, achieved.get(column, timing.get(column)))
        row["run_dir"] = str(run_dir)
        rows.append(row)
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of `SUMMARY_METRICS` per (method, target), in first-seen order."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["target"]), []).append(row)
    summary = []
    for (method, target), members in groups.items():
        entry: dict[str, Any] = {"method": method, "target": target, "runs": len(members)}
        for name in SUMMARY_METRICS:
            values = np.array([float(r[name]) for r in members if r.get(name) is not None])
            entry[f"{name}_mean"] = float(values.mean()) if len(values) else None
            entry[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else (0.0 if len(values) else None)
        summary.append(entry)
    return summary


def write_comparison(rows: Sequence[dict[str, Any]], out: Path) -> None:
    """Write `comparison.csv` (per run), `comparison_summary.csv` (mean/std) and `comparison.md` (both) to `out`."""
    summary = summarise(rows)
    _write_csv(out / "comparison.csv", COLUMNS, rows)
    summary_columns = ["method", "target", "runs", *(f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "std"))]
    _write_csv(out / "comparison_summary.csv", summary_columns, summary)
    (out / "comparison.md").write_text(markdown(rows, summary))


def markdown(rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]]) -> str:
    """The comparison as Markdown: mean ± std per method/target, then every run."""
    finetuned = any(r.get("test_acc_finetuned") is not None for r in rows)
    lines = [
        "# Sweep comparison",
        "",
        f"Mean ± std over seeds (accuracies in %, after BN recalibration{' and fine-tuning' if finetuned else ''}).",
        "",
        "| method | FLOPs target | runs | val acc | test acc |"
        + (" test acc fine-tuned |" if finetuned else "")
        + " FLOPs | params | wall s |",
        "|---|---|---|---|---|" + ("---|" if finetuned else "") + "---|---|---|",
    ]
    for s in summary:
        cells = [s["method"], f"{s['target']:g}", str(s["runs"])]
        cells += [_pm(s, "val_acc_recalibrated", 100), _pm(s, "test_acc_recalibrated", 100)]
        if finetuned:
            cells.append(_pm(s, "test_acc_finetuned", 100))
        cells += [_pm(s, "flops_ratio", 100), _pm(s, "params_ratio", 100), _pm(s, "wall_seconds", 1, ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    stages = [st for st in STAGES if any(r.get(f"test_acc_{st}") is not None for r in rows)]
    lines += [
        "",
        "Every run (val / test accuracy in % per stage):",
        "",
        "| method | target | seed | " + " | ".join(stages) + " | FLOPs | params | search s | wall s |",
        "|---|---|---|" + "---|" * len(stages) + "---|---|---|---|",
    ]
    for r in rows:
        cells = [r["method"], f"{r['target']:g}", str(r["seed"])]
        cells += [f"{_pct(r.get(f'val_acc_{st}'))} / {_pct(r.get(f'test_acc_{st}'))}" for st in stages]
        cells += [_pct(r.get("flops_ratio")), _pct(r.get("params_ratio"))]
        cells += [_num(r.get("search_seconds")), _num(r.get("wall_seconds"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})


def _pm(entry: dict[str, Any], name: str, scale: float, fmt: str = ".2f") -> str:
    mean, std = entry.get(f"{name}_mean"), entry.get(f"{name}_std")
    return "–" if mean is None else f"{mean * scale:{fmt}} ± {std * scale:{fmt}}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * float(value):.2f}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{float(value):.1f}"
