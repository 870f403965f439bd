"""Ray Tune: a sweep killed mid-way and restored with `Tuner.restore`, and a tuned baseline's reports."""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

from autoprune.distributed.cluster import ensure_ray
from autoprune.distributed.sweep import resume_sweep, run_name
from autoprune.distributed.tune import TuneSpec, tune_baseline
from autoprune.plan import Plan
from autoprune.problem import ProblemConfig
from autoprune.search.config import SearchConfig

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def local_ray(cache_dir):
    """One local Ray for the module; the driver (final reports) uses one torch thread, as the trials do."""
    from autoprune.problem import load_problem

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    load_problem(ProblemConfig(eval_samples=100))  # trains and caches the default model before any trial
    assert ensure_ray(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    torch.set_num_threads(threads)


def terminated_trials(experiment: Path) -> int:
    states = sorted(glob.glob(str(experiment / "experiment_state-*.json")))
    return Path(states[-1]).read_text().count('\\"status\\": \\"TERMINATED\\"') if states else 0


def test_sweep_killed_then_restored_finishes_every_trial_once(local_ray, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    exe = Path(sys.executable).with_name("autoprune")
    command = [
        str(exe), "sweep", "--methods", "random-masks", "--seeds", ",".join(map(str, SEEDS)), "--targets", "0.5",
        "--evaluations", "4", "--eval-samples", "100", "--max-concurrent", "1", "--address", local_ray,
        "--verbose", "0", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # the local instance's token is in ~/.ray/auth_token
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    experiment = out / "tune" / "sweep"
    deadline = time.monotonic() + 600  # generous: a loaded 2-core machine once needed more than 240 s
    try:
        while time.monotonic() < deadline and proc.poll() is None and terminated_trials(experiment) < 1:
            time.sleep(0.2)
        assert proc.poll() is None, f"the sweep ended before it could be interrupted: {proc.stderr.read()[-2000:]}"
        proc.kill()  # SIGKILL: Tune gets no chance to tidy up
    finally:
        proc.kill()
        proc.wait()
    done_before = [s for s in SEEDS if (out / "runs" / run_name("random-masks", 0.5, s) / "trial.json").exists()]
    assert done_before, "no trial finished within the deadline before the kill"
    assert len(done_before) < len(SEEDS)
    stamps = {s: (out / "runs" / run_name("random-masks", 0.5, s) / "trial.json").stat().st_mtime for s in done_before}

    rows = resume_sweep(out, verbose=0)

    assert sorted(r["seed"] for r in rows) == list(SEEDS)
    for seed, stamp in stamps.items():  # finished trials are not run again
        assert (out / "runs" / run_name("random-masks", 0.5, seed) / "trial.json").stat().st_mtime == stamp
    for row in rows:
        assert row["evaluations"] == 4 and row["flops_ratio"] <= 0.5 + 1e-9
        assert Plan.load(Path(row["run_dir"]) / "plan.json").metrics["method"] == "random-masks"
    with open(out / "comparison.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(SEEDS)
    summary = (out / "comparison.md").read_text()
    assert "| random-masks | 0.5 | 3 |" in summary and "±" in summary
    assert (out / "comparison.png").read_bytes().startswith(b"\x89PNG")  # the sweep draws its comparison too


def test_tuned_baseline_reports_every_candidate_and_keeps_the_best(local_ray, tmp_path: Path) -> None:
    spec = TuneSpec(
        method="random-search",
        evaluations=3,
        param_space={"seed": {"grid_search": [0, 1]}, "low": {"uniform": [0.0, 0.4]}},
    )
    base = SearchConfig(problem=ProblemConfig(eval_samples=100), out=str(tmp_path / "tuned"))
    metrics = tune_baseline(base, spec, verbose=0)

    progress = sorted(glob.glob(str(tmp_path / "tuned" / "tune" / "baseline" / "*" / "progress.csv")))
    assert len(progress) == 2
    best_scores = []
    for path in progress:
        with open(path, newline="") as f:
            results = list(csv.DictReader(f))
        assert [int(r["evaluation"]) for r in results] == [1, 2, 3]
        best_scores.append(max(float(r["score"]) for r in results))
    assert metrics["search_val_acc_best"] == pytest.approx(max(best_scores))
    assert metrics["trials"] == 2 and metrics["evaluations"] == 6
    plan = Plan.load(tmp_path / "tuned" / "plan.json")
    assert plan.achieved["flops_ratio"] <= 0.5 + 1e-9
    assert json.loads((tmp_path / "tuned" / "tune.json").read_text())["method"] == "random-search"
