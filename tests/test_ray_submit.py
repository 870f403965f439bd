"""`autoprune submit` against a real token-authenticated Ray head on 127.0.0.1 (started and stopped here)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from autoprune.distributed.job import BEGIN, END, emit, pack
from autoprune.distributed.submit import LogFilter, extract_payload, unpack
from autoprune.export import load_pruned
from autoprune.plan import Plan

TINY = ["--evaluations", "8", "--rollout", "4", "--eval-samples", "100", "--quiet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_members(sid: int) -> list[int]:
    """Processes in session `sid` (the `ray start` we launched and every Ray process it spawned)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    members.append(int(entry))
            except OSError:
                pass
    return members


def stop_session(sid: int, grace: float = 3.0) -> None:
    """Stop our head by its session id: `ray stop` would also stop other Ray instances on this machine."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in session_members(sid):
            with contextlib.suppress(OSError):  # gone meanwhile
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while session_members(sid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not session_members(sid):
            return


@pytest.fixture(scope="module")
def head(tmp_path_factory, cache_dir):
    """A Ray head with the Jobs API on 127.0.0.1 and token auth (its token only in our environment)."""
    temp = tmp_path_factory.mktemp("ray")
    token = secrets.token_hex(16)
    dashboard = free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")  # the job's `python` is this environment's
    command = [
        str(Path(bin_dir) / "ray"), "start", "--head", f"--port={free_port()}", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}", "--num-cpus=2", "--node-ip-address=127.0.0.1", "--include-dashboard=true",
        f"--temp-dir={temp}", f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats",
    ]  # fmt: skip
    start = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = start.communicate(timeout=180)
        assert start.returncode == 0, output.decode()[-3000:]
        yield {"address": f"http://127.0.0.1:{dashboard}", "token": token}
    finally:
        start.kill()
        stop_session(start.pid)


def test_submitted_search_succeeds_and_its_results_come_back(head, tmp_path: Path) -> None:
    download = tmp_path / "results"
    result = run_cli(
        "submit", "--address", head["address"], "--download", str(download),
        "--", "search", "--target-flops", "0.5", "--workers", "2", *TINY,
        env={"RAY_AUTH_TOKEN": head["token"]},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout and BEGIN not in result.stdout  # the payload is not echoed
    for name in ("plan.json", "summary.md", "metrics.csv", "pruned.pt"):
        assert (download / name).is_file(), name
    plan = Plan.load(download / "plan.json")
    assert plan.achieved["flops_ratio"] <= 0.5 + 1e-9
    assert plan.metrics["evaluations"] == 8
    lines = (download / "metrics.csv").read_text().splitlines()
    assert [int(row.split(",")[0]) for row in lines[1:]] == list(range(1, 9))
    assert load_pruned(download / "pruned.pt")(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_failed_job_is_one_line_naming_the_job_and_its_logs(head) -> None:
    env = {"RAY_AUTH_TOKEN": head["token"]}
    result = run_cli("submit", "--address", head["address"], "--", "search", "--dataset", "imagenet", env=env)
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("autoprune: error: job autoprune-") and "unknown dataset" in error
    job_id = error.split()[3]
    assert f"--logs {job_id}" in error

    logs = run_cli("submit", "--address", head["address"], "--logs", job_id, env=env)
    assert logs.returncode == 2 and "unknown dataset 'imagenet'" in logs.stdout


def test_missing_token_is_a_clear_error(head, tmp_path: Path) -> None:
    env = {"RAY_AUTH_TOKEN": "", "HOME": str(tmp_path)}
    result = run_cli("submit", "--address", head["address"], "--logs", "anything", env=env)
    assert result.returncode == 2
    assert "requires token authentication" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_results_payload_round_trips_and_hides_from_the_stream(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.json").write_text('{"a": 1}')
    (run / "tb").mkdir()  # not a result file: stays behind
    payload, notes = pack(run)
    assert not notes

    class Sink(list):
        def write(self, text: str) -> None:
            self.append(text)

        def flush(self) -> None:
            pass

    sink = Sink()
    emit(payload, out=sink)
    log = "before\n" + "".join(sink) + "after\n"
    shown: list[str] = []
    stream = LogFilter(shown.append)
    for i in range(0, len(log), 7):  # chunk boundaries fall inside lines
        stream.feed(log[i : i + 7])
    stream.close()
    assert shown[0] == "before" and shown[-1] == "after" and len(shown) == 3
    files = unpack(extract_payload(log), tmp_path / "out")
    assert [f.name for f in files] == ["plan.json"] and files[0].read_text() == '{"a": 1}'
    assert END in log
