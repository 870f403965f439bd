"""Typed configuration of a search run; the CLI maps its options onto these fields."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoprune.atomic import atomic_write_text
from autoprune.constraints import RESOURCES
from autoprune.data._messages import one_line
from autoprune.errors import AutopruneError
from autoprune.fields import check_types
from autoprune.problem import ProblemConfig

METHODS = (
    "rl",
    "structural",
    "sensitivity",
    "l1-uniform",
    "global-magnitude",
    "global-taylor",
    "random-search",
    "random-masks",
)
"""`rl` is the GAT+PPO agent; the rest are baselines run in the same harness."""
MAX_ROLLOUT = 4096
"""PPO allocates its rollout buffer, a graph observation per evaluation, before the first one."""


@dataclass
class SearchConfig:
    """One search: what to prune (`problem`), the budget, the method and where results go."""

    problem: ProblemConfig = field(default_factory=ProblemConfig)
    """Model, weights, data and scoring."""
    target_flops: float | None = 0.5
    """Keep at most this fraction of the original FLOPs (MACs); None for no FLOPs budget."""
    target_params: float | None = None
    """Keep at most this fraction of the original parameters; None for no parameter budget."""
    target_latency: float | None = None
    """Keep at most this fraction of the unpruned model's latency, measured on the search's device with a per-layer
    latency table (`autoprune.latency`); None for no latency budget."""
    latency_batch: int = 1
    """Inputs per forward pass the latency budget is for."""
    targets: tuple[float, ...] = ()
    """Several budgets of one resource (`target_resource`) searched at once: one plan per target and the front
    of everything scored. Empty: the single budget of `target_flops`/`target_params`/`target_latency`."""
    target_resource: str = "flops"
    """The resource `targets` budgets: flops, params or latency."""
    method: str = "rl"
    """`rl` (GAT policy + PPO, self-competition reward) or a baseline name."""
    evaluations: int = 300
    """Evaluations the search may spend: candidates scored, and probes such as sensitivity measurements."""
    finalists: int = 0
    """The search's best distinct masks re-scored on as many fresh validation images at the end of the budget, to
    choose the plan on both (`autoprune.search.finalists`); at most 1/25 of the budget, none below 50 evaluations
    or where the validation split is too small. 0 (default; 8 did not choose better plans in
    `bench/results/v10/finalists.md`): the plan is the best-scored mask."""
    seed: int = 0
    """Seeds the agent, the env and random baselines."""
    steps_per_episode: int = 1
    """1: one-shot full mask per episode; more: the agent refines its last mask for this many steps."""
    rollout: int = 16
    """Evaluations per PPO update (and per checkpoint), at most `MAX_ROLLOUT`."""
    learning_rate: float = 3e-4
    """PPO's Adam step size; 0 samples from the starting policy without ever updating it (an ablation)."""
    tau: float = 0.01
    """Temperature of the self-competition reward `tanh((score - best) / tau)`."""
    finetune_epochs: float = 0.0
    """Fine-tune the pruned model for this many epochs after the search (fractions allowed)."""
    reconstruct: bool = True
    """After BN recalibration, re-fit the final plan's conv and linear layers by least squares
    (`autoprune.reconstruct`), kept only where it does not lower validation accuracy."""
    workers: int = 1
    """Parallel evaluation workers; more than 1 uses Ray actors."""
    address: str | None = None
    """Ray cluster to join (`auto`, `ray://host:10001`); None starts a local Ray when workers > 1."""
    gpus_per_worker: float = 0.0
    """GPUs each Ray worker asks for (fractions allowed)."""
    out: str = "runs/latest"
    """Run directory: plan.json, pruned.pt, metrics.csv, tb/, checkpoint/, summary.md."""

    def validate(self) -> None:
        """Raise AutopruneError for settings that cannot work (the problem's included)."""
        check_types(self)
        self.problem.validate()
        if self.method not in METHODS:
            raise AutopruneError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.target_resource not in RESOURCES:
            raise AutopruneError(
                f"--target-resource must be one of {', '.join(RESOURCES)}, got {self.target_resource!r}"
            )
        if self.targets:
            if len(set(self.targets)) != len(self.targets) or len(self.targets) > 16:
                raise AutopruneError("--targets must be distinct ratios, at most 16")
            if self.workers > 1 or self.address:
                raise AutopruneError("--targets searches with one evaluation worker; drop --workers/--address")
        elif self.target_flops is None and self.target_params is None and self.target_latency is None:
            raise AutopruneError("give a budget: --target-flops, --target-params, --target-latency or --targets")
        for name, value in self.budgets().items():
            if not 0 < value <= 1:
                raise AutopruneError(f"target {name} ratio must be in (0, 1], got {value}")
        for value in self.targets:
            if not 0 < value <= 1:
                raise AutopruneError(f"--targets ratios must be in (0, 1], got {value}")
        if not 1 <= self.latency_batch <= 4096:
            raise AutopruneError(f"--latency-batch must be in [1, 4096], got {self.latency_batch}")
        if self.evaluations < 1:
            raise AutopruneError("--evaluations must be at least 1")
        if self.finalists < 0:
            raise AutopruneError(f"--finalists must be at least 0, got {self.finalists}")
        if self.workers < 1:
            raise AutopruneError("--workers must be at least 1")
        if self.steps_per_episode < 1 or not 2 <= self.rollout <= MAX_ROLLOUT:
            raise AutopruneError(f"--steps-per-episode must be >= 1 and --rollout in [2, {MAX_ROLLOUT}]")
        if not 0 <= self.seed < 2**32:
            raise AutopruneError(f"--seed must be in [0, 2**32), got {self.seed}")
        if not 0 <= self.learning_rate < math.inf:  # 0 freezes the policy: the `rl-frozen` ablation
            raise AutopruneError(f"--learning-rate must be a finite number >= 0, got {self.learning_rate}")
        if not 0 < self.tau < math.inf:
            raise AutopruneError(f"--tau must be a positive finite number, got {self.tau}")
        if not 0 <= self.finetune_epochs < math.inf:
            raise AutopruneError(f"--finetune-epochs must be a finite number >= 0, got {self.finetune_epochs}")
        if not 0 <= self.gpus_per_worker < math.inf:
            raise AutopruneError(f"--gpus-per-worker must be a finite number >= 0, got {self.gpus_per_worker}")

    def budgets(self) -> dict[str, float]:
        """The single-target budgets that are set (none when `targets` is given), by resource name."""
        if self.targets:
            return {}
        values = (("flops", self.target_flops), ("params", self.target_params), ("latency", self.target_latency))
        return {k: v for k, v in values if v is not None}

    def uses_latency(self) -> bool:
        """Whether the search needs a latency table."""
        return self.target_latency is not None or bool(self.targets and self.target_resource == "latency")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> SearchConfig:
        """The config of `to_dict`'s document; unknown keys are dropped, wrong types raise AutopruneError."""
        if not isinstance(doc, dict) or not isinstance(doc.get("problem", {}), dict):
            raise AutopruneError("a search config must be a JSON object with a `problem` object")
        doc = dict(doc)
        problem = dict(doc.pop("problem", {}))
        if isinstance(problem.get("ignore"), list):
            problem["ignore"] = tuple(problem["ignore"])
        if isinstance(doc.get("targets"), list):
            doc["targets"] = tuple(doc["targets"])
        return cls(problem=_build(ProblemConfig, problem), **_known(cls, doc))

    def save(self, path: Path) -> None:
        """Write the config as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path) -> SearchConfig:
        """Read and validate a config written by `save`; AutopruneError (one line) when missing or corrupt."""
        try:
            config = cls.from_dict(json.loads(path.read_text()))
            config.validate()
        except FileNotFoundError:
            raise AutopruneError(f"{path.parent} is not a run directory (no config.json)") from None
        except OSError as exc:
            raise AutopruneError(f"cannot read {path}: {exc.strerror}") from None
        except (ValueError, RecursionError) as exc:  # JSON and UTF-8 decoding errors are ValueErrors
            raise AutopruneError(f"{path} is corrupt ({one_line(exc)[:200]}); {_START_ANEW}") from None
        except AutopruneError as exc:
            raise AutopruneError(f"{path} is corrupt ({exc}); {_START_ANEW}") from None
        return config


_START_ANEW = "the run cannot be resumed: start a new one with another --out, or remove this folder"


def _known(cls: type, doc: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in doc.items() if k in names}


def _build(cls: type, doc: dict[str, Any]) -> Any:
    unknown = sorted(set(doc) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise AutopruneError(f"unknown {cls.__name__} field {unknown[0]!r}")
    return cls(**doc)
