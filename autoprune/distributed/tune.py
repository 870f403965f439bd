"""Random baselines as Ray Tune experiments: each trial is one seeded run of `random-search` or `random-masks`.

The search space (seeds, and the method's knob: `low` for random-search, `temperature` for random-masks) comes
from a YAML file of search-space settings only (see `ray_configs/tune_random_search.yaml`); `parse_space` maps
its entries onto Tune's sampling functions, nothing is evaluated. Every trial reports each candidate it scores
(`evaluation`, `score`, `best_score`, `flops_ratio`, `params_ratio`), so Tune's storage under
`<out>/tune/baseline` holds the full history; the best mask over all trials is then pruned for real and written
to `<out>` like any run (plan.json, pruned.pt, summary.md) plus `trials.csv`.

An interrupted experiment continues with `resume_tune_baseline(out)` (`Tuner.restore`): finished trials are kept,
unfinished and errored ones run again from their start (their candidates are seeded, so they are the same ones).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autoprune.errors import AutopruneError
from autoprune.search.config import SearchConfig

KNOBS = {"random-search": ("seed", "low"), "random-masks": ("seed", "temperature")}
"""Which trial parameters each tunable baseline takes."""

_SAMPLERS = ("grid_search", "choice", "uniform", "loguniform", "randint")
EXPERIMENT = "baseline"


@dataclass
class TuneSpec:
    """A baseline's Tune experiment: which method, its search space and how trials run."""

    method: str = "random-search"
    """`random-search` or `random-masks`."""
    evaluations: int = 50
    """Candidate evaluations per trial."""
    param_space: dict[str, Any] = field(default_factory=lambda: {"seed": {"grid_search": [0, 1, 2, 3]}})
    """Trial parameters: a value, or one of `{grid_search: [...]}`, `{choice: [...]}`, `{uniform: [lo, hi]}`,
    `{loguniform: [lo, hi]}`, `{randint: [lo, hi]}`."""
    num_samples: int = 1
    """Samples of the space (each grid point is repeated this many times)."""
    max_concurrent_trials: int | None = None
    """Trials at once (default: as many as the cluster's CPUs allow)."""
    cpus_per_trial: float = 1.0
    """CPUs each trial reserves (also its torch threads)."""

    def validate(self) -> None:
        """Raise AutopruneError for settings that cannot work."""
        if self.method not in KNOBS:
            raise AutopruneError(f"Tune runs {' or '.join(KNOBS)}, not {self.method!r}")
        unknown = set(self.param_space) - set(KNOBS[self.method])
        if unknown:
            raise AutopruneError(
                f"{self.method} has no parameter {', '.join(sorted(unknown))}; it takes {', '.join(KNOBS[self.method])}"
            )
        if self.evaluations < 1 or self.num_samples < 1 or self.cpus_per_trial <= 0:
            raise AutopruneError("evaluations and num_samples must be at least 1, cpus_per_trial positive")
        parse_space(self.param_space)

    @classmethod
    def load(cls, path: str | Path) -> TuneSpec:
        """Read a YAML file of these fields (safe loading; unknown keys are an error)."""
        return from_yaml(cls, path)


def from_yaml(cls: type, path: str | Path) -> Any:
    """A dataclass `cls` from the mapping in a YAML file, with one-line errors for unreadable or unknown keys."""
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise AutopruneError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise AutopruneError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise AutopruneError(f"{path} must hold a mapping of settings")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(doc) - names
    if unknown:
        raise AutopruneError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(names)}")
    spec = cls(**doc)
    spec.validate()
    return spec


def parse_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """Map YAML search-space entries onto Tune's samplers (`{uniform: [0, 1]}` -> `tune.uniform(0, 1)`)."""
    from ray import tune

    parsed: dict[str, Any] = {}
    for name, value in space.items():
        if not isinstance(value, Mapping):
            parsed[name] = value
            continue
        if len(value) != 1 or next(iter(value)) not in _SAMPLERS:
            raise AutopruneError(f"parameter {name!r}: use a value or one of {', '.join(_SAMPLERS)}, got {value!r}")
        kind, args = next(iter(value.items()))
        if not isinstance(args, list) or not args or (kind not in ("grid_search", "choice") and len(args) != 2):
            raise AutopruneError(f"parameter {name!r}: {kind} needs a list ({'[lo, hi]' if kind[0] != 'g' else ''})")
        parsed[name] = getattr(tune, kind)(args) if kind in ("grid_search", "choice") else getattr(tune, kind)(*args)
    return parsed


def tune_baseline(
    base: SearchConfig,
    spec: TuneSpec,
    num_cpus: float | None = None,
    verbose: int = 1,
) -> dict[str, Any]:
    """Run `spec` as a Tune experiment on `base`'s problem and budget; write the best mask's run to `base.out`.

    Args:
        base: the problem, constraints and run directory (its `method`, `evaluations` and `seed` are ignored).
        spec: the experiment.
        num_cpus: CPUs of a local Ray started here (default: all); unused when joining `base.address`.
        verbose: Tune's console verbosity (0 silent, 1 status, 2 each result).

    Returns:
        The final metrics (as from a search), plus `trials` and `best_config`.
    """
    spec.validate()
    out = Path(base.out).resolve()
    if (out / "tune.json").exists():
        raise AutopruneError(f"{out} already holds a Tune experiment; continue it with --resume {out}")
    base = _absolute(dataclasses.replace(base, method=spec.method, evaluations=spec.evaluations, out=str(out)))
    out.mkdir(parents=True, exist_ok=True)
    base.save(out / "config.json")
    (out / "tune.json").write_text(json.dumps(dataclasses.asdict(spec), indent=1))
    return _fit(base, spec, resume=False, num_cpus=num_cpus, verbose=verbose)


