"""Choose the plan by the model a search delivers: a shortlist of masks re-fitted as the final plan will be.

A search ranks masks by their validation accuracy after BN recalibration, but the model it writes is also
re-fitted by least squares (`autoprune.recovery.reconstruction`), and the re-fit lifts some plans far more than
others: on ResNet-20 at 30% FLOPs the agent's best mask led the sensitivity allocation after BN recalibration
(27.34% against 24.47% test) and trailed it after the re-fit (64.59% against 69.48%;
bench/results/v12/quality_resnet20.md). So, before the plan is finalised, a shortlist (the search's `TOP` best
distinct masks and the cheap plans it scored by name, e.g. the agent's start masks) is filled to the budget, each
mask is cut from the unpruned network, re-fitted on `IMAGES` training images (fewer than the final re-fit; the
unpruned network's outputs on them are computed once for all) and scored on the whole validation split; the most
accurate becomes the plan, the search's best on ties.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprune.constraints import Constraints, fill
from autoprune.plan import Plan
from autoprune.problem import Problem
from autoprune.reconstruct import Targets, refitted
from autoprune.recovery import calibration_batches, calibration_images
from autoprune.search.finalists import Finalists
from autoprune.training import evaluate

TOP = 3
"""The search's best distinct masks on the shortlist."""
IMAGES = 256
"""Calibration images of each shortlisted re-fit (at most the final re-fit's `calibration_images`)."""


def candidates(best: np.ndarray, leaders: Finalists, named: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """The shortlist, by name: the search's plan first, its best masks by rank, then the named plans (a mask
    listed twice is re-fitted once, under its first name)."""
    ranked = [(f"search #{rank}", keep) for rank, (_, keep) in enumerate(leaders.entries, start=1)]
    return [("search's plan", best), *ranked, *named.items()]


@dataclass
class Shortlist:
    """What re-fitting the shortlist chose and cost."""

    keep: np.ndarray
    """The chosen mask (filled to the budget)."""
    rows: list[dict[str, Any]]
    """Per distinct candidate, in shortlist order: name, FLOPs ratio, validation accuracy after the re-fit,
    chosen."""
    images: int
    """Images forwarded: calibration (once) and the validation split per candidate."""
    seconds: float

    @property
    def chosen(self) -> dict[str, Any]:
        return next(r for r in self.rows if r["chosen"])

    def metrics(self) -> dict[str, Any]:
        """The plan's record of the choice."""
        return {
            "shortlist": len(self.rows),
            "shortlist_chosen": self.chosen["name"],
            "shortlist_val_acc_chosen": self.chosen["val_acc_refit"],
            "shortlist_val_acc_search_best": self.rows[0]["val_acc_refit"],
            "shortlist_images": self.images,
            "shortlist_seconds": round(self.seconds, 2),
        }

    def save(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows({**r, "chosen": int(r["chosen"])} for r in self.rows)


def choose(
    problem: Problem, constraints: Constraints, shortlist: list[tuple[str, np.ndarray]], seed: int = 0
) -> Shortlist | None:
    """Re-fit each distinct mask of `shortlist` (after `fill`) and choose the best on the validation split;
    None when fewer than two distinct masks remain (the final re-fit alone decides nothing)."""
    graph, model, bundle, device = problem.graph, problem.model, problem.bundle, problem.device
    distinct: list[tuple[str, np.ndarray]] = []
    for name, keep in shortlist:
        filled = fill(graph, np.asarray(keep, dtype=np.int8), constraints)
        if not any(np.array_equal(filled, k) for _, k in distinct):
            distinct.append((name, filled))
    if len(distinct) < 2:
        return None
    start = time.perf_counter()
    images = min(IMAGES, calibration_images(bundle.input_shape))
    x = [x for x, _ in calibration_batches(bundle, images, seed, device)]
    targets = Targets(model.to(device).eval(), torch.cat(x))
    val = bundle.batches("val", 500, device=device)
    rows = []
    for name, keep in distinct:
        plan = Plan.from_mask(model, graph, keep, constraints)
        net, _ = refitted(model, plan.modules, targets=targets)
        accuracy = evaluate(net, val, device)
        rows.append({"name": name, "flops_ratio": plan.achieved["flops_ratio"], "val_acc_refit": accuracy,
                     "chosen": False})  # fmt: skip
    best = max(range(len(rows)), key=lambda i: (rows[i]["val_acc_refit"], -i))
    rows[best]["chosen"] = True
    spent = len(targets.x) * (1 + len(rows)) + len(bundle.split("val").labels) * len(rows)
    return Shortlist(distinct[best][1], rows, spent, time.perf_counter() - start)


__all__ = ["IMAGES", "TOP", "Shortlist", "candidates", "choose"]
