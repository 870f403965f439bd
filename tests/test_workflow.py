"""After a search, as a user goes on: resume of a finished run, apply with recovery, export, report (CLI)."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from click.testing import CliRunner
from conftest import run_cli

from autoprune.cli import cli
from autoprune.data import load_dataset
from autoprune.export import load_pruned
from autoprune.html_report import sweep_curves
from autoprune.models import build_model
from autoprune.nn import CUSTOM_PRUNERS
from autoprune.plan import Plan
from autoprune.training import evaluate, pretrained_default


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache_dir) -> tuple[Path, str]:
    """A finished search on the default digits model, and what it printed on stderr."""
    out = tmp_path_factory.mktemp("workflow") / "run"
    result = run_cli("search", "--evaluations", "6", "--rollout", "4", "--eval-samples", "200", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out, result.stderr


def one_line_error(result) -> str:
    assert getattr(result, "returncode", getattr(result, "exit_code", None)) == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_every_step_after_the_search_says_what_it_does(run) -> None:
    _, stderr = run
    for step in ("evaluating the unpruned model", "evaluating the pruned model", "recalibrating BN statistics",
                 "evaluating the recalibrated model", "re-fitting the layers (least squares",
                 "evaluating the reconstructed model", "writing plan.json"):  # fmt: skip
        assert step in stderr


def test_summary_says_cost_finetuning_and_the_validation_caveat(run) -> None:
    out, _ = run
    summary = (out / "summary.md").read_text()
    assert re.search(r"Search: 6 evaluations, [\d,]+ images forwarded, [\d.]+ s searching", summary)
    assert "Fine-tuned: no." in summary
    assert "weights trained on the whole training split" in summary
    assert "| + BN recalibration |" in summary and "| + reconstruction |" in summary
    assert re.search(r"Reconstruction: (re-fitted|skipped: it lowered validation accuracy)", summary)


def test_metrics_csv_has_lf_line_endings_only(run) -> None:
    data = (run[0] / "metrics.csv").read_bytes()
    assert b"\r" not in data and data.count(b"\n") == 7  # header + 6 evaluations


def test_resume_of_a_finished_run_shows_its_results_and_redoes_nothing(run) -> None:
    out, _ = run
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    result = run_cli("search", "--resume", str(out))
    assert result.returncode == 0, result.stderr
    assert "is a finished run" in result.stderr and "evaluating" not in result.stderr
    accuracy = Plan.load(out / "plan.json").metrics["test_acc_recalibrated"]
    assert f"+ BN recalibration {accuracy:.2%}" in result.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == before


def test_apply_with_a_dataset_gives_the_runs_recovered_model(run, tmp_path) -> None:
    out, _ = run
    small, onnx_path = tmp_path / "small.pt", tmp_path / "small.onnx"
    result = run_cli("apply", "--plan", str(out / "plan.json"), "--dataset", "digits", "--out", str(small),
                     "--onnx", str(onnx_path))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "recalibrating BN statistics" in result.stderr and "re-fitting the layers" in result.stderr
    digits = load_dataset("digits")
    test = digits.batches("test", 500)
    ours, runs = evaluate(load_pruned(small), test), evaluate(load_pruned(out / "pruned.pt"), test)
    assert abs(ours - runs) <= 0.01  # the target: within 1 point of the run's pruned.pt
    assert f"+ reconstruction {ours:.2%}" in result.stdout  # what was written is the last stage's model
    raw = tmp_path / "raw.pt"
    assert run_cli("apply", "--plan", str(out / "plan.json"), "--out", str(raw)).returncode == 0
    assert evaluate(load_pruned(raw), test) < ours  # BN statistics of the unpruned model no longer fit

    import onnx
    from onnx.reference import ReferenceEvaluator

    x = test[0][0][:8]
    (logits,) = ReferenceEvaluator(onnx.load(str(onnx_path))).run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(logits), load_pruned(small)(x), atol=1e-4)


def test_apply_refuses_a_model_without_weights_unless_random_init(tmp_path) -> None:
    model = build_model("resnet20").eval()
    from autoprune.constraints import Constraints, project
    from autoprune.graph import build_channel_graph

    graph = build_channel_graph(model, torch.zeros(1, 3, 32, 32), model_name="resnet20")
    plan = Plan.from_mask(model, graph, project(graph, graph.full_mask(), Constraints(flops=0.5)))
    plan_path = plan.save(tmp_path / "plan.json")
    args = ["apply", "--plan", str(plan_path), "--model", "resnet20", "--out", str(tmp_path / "small.pt")]
    assert "--random-init" in one_line_error(CliRunner().invoke(cli, args))
    assert not (tmp_path / "small.pt").exists()
    result = CliRunner().invoke(cli, [*args, "--random-init", "--quiet"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "small.pt").is_file()


def test_dataset_that_does_not_fit_the_model_is_one_line(tmp_path) -> None:
    weights = tmp_path / "resnet20.pt"
    torch.save(build_model("resnet20").state_dict(), weights)
    args = ["--model", "resnet20", "--weights", str(weights), "--dataset", "digits"]
    line = one_line_error(run_cli("search", *args, "--evaluations", "2", "--out", str(tmp_path / "r")))
    assert "does not take digits images of shape (1, 8, 8)" in line and "takes 3 channels" in line
    result = run_cli("search", "--model", "resnet20", "--dataset", "digits", "--out", str(tmp_path / "r"))
    lines = result.stderr.strip().splitlines()  # no weights: a warning, then the error, one line each
    assert result.returncode == 2 and len(lines) == 2, result.stderr
    assert lines[0].startswith("autoprune: warning: no --weights") and "warnings.warn" not in result.stderr


def test_torch_pruning_replays_the_exported_history(run, cache_dir, tmp_path) -> None:
    out, _ = run
    history = tmp_path / "history.pth"
    result = run_cli("export", "--plan", str(out / "plan.json"), "--to", "torch-pruning", "--out", str(history))
    assert result.returncode == 0, result.stderr
    model, _ = pretrained_default(cache_dir=cache_dir)
    replayed = copy.deepcopy(model)
    dg = tp.DependencyGraph().build_dependency(replayed, example_inputs=torch.zeros(1, 1, 8, 8))
    dg.load_pruning_history(torch.load(history, weights_only=True))
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        gap = (replayed.eval()(x) - Plan.load(out / "plan.json").apply(model)(x)).abs().max().item()
    assert gap <= 1e-4
    assert sum(p.numel() for p in replayed.parameters()) < sum(p.numel() for p in model.parameters())


def test_torch_pruning_replays_a_resnet_plan(tmp_path) -> None:
    """The CIFAR ResNets' own shortcut layer replays with autoprune's custom pruners; JSON histories too."""
    import json

    import numpy as np

    from autoprune.constraints import Constraints, project
    from autoprune.graph import build_channel_graph
    from autoprune.interop import save_history, torch_pruning_history

    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    graph = build_channel_graph(model, torch.zeros(1, 3, 32, 32), model_name="resnet20")
    coins = (np.random.default_rng(0).random(graph.num_decisions) < 0.7).astype(np.int8)
    plan = Plan.from_mask(model, graph, project(graph, coins, Constraints(flops=0.5)))
    path = save_history(torch_pruning_history(plan, model), tmp_path / "history.json")
    replayed = copy.deepcopy(model)
    tp.DependencyGraph().build_dependency(
        replayed, example_inputs=torch.zeros(1, 3, 32, 32), customized_pruners=dict(CUSTOM_PRUNERS)
    ).load_pruning_history(json.loads(path.read_text()))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (replayed.eval()(x) - plan.apply(model)(x)).abs().max().item() <= 1e-4


def test_width_table_lists_every_layer_before_and_after(run, tmp_path) -> None:
    out, _ = run
    table = tmp_path / "widths.csv"
    result = run_cli("export", "--plan", str(out / "plan.json"), "--to", "csv", "--out", str(table))
    assert result.returncode == 0, result.stderr
    lines = table.read_text().splitlines()
    assert lines[0] == "module,type,in_channels,kept_in,out_channels,kept_out"
    plan = Plan.load(out / "plan.json")
    rows = {line.split(",")[0]: line.split(",") for line in lines[1:]}
    for name, sides in plan.modules.items():
        if "out" in sides:
            assert int(rows[name][5]) == len(sides["out"])
    assert any(int(r[5]) < int(r[4]) for r in rows.values())
    bad = ["export", "--plan", str(out / "plan.json"), "--to", "onnx", "--out", str(tmp_path / "x")]
    assert "--to" in one_line_error(CliRunner().invoke(cli, bad))


PNG = b"\x89PNG\r\n\x1a\n"


def test_report_draws_a_run_into_one_self_contained_page(run, tmp_path) -> None:
    out, _ = run
    result = run_cli("report", str(out), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for name in ("progress.png", "stages.png", "widths.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG)
    page = (tmp_path / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3 and "http" not in page
    assert "+ BN recalibration" in page
    assert "is neither a finished run" in one_line_error(CliRunner().invoke(cli, ["report", str(tmp_path)]))


def test_report_of_a_sweep_compares_every_method(run, tmp_path) -> None:
    out, _ = run
    sweep = tmp_path / "sweep"
    for name in ("rl-f0.5-s0", "rl-f0.5-s1", "random-masks-f0.5-s0"):
        (sweep / "runs" / name).mkdir(parents=True)
        shutil.copy(out / "metrics.csv", sweep / "runs" / name / "metrics.csv")
    (sweep / "sweep.json").write_text("{}")
    assert {k: len(v) for k, v in sweep_curves(sweep).items()} == {
        "random-masks (FLOPs ≤ 0.5)": 1,
        "rl (FLOPs ≤ 0.5)": 2,
    }
    result = run_cli("report", str(sweep))
    assert result.returncode == 0, result.stderr
    assert (sweep / "comparison.png").read_bytes().startswith(PNG)
    assert (sweep / "report.html").read_text().count("data:image/png;base64,") == 1