def resume_tune_baseline(out: str | Path, num_cpus: float | None = None, verbose: int = 1) -> dict[str, Any]:
    """Continue an interrupted `tune_baseline` in `out` with `Tuner.restore`; finished trials are not rerun."""
    out = Path(out).resolve()
    if not (out / "tune.json").exists():
        raise AutopruneError(f"{out} holds no Tune experiment (no tune.json)")
    spec = TuneSpec(**json.loads((out / "tune.json").read_text()))
    base = SearchConfig.load(out / "config.json")
    return _fit(base, spec, resume=True, num_cpus=num_cpus, verbose=verbose)


def _fit(base: SearchConfig, spec: TuneSpec, resume: bool, num_cpus: float | None, verbose: int) -> dict[str, Any]:
    from ray import tune

    from autoprune.distributed.cluster import fit_experiment

    out = Path(base.out)

    def new_tuner(trainable):
        space = {**parse_space(spec.param_space), "base": base.to_dict(), "threads": spec.cpus_per_trial}
        return tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(num_samples=spec.num_samples, max_concurrent_trials=spec.max_concurrent_trials),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(out / "tune"), verbose=verbose),
        )

    trainable = tune.with_resources(_baseline_trial, {"cpu": spec.cpus_per_trial})
    grid = fit_experiment(base.address, num_cpus, str(out / "tune"), EXPERIMENT, trainable, resume, new_tuner)
    return _report(base, spec, grid)


def _baseline_trial(params: dict[str, Any]) -> None:
    """One trial: run the baseline with this trial's parameters, reporting every candidate to Tune."""
    import torch
    from ray import tune

    from autoprune.agents.baselines import random_masks, random_search
    from autoprune.constraints import Constraints
    from autoprune.problem import load_problem

    torch.set_num_threads(max(1, int(params.get("threads", 1))))
    base = SearchConfig.from_dict(params["base"])
    problem_config = base.problem
    if problem_config.device == "auto":
        problem_config = dataclasses.replace(problem_config, device="cpu")  # trials reserve no GPU
    problem = load_problem(problem_config)
    constraints = Constraints(flops=base.target_flops, params=base.target_params)
    latest: dict[str, Any] = {}

    def score(keep):
        latest["keep"] = keep
        return problem.score(keep)

    def on_eval(record: dict[str, float]) -> None:
        if "best_keep" not in latest or record["score"] > latest["best"]:  # the first of equal scores, as Harness
            latest["best"], latest["best_keep"] = record["score"], [int(v) for v in latest["keep"]]
        report = dict(record)
        if record["evaluation"] == base.evaluations:
            report["best_keep"] = latest["best_keep"]
        tune.report(report)

    knobs = {k: params[k] for k in KNOBS[base.method] if k in params}
    search = random_search if base.method == "random-search" else random_masks
    search(problem.graph, constraints, score, base.evaluations, on_eval=on_eval, **knobs)


def _report(base: SearchConfig, spec: TuneSpec, grid: Any) -> dict[str, Any]:
    """Write `trials.csv`, prune the best trial's best mask for real, and return its metrics."""
    import numpy as np

    from autoprune.constraints import Constraints
    from autoprune.problem import load_problem
    from autoprune.search.report import finish

    out = Path(base.out)
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        knobs = {k: result.config.get(k) for k in KNOBS[spec.method] if k in result.config}
        complete = metrics.get("evaluation") == spec.evaluations and result.error is None
        rows.append(
            {
                **knobs,
                "status": "complete" if complete else "incomplete",
                "evaluations": metrics.get("evaluation", 0),
                "best_score": metrics.get("best_score"),
                "trial_dir": result.path,
                "best_keep": metrics.get("best_keep") if complete else None,
            }
        )
    finished = [r for r in rows if r["status"] == "complete"]
    if not finished:
        raise AutopruneError(f"no trial of {out / 'tune' / EXPERIMENT} finished ({first_error(grid)})")
    columns = [k for k in rows[0] if k != "best_keep"]
    with open(out / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    best = max(finished, key=lambda r: r["best_score"])
    problem = load_problem(base.problem)
    constraints = Constraints(flops=base.target_flops, params=base.target_params)
    extra = {
        "evaluations": sum(int(r["evaluations"]) for r in rows),
        "trials": len(rows),
        "trials_complete": len(finished),
        **{f"best_{k}": best[k] for k in KNOBS[spec.method] if k in best},  # plan metrics are scalars
    }
    metrics = finish(
        problem,
        constraints,
        np.asarray(best["best_keep"], dtype=np.int8),
        float(best["best_score"]),
        out,
        method=f"{spec.method} (tune)",
        finetune_epochs=base.finetune_epochs,
        seed=base.seed,
        extra=extra,
        reconstruct=base.reconstruct,
    ).metrics
    return {**metrics, "best_config": {k: best[k] for k in KNOBS[spec.method] if k in best}}


def first_error(grid: Any) -> str:
    """The first trial error of a Tune `ResultGrid`, as one line (\"no error\" when none failed)."""
    for result in grid:
        if result.error is not None:
            cause = getattr(result.error, "cause", None) or result.error
            lines = [ln for ln in str(cause).strip().splitlines() if ln.strip()]
            return f"{type(cause).__name__}: {lines[-1] if lines else ''} (trial {result.path})"
    return "no trial raised an error"


def _absolute(config: SearchConfig) -> SearchConfig:
    """Paths made absolute: Tune runs each trial in its own working directory."""
    p = config.problem
    absolute = {k: str(Path(v).resolve()) for k in ("weights", "data_dir", "cache_dir") if (v := getattr(p, k))}
    return dataclasses.replace(config, problem=dataclasses.replace(p, **absolute))
