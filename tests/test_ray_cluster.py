"""The private local Ray of `search --workers N`: loopback only, a 0600 token, and a `ray start` cluster left alone."""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from ray_helpers import LOOPBACK_IPS, listening_sockets, session_members, start_head, stop_session

from autoprune.distributed.cluster import running_cluster

TINY = ["--evaluations", "8", "--rollout", "4", "--eval-samples", "100", "--quiet"]
RAY_VARIABLES = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_TMPDIR")


@pytest.fixture()
def ray_env(tmp_path: Path, cache_dir):
    """An environment with its own HOME (token file) and Ray temp folder (`ray_current_cluster`), no Ray variables.

    The temp folder is short (Ray's socket paths must fit in 107 characters) and removed afterwards.
    """
    home = tmp_path / "home"
    home.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="ap-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k not in RAY_VARIABLES}
    env.update(HOME=str(home), RAY_TMPDIR=ray_tmp, OMP_NUM_THREADS="1")
    yield env
    shutil.rmtree(ray_tmp, ignore_errors=True)


def search(env: dict[str, str], out: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("autoprune")
    command = [str(exe), "search", "--target-flops", "0.5", "--workers", "2", *TINY, "--out", str(out)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_local_ray_of_workers_listens_on_loopback_only(ray_env, tmp_path: Path) -> None:
    """Every socket of the driver, GCS, raylet, agents and actors of a real 2-worker search is on 127.0.0.1."""
    proc = search(ray_env, tmp_path / "run")
    seen: set[tuple[str, str, int]] = set()
    root = psutil.Process(proc.pid)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        seen |= listening_sockets(root)
        time.sleep(0.3)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]

    names = {name for name, _, _ in seen}
    # what we must have watched for the check to mean anything: GCS, raylet, both actors, the agents
    assert {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, names
    assert len({port for name, _, port in seen if "EnvWorker" in name}) >= 2, seen  # both actors' servers
    exposed = sorted(s for s in seen if s[1] not in LOOPBACK_IPS)
    assert not exposed, f"listening beyond loopback: {exposed}"

    token = Path(ray_env["HOME"]) / ".ray" / "auth_token"
    assert token.is_file() and len(token.read_text().strip()) == 64
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


def test_workers_reuse_a_running_ray_start_cluster(ray_env, tmp_path: Path) -> None:
    """`--workers 2` with a `ray start` cluster running: it is joined (one line says so), the cluster lives on; a
    cluster that cannot serve the search (too few CPUs, or no token) leaves a private Ray to start beside it."""
    head_env = {**ray_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    sid = start_head(head_env, extra=["--include-dashboard=false"])
    try:
        recorded = Path(ray_env["RAY_TMPDIR"]) / "ray" / "ray_current_cluster"
        assert recorded.is_file()  # what `ray.init()` would have joined, and crashed on with num_cpus given
        head = set(session_members(sid))

        proc = search(head_env, tmp_path / "run")
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
        notices = [ln for ln in stderr.splitlines() if "`ray start`" in ln]
        assert len(notices) == 1 and "joining" in notices[0], stderr[-3000:]
        assert recorded.read_text().split(":")[-1] in notices[0]  # names the cluster it joined
        assert (tmp_path / "run" / "plan.json").is_file()
        alive = {p for p in head if psutil.pid_exists(p)}
        assert alive == head, "the running cluster lost processes"

        fallback = (
            "from autoprune.distributed.cluster import ensure_ray\n"
            "import ray\n"
            "assert ensure_ray(None, num_cpus=3)\n"  # the head has 2: a private Ray of our own is started
            "ray.shutdown()\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", fallback], env=head_env, capture_output=True, text=True, timeout=180
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "2 CPUs, 3 needed" in result.stderr and "private local Ray" in result.stderr

        # and it is joined on request, by `auto` or by its 127.0.0.1 address (which Ray would turn into the
        # machine's external address, where a loopback head does not listen)
        address = recorded.read_text().strip()
        assert address.startswith("127.0.0.1:")
        join = (
            "import sys, ray\n"
            "from autoprune.distributed.cluster import ensure_ray\n"
            "for where in sys.argv[1:]:\n"
            "    assert not ensure_ray(where)\n"
            "    print(ray.get_runtime_context().gcs_address, ray.cluster_resources()['CPU'])\n"
            "    ray.shutdown()\n"
        )
        env = {**ray_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": head_env["RAY_AUTH_TOKEN"]}
        result = subprocess.run(
            [sys.executable, "-c", join, "auto", address], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.split() == [address, "2.0", address, "2.0"]
    finally:
        stop_session(sid)


def test_stale_cluster_record_is_not_reported(monkeypatch, tmp_path: Path) -> None:
    """A `ray_current_cluster` left by a killed cluster names no running cluster."""
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert running_cluster() is None
