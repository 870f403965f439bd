"""Parallel evaluation on Ray actors: a 2-worker search, a worker killed mid-search, and in-flight redo."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from autoprune.constraints import Constraints
from autoprune.distributed.cluster import ensure_ray
from autoprune.distributed.vec_env import RayVecEnv, SearchEnvFactory
from autoprune.plan import Plan
from autoprune.problem import ProblemConfig
from autoprune.search.config import SearchConfig
from autoprune.search.runner import resume_search, run_search

TINY = ProblemConfig(eval_samples=100, device="cpu")


@pytest.fixture(scope="module")
def local_ray(cache_dir):
    """One local Ray for the module (the cache is set first, so actors share the trained default model).

    The driver's PPO updates run on one torch thread: the actors hold both CPUs, and two threads on a busy
    2-core machine run many times slower than one.
    """
    from autoprune.problem import load_problem

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    load_problem(TINY)  # trains and caches the default model once, before any actor needs it
    assert ensure_ray(num_cpus=2)
    yield
    ray.shutdown()
    torch.set_num_threads(threads)


def rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_search_with_two_workers_survives_a_killed_worker(local_ray, tmp_path: Path, caplog) -> None:
    out = tmp_path / "run"
    config = SearchConfig(problem=TINY, evaluations=20, rollout=4, workers=2, out=str(out))
    killed: list[str] = []

    def kill_one_worker() -> None:
        # once both actors have recorded evaluations (the search scores its start plans before they exist)
        deadline = time.monotonic() + 300
        before = None
        while time.monotonic() < deadline and not killed:
            names = [n for n in ray.util.list_named_actors() if n.startswith("autoprune-env-")]
            recorded = len(rows(out)) if (out / "metrics.csv").exists() else 0
            if len(names) == 2 and before is None:
                before = recorded
            elif len(names) == 2 and recorded >= before + 2:
                ray.kill(ray.get_actor(sorted(names)[0]), no_restart=True)
                killed.append(sorted(names)[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    with caplog.at_level(logging.WARNING, logger="autoprune.distributed.vec_env"):
        metrics = run_search(config, progress=False)
    killer.join(timeout=5)

    assert killed, "the search ended before a worker could be killed"
    assert any("died" in r.getMessage() and "replaced" in r.getMessage() for r in caplog.records)
    recorded = rows(out)
    assert [int(r["evaluation"]) for r in recorded] == list(range(1, 21))
    plan = Plan.load(out / "plan.json")
    assert plan.achieved["flops_ratio"] <= 0.5 + 1e-9
    assert metrics["evaluations"] == 20
    assert max(float(r["score"]) for r in recorded) == pytest.approx(metrics["search_val_acc_best"], abs=1e-6)
    assert not [n for n in ray.util.list_named_actors() if n.startswith("autoprune-env-")], "actors left behind"


def test_killed_actor_is_replaced_and_its_in_flight_step_redone(local_ray) -> None:
    factory = SearchEnvFactory(TINY, Constraints(flops=0.5))
    vec = RayVecEnv([factory, factory], num_cpus=1)
    try:
        vec.seed(0)
        vec.reset()
        rng = np.random.default_rng(0)
        actions = lambda: rng.integers(0, 2, size=(2, vec.action_space.n))  # noqa: E731
        for _ in range(2):
            vec.step(actions())
        states = vec.get_state()
        assert [s["evaluations"] for s in states] == [2, 2]
        first_pids = list(vec.pids)

        # ray.kill while both evaluations are in flight; then a SIGKILL of the other actor's process.
        vec.step_async(actions())
        ray.kill(vec._actors[0], no_restart=False)
        _, _, _, infos = vec.step_wait()
        assert vec.replacements == 1 and vec.pids[0] != first_pids[0]
        assert [i["evaluations"] for i in infos] == [3, 3]  # restored at 2, the lost evaluation redone once

        vec.step_async(actions())
        os.kill(vec.pids[1], signal.SIGKILL)
        _, _, _, infos = vec.step_wait()
        assert vec.replacements == 2 and vec.pids[1] != first_pids[1]
        assert [i["evaluations"] for i in infos] == [4, 4]

        # The global best reaches every env (it is handed over before each step).
        vec.step(actions())
        bests = vec.get_attr("best_score")
        assert bests[0] == bests[1] == vec.best_score
        assert vec.best_score == max(s["best_score"] for s in vec.get_state())
    finally:
        vec.close()


def test_two_worker_search_killed_and_resumed_records_each_evaluation_once(local_ray, tmp_path: Path) -> None:
    out = tmp_path / "run"
    address = ray.get_runtime_context().gcs_address
    args = ["search", "--address", address, "--workers", "2", "--evaluations", "24", "--rollout", "4"]
    exe = Path(sys.executable).with_name("autoprune")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "OMP_NUM_THREADS": "1"}  # token: in ~/.ray/auth_token
    proc = subprocess.Popen(
        [str(exe), *args, "--eval-samples", "100", "--device", "cpu", "--quiet", "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    state_path = out / "checkpoint" / "state.json"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if state_path.exists() and len(rows(out)) >= 5:
                state = json.loads(state_path.read_text())
                if isinstance(state.get("env"), list):
                    break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    state = json.loads(state_path.read_text())
    # Checkpoints follow the scored start plans (24 evaluations are too few for the sensitivity sweep: the
    # structural rule and the global ranking) and then each 4-evaluation update.
    assert len(state["env"]) == 2 and (state["evaluations"] - 2) % 4 == 0
    assert 1 <= state["evaluations"] < len(rows(out))  # evaluations after the checkpoint are to be redone

    metrics = resume_search(out, progress=False)
    assert [int(r["evaluation"]) for r in rows(out)] == list(range(1, 25))
    assert metrics["evaluations"] == 24
    assert Plan.load(out / "plan.json").achieved["flops_ratio"] <= 0.5 + 1e-9
