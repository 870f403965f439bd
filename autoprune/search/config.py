"""Typed configuration of a search run; the CLI maps its options onto these fields."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoprune.errors import AutopruneError
from autoprune.problem import ProblemConfig

METHODS = ("rl", "l1-uniform", "global-magnitude", "global-taylor", "random-search", "random-masks")
"""`rl` is the GAT+PPO agent; the rest are baselines run in the same harness."""


@dataclass
class SearchConfig:
    """One search: what to prune (`problem`), the budget, the method and where results go."""

    problem: ProblemConfig = field(default_factory=ProblemConfig)
    """Model, weights, data and scoring."""
    target_flops: float | None = 0.5
    """Keep at most this fraction of the original FLOPs (MACs); None for no FLOPs budget."""
    target_params: float | None = None
    """Keep at most this fraction of the original parameters; None for no parameter budget."""
    method: str = "rl"
    """`rl` (GAT policy + PPO, self-competition reward) or a baseline name."""
    evaluations: int = 200
    """Candidate evaluations (masked-network scorings) the search may spend."""
    seed: int = 0
    """Seeds the agent, the env and random baselines."""
    steps_per_episode: int = 1
    """1: one-shot full mask per episode; more: the agent refines its last mask for this many steps."""
    rollout: int = 16
    """Evaluations per PPO update (and per checkpoint)."""
    learning_rate: float = 3e-3
    """PPO's Adam step size."""
    tau: float = 0.01
    """Temperature of the self-competition reward `tanh((score - best) / tau)`."""
    finetune_epochs: float = 0.0
    """Fine-tune the pruned model for this many epochs after the search (fractions allowed)."""
    workers: int = 1
    """Parallel evaluation workers; more than 1 uses Ray actors."""
    address: str | None = None
    """Ray cluster to join (`auto`, `ray://host:10001`); None starts a local Ray when workers > 1."""
    gpus_per_worker: float = 0.0
    """GPUs each Ray worker asks for (fractions allowed)."""
    out: str = "runs/latest"
    """Run directory: plan.json, pruned.pt, metrics.csv, tb/, checkpoint/, summary.md."""

    def validate(self) -> None:
        """Raise AutopruneError for settings that cannot work."""
        if self.method not in METHODS:
            raise AutopruneError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.target_flops is None and self.target_params is None:
            raise AutopruneError("give a budget: --target-flops and/or --target-params")
        if self.evaluations < 1:
            raise AutopruneError("--evaluations must be at least 1")
        if self.workers < 1:
            raise AutopruneError("--workers must be at least 1")
        if self.steps_per_episode < 1 or self.rollout < 2:
            raise AutopruneError("--steps-per-episode must be >= 1 and --rollout >= 2")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> SearchConfig:
        doc = dict(doc)
        problem = doc.pop("problem", {})
        problem["ignore"] = tuple(problem.get("ignore", ()))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(problem=ProblemConfig(**problem), **{k: v for k, v in doc.items() if k in names})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path) -> SearchConfig:
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise AutopruneError(f"{path.parent} is not a run directory (no config.json)") from None
        except (json.JSONDecodeError, TypeError) as exc:
            raise AutopruneError(f"{path} is corrupt: {exc}") from None
