"""Figures of runs and sweeps as PNG: best score so far per evaluation, kept channels per layer, accuracy per stage.

Each function reads what a run directory already holds (metrics.csv, plan.json) and writes one PNG with
matplotlib's non-interactive Agg backend.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.errors import AutopruneError
from autoprune.plan import Plan
from autoprune.recovery import stage_label


def _pyplot():
    try:
        import matplotlib
    except ImportError:  # a dependency, but an environment may lack it
        raise AutopruneError("plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def best_so_far(metrics_csv: Path) -> np.ndarray:
    """The `best_score` column of a run's metrics.csv, one value per evaluation (NaN before the first feasible)."""
    try:
        with open(metrics_csv, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise AutopruneError(f"cannot read {metrics_csv}: {exc.strerror or exc}") from None
    values = []
    for row in rows:
        try:
            value = float(row.get("best_score") or "nan")
        except ValueError:
            value = float("nan")
        values.append(value if np.isfinite(value) else np.nan)
    return np.asarray(values, dtype=float)


def plot_best_so_far(curves: Mapping[str, Sequence[np.ndarray]], path: Path, title: str = "") -> Path:
    """Best search score so far against evaluations: per label, the mean over its runs with their range.

    Args:
        curves: label (e.g. a method) to the best-so-far curves of its runs (seeds).
        path: the PNG to write.
        title: the figure's title.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, runs in curves.items():
        runs = [np.asarray(r, dtype=float) for r in runs if len(r)]
        if not runs:
            continue
        length = max(len(r) for r in runs)
        grid = np.full((len(runs), length), np.nan)
        for i, r in enumerate(runs):
            grid[i, : len(r)] = r
            grid[i, len(r) :] = r[-1]  # a finished run keeps its best
        x = np.arange(1, length + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns before a run's first score
            mean = np.nanmean(grid, axis=0)
            low, high = np.nanmin(grid, axis=0), np.nanmax(grid, axis=0)
        (line,) = ax.plot(x, 100 * mean, label=f"{label} ({len(runs)} run{'s' * (len(runs) > 1)})")
        if len(runs) > 1:
            ax.fill_between(x, 100 * low, 100 * high, alpha=0.2, color=line.get_color())
    ax.set_xlabel("evaluation")
    ax.set_ylabel("best validation score so far (%)")
    ax.set_title(title or "Search progress")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def layer_widths(plan: Plan) -> list[tuple[str, int, int]]:
    """`(layer, kept, original)` output channels of every conv and linear layer, from the plan alone."""
    rows = []
    for name, kind, shapes in plan.structure:
        if not shapes or "Transpose" in kind or not ("Conv" in kind or "Linear" in kind):
            continue
        total = int(shapes[0][0])
        kept = len(plan.modules.get(name, {}).get("out", range(total)))
        rows.append((name, kept, total))
    return rows


def plot_widths(plan: Plan, path: Path) -> Path:
    """Kept output channels per layer (bars) against the original widths (outlines)."""
    plt = _pyplot()
    rows = layer_widths(plan)
    if not rows:
        raise AutopruneError("the plan has no conv or linear layers to draw")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(rows) + 2), 4.2), dpi=110)
    x = np.arange(len(rows))
    ax.bar(x, [r[2] for r in rows], color="none", edgecolor="0.5", label="original")
    ax.bar(x, [r[1] for r in rows], color="tab:blue", alpha=0.8, label="kept")
    ax.set_xticks(x, [r[0] for r in rows], rotation=90, fontsize=max(4, 9 - len(rows) // 20))
    ax.set_ylabel("output channels")
    a = plan.achieved
    ax.set_title(f"{plan.model_name}: {a['flops_ratio']:.1%} FLOPs, {a['params_ratio']:.1%} params kept")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_stages(metrics: Mapping[str, Any], stages: Sequence[str], path: Path) -> Path:
    """Validation and test accuracy at each stage (unpruned, pruned, recalibrated, ...) as grouped bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(stages) + 1.5), 3.8), dpi=110)
    x = np.arange(len(stages))
    for offset, split in ((-0.2, "val"), (0.2, "test")):
        values = [100 * float(v) if (v := metrics.get(f"{split}_acc_{s}")) is not None else np.nan for s in stages]
        bars = ax.bar(x + offset, values, width=0.4, label=split)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, [stage_label(s) for s in stages], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 118)  # room above 100% for the legend
    ax.set_title("Accuracy at each stage")
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    from matplotlib import pyplot as plt

    path = Path(path)
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    except OSError as exc:
        raise AutopruneError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return path
