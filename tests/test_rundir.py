"""One writer per run directory (a real flock, two real processes), created only once setup succeeded."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import run_cli

from autoprune.search.rundir import RunDir


def assert_one_line(result, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def rows(run: Path) -> int:
    with open(run / "metrics.csv", newline="") as f:
        return len(list(csv.reader(f))) - 1


def test_second_writer_is_refused_while_a_search_runs(tmp_path, cache_dir) -> None:
    run = tmp_path / "run"
    exe = Path(sys.executable).with_name("autoprune")
    args = ["search", "--evaluations", "5000", "--eval-samples", "100", "--quiet", "--out", str(run)]
    proc = subprocess.Popen([str(exe), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not ((run / "metrics.csv").exists() and rows(run) >= 1):
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline
            time.sleep(0.2)
        assert_one_line(run_cli("search", "--resume", str(run), "--quiet"), "in use by another autoprune process")
        assert_one_line(run_cli("search", "--quiet", "--out", str(run)), "already holds a run")
        assert proc.poll() is None, "the running search was not disturbed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with RunDir(run).locked():  # the kernel released the killed writer's lock
        pass


def test_new_run_refused_while_another_process_holds_its_directory(tmp_path, cache_dir) -> None:
    """The lock also covers a new run whose --out another process holds (between its setup and config.json)."""
    run = tmp_path / "run"
    with RunDir(run).locked():
        result = run_cli("search", "--evaluations", "2", "--quiet", "--out", str(run))
    assert_one_line(result, "in use by another autoprune process")
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


def test_setup_errors_leave_nothing_behind(tmp_path, cache_dir) -> None:
    run = tmp_path / "run"
    for args in (["--target-flops", "0.001"], ["--model", "resnet20", "--dataset", "cifar10"]):
        result = run_cli("search", "--evaluations", "2", "--quiet", *args, "--out", str(run))
        assert result.returncode == 2, result.stderr
        assert not run.exists(), args
    result = run_cli("baseline", "--method", "l1-uniform", "--eval-samples", "100", "--quiet", "--out", str(run))
    assert result.returncode == 0, result.stderr
    assert (run / "plan.json").exists()


def test_resume_of_a_missing_directory_creates_nothing(tmp_path) -> None:
    run = tmp_path / "nothing"
    assert_one_line(run_cli("search", "--resume", str(run)), "not a run directory")
    assert not run.exists()
    assert os.listdir(tmp_path) == []
