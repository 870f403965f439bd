"""Shared test fixtures: where the shared data lives, and small helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`../shared` beside the checkout; tests that need it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip("shared data (../shared) not present")
    return SHARED


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the whole session, so the default digits model trains once."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["AUTOPRUNE_CACHE"] = str(path)
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run the installed `autoprune` console script as a user would."""
    exe = Path(sys.executable).with_name("autoprune")
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, cwd=cwd, env=full_env, timeout=timeout, check=False
    )


def resume_finished_copy(finished: Path, run: Path, outputs: tuple[str, ...]) -> Path:
    """A copy of a finished search at `run` with its final `outputs` deleted, resumed by the CLI (which must
    succeed): the run's finalisation redone from its checkpoint."""
    shutil.copytree(finished, run)
    for name in outputs:
        (run / name).unlink()
    result = run_cli("search", "--resume", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    return run
