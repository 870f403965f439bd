"""`autoprune search` end to end through the CLI: outputs, plan application, resume after SIGKILL, errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from autoprune.export import load_pruned
from autoprune.plan import Plan

FAST = ["--evaluations", "16", "--rollout", "8", "--quiet", "--eval-samples", "200"]


def metrics_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache_dir) -> Path:
    run = tmp_path_factory.mktemp("search") / "run"
    result = run_cli("search", "--target-flops", "0.5", *FAST, "--out", str(run))
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout
    return run


def test_search_writes_a_complete_run_directory(finished_run: Path) -> None:
    run = finished_run
    for name in ("plan.json", "pruned.pt", "summary.md", "metrics.csv", "config.json", "checkpoint/agent.pt"):
        assert (run / name).exists(), name
    assert any((run / "tb").iterdir())
    plan = Plan.load(run / "plan.json")
    assert plan.achieved["flops_ratio"] <= 0.5 + 1e-9
    assert plan.metrics["evaluations"] == 16
    rows = metrics_rows(run)
    assert [int(r["evaluation"]) for r in rows] == list(range(1, 17))
    assert all(float(r["flops_ratio"]) <= 0.5 + 1e-9 for r in rows)
    assert max(float(r["score"]) for r in rows) == pytest.approx(plan.metrics["search_val_acc_best"], abs=1e-6)
    pruned = load_pruned(run / "pruned.pt")
    assert pruned(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    summary = (run / "summary.md").read_text()
    assert "BN recalibration" in summary and "Kept output channels" in summary


def test_plan_from_search_applies_through_cli(finished_run: Path, cache_dir: Path, tmp_path: Path) -> None:
    weights = cache_dir / "digits_cnn-digits-seed0.pt"
    assert weights.exists()
    out = tmp_path / "applied.pt"
    result = run_cli(
        "apply", "--plan", str(finished_run / "plan.json"), "--model", "digits_cnn", "--weights", str(weights),
        "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    applied = load_pruned(out)
    params = sum(p.numel() for p in applied.parameters())
    assert params == pytest.approx(Plan.load(finished_run / "plan.json").achieved["params"], rel=1e-6)


def test_agent_starts_from_the_best_cheap_plan_and_keeps_the_best(finished_run: Path, tmp_path: Path) -> None:
    firsts = {}
    for method in ("structural", "global-magnitude"):
        result = run_cli(
            "baseline", "--method", method, "--target-flops", "0.5", "--evaluations", "16", "--quiet",
            "--eval-samples", "200", "--out", str(tmp_path / method),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        (firsts[method],) = metrics_rows(tmp_path / method)
    agent = metrics_rows(finished_run)
    # 16 evaluations are too few for the sensitivity sweep: the agent scores the structural rule, then
    # torch-pruning's global ranking (same masks as those baselines), and starts from the better one.
    assert float(agent[0]["score"]) == pytest.approx(float(firsts["structural"]["score"]), abs=1e-6)
    for row, method in zip(agent, ("structural", "global-magnitude"), strict=False):
        assert float(row["flops_ratio"]) == pytest.approx(float(firsts[method]["flops_ratio"]), abs=1e-6)
        assert row["probe"] == "0"
    best_start = max(float(agent[0]["score"]), float(agent[1]["score"]))
    assert Plan.load(finished_run / "plan.json").metrics["search_val_acc_best"] >= best_start - 1e-6


def test_existing_run_directory_is_not_overwritten(finished_run: Path) -> None:
    result = run_cli("search", *FAST, "--out", str(finished_run))
    assert result.returncode == 2
    assert "--resume" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--target-flops", "0.0001"], "infeasible target"),
        (["--dataset", "imagenet"], "unknown dataset"),
        (["--model", "resnet99"], "unknown model"),
        (["--target-flops", "2"], "ratio"),
    ],
)
def test_bad_input_gives_one_line_errors(args, fragment, tmp_path, cache_dir) -> None:
    result = run_cli("search", *FAST, *args, "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_baseline_command(tmp_path, cache_dir) -> None:
    run = tmp_path / "rm"
    result = run_cli("baseline", "--method", "random-masks", "--evaluations", "6", "--quiet", "--out", str(run))
    assert result.returncode == 0, result.stderr
    rows = metrics_rows(run)
    assert len(rows) == 6
    assert Plan.load(run / "plan.json").metrics["method"] == "random-masks"


def test_final_plan_uses_the_budget_the_searched_mask_left(tmp_path, cache_dir) -> None:
    run = tmp_path / "l1"
    result = run_cli("baseline", "--method", "l1-uniform", "--quiet", "--eval-samples", "200", "--out", str(run))
    assert result.returncode == 0, result.stderr
    (searched,) = metrics_rows(run)  # uniform widths fall short of the budget
    plan = Plan.load(run / "plan.json")
    assert float(searched["flops_ratio"]) < plan.achieved["flops_ratio"] <= 0.5 + 1e-9


def test_resume_after_sigkill_loses_and_duplicates_nothing(tmp_path, cache_dir) -> None:
    run = tmp_path / "killed"
    exe = Path(sys.executable).with_name("autoprune")
    args = ["search", "--evaluations", "48", "--rollout", "8", "--eval-samples", "200", "--quiet", "--out", str(run)]
    proc = subprocess.Popen([str(exe), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ)
    state = run / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["evaluations"] >= 8 and len(metrics_rows(run)) >= 12:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(metrics_rows(run))
    assert 12 <= killed_at < 48, "the search must be killed mid-run"
    result = run_cli("search", "--resume", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    rows = metrics_rows(run)
    assert [int(r["evaluation"]) for r in rows] == list(range(1, 49))
    plan = Plan.load(run / "plan.json")
    assert plan.achieved["flops_ratio"] <= 0.5 + 1e-9
    assert plan.metrics["evaluations"] == 48


def test_seeded_search_is_reproducible_on_cpu(tmp_path, cache_dir) -> None:
    runs = []
    for name in ("first", "second"):
        run = tmp_path / name
        result = run_cli("search", *FAST, "--seed", "3", "--out", str(run))
        assert result.returncode == 0, result.stderr
        runs.append([(r["score"], r["flops_ratio"]) for r in metrics_rows(run)])
    assert runs[0] == runs[1]
    assert Plan.load(tmp_path / "first" / "plan.json").mask == Plan.load(tmp_path / "second" / "plan.json").mask
