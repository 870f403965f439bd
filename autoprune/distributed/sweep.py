"""Sweeps: every method x FLOPs target x seed as one Ray Tune trial, each a full search in its own run directory.

`run_sweep` lays a sweep out as `<out>/runs/<method>-f<target>-s<seed>/` (a complete run directory each),
`<out>/tune/sweep/` (Tune's storage: trial states and results), and the comparison tables written at the end
(`comparison.md`, `comparison.csv`, `comparison_summary.csv`; see `autoprune.distributed.compare`) and
`comparison.png`, every method's best score so far per evaluation (`autoprune.html_report.plot_sweep`).

A trial that is restarted (by `FailureConfig` retries or by `resume_sweep` after an interruption) continues its
run directory with `resume_search`, so an RL trial picks up at its last checkpoint rather than starting over.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoprune.atomic import atomic_write_text
from autoprune.distributed.tune import _absolute, first_error, from_yaml
from autoprune.errors import AutopruneError
from autoprune.search.config import METHODS, SearchConfig

EXPERIMENT = "sweep"


@dataclass
class SweepSpec:
    """The grid of a sweep and how its trials run."""

    methods: list[str] = field(default_factory=lambda: ["rl", "random-masks"])
    """Search methods (`rl` or baseline names)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds of each method/target pair."""
    targets: list[float] = field(default_factory=lambda: [0.5])
    """FLOPs targets (fractions of the unpruned network)."""
    evaluations: int = 200
    """Candidate evaluations per trial."""
    max_concurrent_trials: int | None = None
    """Trials at once (default: as many as the cluster's CPUs allow)."""
    cpus_per_trial: float = 1.0
    """CPUs each trial reserves (and its torch threads); trials with `workers > 1` need their actors' CPUs too."""
    max_failures: int = 1
    """Times Tune restarts a failed trial (it resumes its run directory)."""

    def validate(self) -> None:
        """Raise AutopruneError for settings that cannot work."""
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise AutopruneError(f"unknown method(s) {', '.join(bad) or '(none)'}; use {', '.join(METHODS)}")
        if not self.seeds or not self.targets:
            raise AutopruneError("give at least one seed and one target")
        if any(not 0 < t <= 1 for t in self.targets):
            raise AutopruneError(f"targets must lie in (0, 1], got {self.targets}")
        if self.evaluations < 1 or self.cpus_per_trial <= 0 or self.max_failures < 0:
            raise AutopruneError("evaluations must be at least 1, cpus_per_trial positive, max_failures >= 0")

    @classmethod
    def load(cls, path: str | Path) -> SweepSpec:
        """Read a YAML file of these fields (safe loading; unknown keys are an error)."""
        return from_yaml(cls, path)


def run_name(method: str, target: float, seed: int) -> str:
    """The run directory name of one trial."""
    return f"{method}-f{target:g}-s{seed}"


def run_sweep(base: SearchConfig, spec: SweepSpec, num_cpus: float | None = None, verbose: int = 1) -> list[dict]:
    """Run every method x target x seed of `spec` on `base`'s problem, as Tune trials; write the comparison.

    Args:
        base: problem and search settings shared by all trials; `base.out` is the sweep directory.
        spec: the grid.
        num_cpus: CPUs of a local Ray started here (default: all); unused when joining `base.address`.
        verbose: Tune's console verbosity (0 silent, 1 status, 2 each result).

    Returns:
        One row per trial (see `autoprune.distributed.compare.COLUMNS`).
    """
    spec.validate()
    out = Path(base.out).resolve()
    if (out / "sweep.json").exists():
        raise AutopruneError(f"{out} already holds a sweep; continue it with --resume {out}")
    base = _absolute(dataclasses.replace(base, evaluations=spec.evaluations, out=str(out)))
    base.validate()
    out.mkdir(parents=True, exist_ok=True)
    base.save(out / "config.json")
    (out / "sweep.json").write_text(json.dumps(dataclasses.asdict(spec), indent=1))
    return _fit(base, spec, resume=False, num_cpus=num_cpus, verbose=verbose)


def resume_sweep(out: str | Path, num_cpus: float | None = None, verbose: int = 1) -> list[dict]:
    """Continue an interrupted sweep with `Tuner.restore`: finished trials are kept, the others resume."""
    out = Path(out).resolve()
    if not (out / "sweep.json").exists():
        raise AutopruneError(f"{out} holds no sweep (no sweep.json)")
    spec = SweepSpec(**json.loads((out / "sweep.json").read_text()))
    base = SearchConfig.load(out / "config.json")
    return _fit(base, spec, resume=True, num_cpus=num_cpus, verbose=verbose)


def _fit(base: SearchConfig, spec: SweepSpec, resume: bool, num_cpus: float | None, verbose: int) -> list[dict]:
    from ray import tune

    from autoprune.distributed.cluster import fit_experiment
    from autoprune.distributed.compare import read_rows, write_comparison
    from autoprune.html_report import plot_sweep

    out = Path(base.out)

    def new_tuner(trainable):
        space = {
            "method": tune.grid_search(spec.methods),
            "target": tune.grid_search(spec.targets),
            "seed": tune.grid_search(spec.seeds),
            "base": base.to_dict(),
            "threads": spec.cpus_per_trial,
        }
        return tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent_trials),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=str(out / "tune"),
                verbose=verbose,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            ),
        )

    trainable = tune.with_resources(_sweep_trial, {"cpu": spec.cpus_per_trial})
    grid = fit_experiment(base.address, num_cpus, str(out / "tune"), EXPERIMENT, trainable, resume, new_tuner)
    runs = [(m, t, s, out / "runs" / run_name(m, t, s)) for m in spec.methods for t in spec.targets for s in spec.seeds]
    rows = read_rows(runs)
    if not rows:
        raise AutopruneError(f"no trial of the sweep in {out} finished ({first_error(grid)})")
    write_comparison(rows, out)
    plot_sweep(out)
    if len(rows) < len(runs):
        raise AutopruneError(
            f"{len(runs) - len(rows)} of {len(runs)} trials did not finish ({first_error(grid)}); the comparison in "
            f"{out} covers the rest; rerun them with --resume {out}"
        )
    return rows


