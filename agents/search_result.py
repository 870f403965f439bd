"""What a search returns (`SearchResult`) and the harness that counts and records its evaluations.

Every search method (the baselines, the PPO agent) scores masks through one `Harness`, so all of them are held
to the same evaluation budget and report the same history; comparisons at equal budget follow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autoprune.constraints import Constraints
from autoprune.errors import AutopruneError
from autoprune.graph.channel_graph import ChannelGraph

ScoreFn = Callable[[np.ndarray], float]
"""Scores a feasible keep-mask, higher is better (e.g. `MaskedEvaluator`: accuracy)."""

EvalCallback = Callable[[dict[str, float]], None]
"""Called with each evaluation's history record (see `SearchResult.history`)."""


class BudgetExhausted(RuntimeError):
    """A search asked for more evaluations than its budget allows (a bug in the search, not a user error)."""


@dataclass
class SearchResult:
    """The outcome of one search run.

    Attributes:
        method: name of the search method (e.g. `random-search`).
        best_keep: the best feasible keep-mask found (int8, one entry per decision).
        best_score: its score.
        history: one record per evaluation, in order, with keys `evaluation` (1-based), `score`, `flops_ratio`,
            `params_ratio` and `best_score` (best so far).
        evaluations: evaluations spent: `len(history)` candidates plus probes (see `Harness.probe`).
        wall_time: seconds from the start of the search to its end.
    """

    method: str
    best_keep: np.ndarray
    best_score: float
    history: list[dict[str, float]] = field(default_factory=list)
    evaluations: int = 0
    wall_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (the mask as a list of ints)."""
        return {
            "method": self.method,
            "best_keep": [int(v) for v in self.best_keep],
            "best_score": float(self.best_score),
            "history": [dict(r) for r in self.history],
            "evaluations": self.evaluations,
            "wall_time": self.wall_time,
        }


class Harness:
    """Wraps a score function: enforces the evaluation budget and records every evaluation.

    Each call scores one feasible mask and counts as one evaluation; masks over budget are refused, so every
    score in the history belongs to a network that meets the constraints.

    Args:
        graph: the channel graph the masks belong to.
        constraints: the budgets every scored mask must meet.
        score_fn: scores a keep-mask, higher is better.
        budget: most evaluations allowed (at least 1).
        on_eval: called with each history record as soon as it exists (progress bars, metrics).
    """

    def __init__(
        self,
        graph: ChannelGraph,
        constraints: Constraints,
        score_fn: ScoreFn,
        budget: int,
        on_eval: EvalCallback | None = None,
    ) -> None:
        if budget < 1:
            raise AutopruneError(f"the evaluation budget must be at least 1, got {budget}")
        self.graph = graph
        self.constraints = constraints
        self.score_fn = score_fn
        self.budget = int(budget)
        self.on_eval = on_eval
        self.history: list[dict[str, float]] = []
        self.probes = 0
        self.best_keep: np.ndarray | None = None
        self.best_score = -np.inf
        self.start = time.perf_counter()

    @property
    def evaluations(self) -> int:
        """Evaluations spent: candidates scored and probes."""
        return len(self.history) + self.probes

    @property
    def remaining(self) -> int:
        """Evaluations still allowed."""
        return self.budget - self.evaluations

    @property
    def batch(self) -> int:
        """Candidates worth proposing at a time: the score function's `candidates` (1 where it has none)."""
        return max(1, min(int(getattr(self.score_fn, "candidates", 1)), self.remaining))

    def prefetch(self, keeps: list[np.ndarray]) -> None:
        """Let the score function score `keeps` together before they are scored one by one (a no-op for score
        functions without `prefetch`); the evaluations are counted as each is then scored."""
        prefetch = getattr(self.score_fn, "prefetch", None)
        if prefetch is not None and len(keeps) > 1:
            prefetch(keeps[: self.remaining])

    def __call__(self, keep: np.ndarray) -> float:
        """Score the feasible mask `keep` and record it; raise `BudgetExhausted` when the budget is spent."""
        if self.remaining <= 0:
            raise BudgetExhausted(f"evaluation budget of {self.budget} spent")
        keep = self.graph.check_mask(keep)
        if not self.constraints.feasible(self.graph, keep):
            raise ValueError("mask violates the constraints; project it (autoprune.constraints.project) first")
        score = float(self.score_fn(keep))
        if score > self.best_score or self.best_keep is None:
            self.best_score, self.best_keep = score, keep.copy()
        ratios = self.constraints.ratios(self.graph, keep)
        record = {
            "evaluation": self.evaluations + 1,
            "score": score,
            "flops_ratio": ratios["flops"],
            "params_ratio": ratios["params"],
            "best_score": self.best_score,
        }
        self.history.append(record)
        if self.on_eval is not None:
            self.on_eval(record)
        return score

    def probe(self, keep: np.ndarray, probe_fn: ScoreFn | None = None) -> float:
        """Score a mask that need not meet the budget (e.g. a sensitivity measurement): it counts as one
        evaluation of the budget but is neither recorded as a candidate nor ever the best.

        Args:
            keep: any legal mask.
            probe_fn: how to score it (default: the harness's score function).
        """
        if self.remaining <= 0:
            raise BudgetExhausted(f"evaluation budget of {self.budget} spent")
        self.probes += 1
        return float((probe_fn or self.score_fn)(self.graph.check_mask(keep)))

    def result(self, method: str) -> SearchResult:
        """The search's outcome so far, as a `SearchResult` named `method`."""
        if self.best_keep is None:
            raise BudgetExhausted("no mask was evaluated")
        return SearchResult(
            method=method,
            best_keep=self.best_keep.copy(),
            best_score=self.best_score,
            history=list(self.history),
            evaluations=self.evaluations,
            wall_time=time.perf_counter() - self.start,
        )


__all__ = ["BudgetExhausted", "EvalCallback", "Harness", "ScoreFn", "SearchResult"]
