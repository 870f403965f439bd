"""Everything a search scored, the best feasible mask per target, and the accuracy/cost front.

A mask scored at cost `c` is feasible for every budget of at least `c`, so one search over several targets of a
resource (`autoprune search --targets 0.3,0.5,0.7`) serves them all from one archive: each target takes the
best-scoring mask within it, and the non-dominated set (no other mask both cheaper and better) is the front a user
chooses a model from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.atomic import atomic_write_text


@dataclass
class Entry:
    """One scored mask: its score, its cost ratios (`flops`, `params`, and `latency` where measured)."""

    score: float
    ratios: dict[str, float]
    keep: np.ndarray
    evaluation: int = 0


@dataclass
class Archive:
    """Every feasible mask a search scored in full (racing estimates and probes are left out)."""

    entries: list[Entry] = field(default_factory=list)

    def add(self, score: float, ratios: dict[str, float], keep: np.ndarray, evaluation: int = 0) -> None:
        """Record a scored mask."""
        self.entries.append(Entry(float(score), dict(ratios), np.asarray(keep, dtype=np.int8).copy(), evaluation))

    def best(self, resource: str, target: float) -> Entry | None:
        """The best-scoring mask whose `resource` ratio is within `target` (the earliest among equals)."""
        fits = [e for e in self.entries if e.ratios[resource] <= target + 1e-9]
        return max(fits, key=lambda e: e.score, default=None)

    def front(self, resource: str) -> list[Entry]:
        """The non-dominated masks by (`resource` ratio lower, score higher), cheapest first."""
        return non_dominated(self.entries, resource)


def non_dominated(entries: list[Entry], resource: str) -> list[Entry]:
    """Entries no other entry beats on both cost (`resource` ratio, lower) and score (higher), cheapest first."""
    front: list[Entry] = []
    for e in sorted(entries, key=lambda e: (e.ratios[resource], -e.score)):
        if not front or e.score > front[-1].score:
            front.append(e)
    return front


def front_rows(front: list[Entry], resource: str) -> list[dict[str, Any]]:
    """The front as JSON-ready rows: score and every cost ratio, without masks."""
    return [
        {"evaluation": e.evaluation, "score": e.score, **{f"{k}_ratio": v for k, v in e.ratios.items()}} for e in front
    ]


def save_front(path: Path, front: list[Entry], resource: str, picks: list[dict[str, Any]]) -> None:
    """Write front.json: the front's rows and the mask each target took."""
    doc = {"resource": resource, "front": front_rows(front, resource), "targets": picks}
    atomic_write_text(path, json.dumps(doc, indent=1))


def plot_front(
    path: Path, front: list[Entry], resource: str, picks: list[dict[str, Any]], scored: list[Entry] | None = None
) -> Path:
    """Draw the front (validation score vs cost ratio), every scored mask faintly, and each target's plan.

    Args:
        path: the PNG to write.
        front: the non-dominated entries.
        resource: the cost on the x axis.
        picks: per target, `target`, `ratio` and `score` of its plan (and `test_acc` after recovery, if measured).
        scored: all entries, drawn as faint dots.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if scored:
        ax.scatter([e.ratios[resource] for e in scored], [e.score for e in scored], s=6, c="0.75", label="scored")
    xs = [e.ratios[resource] for e in front]
    ax.step(xs, [e.score for e in front], where="post", c="C0")
    ax.scatter(xs, [e.score for e in front], s=14, c="C0", label="front (validation)")
    for pick in picks:
        ax.axvline(pick["target"], c="0.6", lw=0.8, ls=":")
        ax.scatter([pick["ratio"]], [pick["score"]], marker="*", s=120, c="C3", zorder=3)
        if pick.get("test_acc") is not None:
            ax.scatter([pick["ratio"]], [pick["test_acc"]], marker="x", s=50, c="C2", zorder=3)
    ax.scatter([], [], marker="*", c="C3", label="plan per target (validation)")
    if any(p.get("test_acc") is not None for p in picks):
        ax.scatter([], [], marker="x", c="C2", label="plan, test after recovery")
    ax.set_xlabel(f"{resource} ratio (of the unpruned model)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
