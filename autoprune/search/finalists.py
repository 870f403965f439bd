"""Choose the plan among the search's best masks on validation images the search never saw.

A search scores hundreds of masks on the same validation images and keeps the highest score. The winner is partly
the mask that happened to suit those images: its score is biased upwards, the more so the more masks were tried
(the winner's curse), and the biased winner need not be the best network. So the last evaluations of the budget
(at most `finalists`, and at most 1/`SHARE` of it) re-score the best distinct masks, each scored on every search
image, on as many fresh validation images, and the plan is the mask with the best accuracy over both sets (pooled:
twice the images behind the final choice, half the selection bias).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.scoring import SlicedScorer

SHARE = 25
"""The confirmation spends at most 1/SHARE of the budget (none below 2 finalists)."""


def reserved(evaluations: int, finalists: int) -> int:
    """Evaluations of a budget of `evaluations` left for confirming up to `finalists` masks (0: none)."""
    count = min(finalists, evaluations // SHARE)
    return count if count >= 2 else 0


class Finalists:
    """The `size` best distinct masks scored on every search image, best first (earlier first on ties)."""

    def __init__(self, size: int, entries: list[tuple[float, np.ndarray]] | None = None) -> None:
        self.size = size
        self.entries: list[tuple[float, np.ndarray]] = sorted(entries or [], key=lambda e: -e[0])[: max(size, 0)]

    def offer(self, score: float, keep: np.ndarray) -> None:
        """Consider a fully scored mask."""
        if self.size < 1 or any(np.array_equal(keep, k) for _, k in self.entries):
            return
        if len(self.entries) == self.size and score <= self.entries[-1][0]:
            return
        self.entries.append((float(score), np.asarray(keep, dtype=np.int8).copy()))
        self.entries.sort(key=lambda e: -e[0])  # stable: earlier masks first on ties
        del self.entries[self.size :]

    def state(self) -> list[dict[str, Any]]:
        return [{"score": s, "keep": k.tolist()} for s, k in self.entries]

    @classmethod
    def from_state(cls, size: int, saved: list[dict[str, Any]]) -> Finalists:
        """Rebuilt from `state()` entries (several lists joined, e.g. an older run's two, are de-duplicated)."""
        finalists = cls(size)
        for entry in saved:
            finalists.offer(float(entry["score"]), np.asarray(entry["keep"], dtype=np.int8))
        return finalists


@dataclass
class Confirmation:
    """What re-scoring the finalists chose and cost."""

    keep: np.ndarray
    """The chosen mask."""
    rows: list[dict[str, Any]]
    """Per finalist (search rank order): rank, search, fresh and pooled accuracy, chosen."""
    images: int
    """Images forwarded (BN recalibration and fresh validation images)."""

    @property
    def chosen(self) -> dict[str, Any]:
        return next(r for r in self.rows if r["chosen"])

    def metrics(self) -> dict[str, Any]:
        """The plan's record of the confirmation."""
        chosen = self.chosen
        return {
            "finalists": len(self.rows),
            "finalist_chosen_rank": chosen["rank"],
            "search_val_acc_chosen": chosen["search"],
            "fresh_val_acc_chosen": chosen["fresh"],
            "pooled_val_acc_chosen": chosen["pooled"],
        }

    def save(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows({**r, "chosen": int(r["chosen"])} for r in self.rows)


def confirm(finalists: Finalists, scorer: SlicedScorer, search_samples: int) -> Confirmation:
    """Score every finalist with `scorer` (fresh images) and choose the best pooled accuracy (the search's rank
    decides ties)."""
    before = scorer.images_forwarded
    rows = []
    for rank, (search, keep) in enumerate(finalists.entries, start=1):
        fresh = scorer.score(keep).score
        pooled = (search * search_samples + fresh * scorer.num_samples) / (search_samples + scorer.num_samples)
        rows.append({"rank": rank, "search": search, "fresh": fresh, "pooled": pooled, "chosen": False})
    best = max(range(len(rows)), key=lambda i: (rows[i]["pooled"], -i))
    rows[best]["chosen"] = True
    return Confirmation(finalists.entries[best][1], rows, scorer.images_forwarded - before)


__all__ = ["SHARE", "Confirmation", "Finalists", "confirm", "reserved"]
