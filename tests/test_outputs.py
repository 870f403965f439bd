"""Output paths: a directory where a file goes, a file where a run directory goes, read-only and full targets."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from autoprune.cli import cli
from autoprune.constraints import Constraints, project
from autoprune.graph import build_channel_graph
from autoprune.models import build_model
from autoprune.plan import Plan


def one_line(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def digits_plan(tmp_path_factory):
    """A plan for the digits CNN and the weights it was made from."""
    folder = tmp_path_factory.mktemp("plan")
    torch.manual_seed(0)
    model = build_model("digits_cnn").eval()
    torch.save(model.state_dict(), folder / "w.pt")
    graph = build_channel_graph(model, torch.zeros(1, 1, 8, 8), model_name="digits_cnn")
    plan = Plan.from_mask(model, graph, project(graph, graph.full_mask(), Constraints(flops=0.5)))
    return plan.save(folder / "plan.json"), folder / "w.pt"


def apply_args(digits_plan, *extra: str) -> list[str]:
    plan, weights = digits_plan
    return ["apply", "--plan", str(plan), "--model", "digits_cnn", "--weights", str(weights), *extra]


def test_file_outputs_naming_a_directory(digits_plan, tmp_path) -> None:
    assert "is a directory" in one_line(["info", "--model", "digits_cnn", "--graph-out", str(tmp_path)])
    assert "--out" in one_line(apply_args(digits_plan, "--out", str(tmp_path)))
    line = one_line(apply_args(digits_plan, "--out", str(tmp_path / "x.pt"), "--onnx", str(tmp_path)))
    assert "--onnx" in line and "is a directory" in line
    assert os.listdir(tmp_path) == []  # refused before anything was written


def test_run_directory_naming_a_file(tmp_path) -> None:
    existing = tmp_path / "file"
    existing.write_text("mine")
    assert "is a file" in one_line(["search", "--quiet", "--out", str(existing)])
    assert "is a file, not a folder" in one_line(["search", "--quiet", "--out", str(existing / "run")])
    assert existing.read_text() == "mine"


def test_full_disk_while_writing(tmp_path) -> None:
    assert "No space left" in one_line(["info", "--model", "digits_cnn", "--graph-out", "/dev/full"])


def _without_root_override() -> None:
    """In the child: lose the capabilities that let root write into read-only folders (no-op for other users)."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.skipif(sys.platform != "linux", reason="capabilities are Linux's")
def test_read_only_output_folder(digits_plan, tmp_path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    exe = str(Path(sys.executable).with_name("autoprune"))
    cases = [
        ["info", "--model", "digits_cnn", "--graph-out", str(folder / "g.graphml")],
        apply_args(digits_plan, "--out", str(folder / "x.pt")),
        ["search", "--quiet", "--out", str(folder / "run")],
    ]
    for args in cases:
        result = subprocess.run(
            [exe, *args], capture_output=True, text=True, preexec_fn=_without_root_override, timeout=300, check=False
        )
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert "not writable" in lines[0] or "Permission denied" in lines[0], lines[0]
    assert os.listdir(folder) == []