def _sweep_trial(params: dict[str, Any]) -> None:
    """One trial: a full search (or the continuation of its run directory), its final metrics reported to Tune."""
    import torch
    from ray import tune

    from autoprune.search.runner import resume_search, run_search

    torch.set_num_threads(max(1, int(params.get("threads", 1))))
    base = SearchConfig.from_dict(params["base"])
    method, target, seed = params["method"], float(params["target"]), int(params["seed"])
    out = Path(base.out) / "runs" / run_name(method, target, seed)
    problem = base.problem
    if problem.device == "auto" and base.gpus_per_worker == 0:
        problem = dataclasses.replace(problem, device="cpu")  # trials reserve no GPU
    config = dataclasses.replace(base, problem=problem, method=method, target_flops=target, seed=seed, out=str(out))
    done = out / "trial.json"
    if done.exists() and (out / "plan.json").exists():
        # Finished before the sweep was killed, but after Tune last saved its state: report it, don't redo it.
        metrics = json.loads((out / "plan.json").read_text())["metrics"]
        wall = float(json.loads(done.read_text())["wall_seconds"])
    else:
        start = time.perf_counter()
        if (out / "config.json").exists():
            metrics = resume_search(
                out,
                progress=False,
                trust_pickle=problem.trust_pickle,
                cache_dir=problem.cache_dir,
                address=base.address,
                code=(problem.model, problem.dataset or ""),
            )  # the sweep's own options, never the trial directory's
        else:
            metrics = run_search(config, progress=False)
        wall = round(time.perf_counter() - start, 2)
        atomic_write_text(done, json.dumps({"wall_seconds": wall}))  # this attempt's wall clock
    tune.report({k: v for k, v in metrics.items() if isinstance(v, int | float)} | {"wall_seconds": wall})
