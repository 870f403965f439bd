"""The CLI as a user runs it: `info`, `apply`, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli

from autoprune.constraints import Constraints, project
from autoprune.export import load_pruned
from autoprune.graph import build_channel_graph
from autoprune.models import build_model
from autoprune.plan import Plan


@pytest.fixture(scope="module")
def resnet20_plan(tmp_path_factory):
    """A plan for ResNet-20 at 50% FLOPs, and the weights it was made from."""
    folder = tmp_path_factory.mktemp("plan")
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    weights = folder / "resnet20.pt"
    torch.save(model.state_dict(), weights)
    graph = build_channel_graph(model, torch.zeros(1, 3, 32, 32), model_name="resnet20")
    keep = project(graph, graph.full_mask(), Constraints(flops=0.5))
    plan = Plan.from_mask(model, graph, keep, Constraints(flops=0.5), metrics={"val_acc": 0.5})
    path = plan.save(folder / "plan.json")
    return model, weights, path


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_apply_writes_pruned_model_and_onnx(resnet20_plan, tmp_path) -> None:
    model, weights, plan_path = resnet20_plan
    out, onnx_path = tmp_path / "pruned.pt", tmp_path / "pruned.onnx"
    result = run_cli(
        "apply", "--plan", str(plan_path), "--model", "resnet20", "--weights", str(weights),
        "--out", str(out), "--onnx", str(onnx_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    pruned = load_pruned(out)
    x = torch.randn(2, 3, 32, 32)
    plan = Plan.load(plan_path)
    with torch.no_grad():
        assert (pruned(x) - plan.apply(model)(x)).abs().max() < 1e-5
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())

    import onnx
    from onnx.reference import ReferenceEvaluator

    onnx.checker.check_model(str(onnx_path))
    got = ReferenceEvaluator(str(onnx_path)).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, pruned(x).detach().numpy(), atol=1e-4)


def test_plan_for_another_model_is_refused(resnet20_plan, tmp_path) -> None:
    _, weights, plan_path = resnet20_plan
    result = run_cli(
        "apply", "--plan", str(plan_path), "--model", "resnet56", "--weights", str(weights),
        "--out", str(tmp_path / "x.pt"),
    )  # fmt: skip
    assert_one_line_error(result, "resnet20", "made for")


def test_apply_without_weights_is_refused(resnet20_plan, tmp_path) -> None:
    _, _, plan_path = resnet20_plan
    result = run_cli("apply", "--plan", str(plan_path), "--model", "resnet20", "--out", str(tmp_path / "x.pt"))
    assert_one_line_error(result, "--weights")
    assert not (tmp_path / "x.pt").exists()


def test_plan_that_cannot_run_is_refused(resnet20_plan, tmp_path) -> None:
    """Schema-valid and in range module by module, but a conv keeps other channels than its BatchNorm."""
    _, weights, plan_path = resnet20_plan
    doc = json.loads(plan_path.read_text())
    bn = next(n for n, sides in doc["modules"].items() if ".bn" in n and len(sides.get("out", [])) > 1)
    assert bn.replace(".bn", ".conv") in doc["modules"]
    doc["modules"][bn]["out"] = doc["modules"][bn]["out"][:-1]
    bad = tmp_path / "inconsistent.json"
    bad.write_text(json.dumps(doc))
    out = tmp_path / "x.pt"
    result = run_cli("apply", "--plan", str(bad), "--model", "resnet20", "--weights", str(weights), "--out", str(out))
    assert_one_line_error(result, "cannot run")
    assert not out.exists()


def test_truncated_plan(resnet20_plan, tmp_path) -> None:
    _, _, plan_path = resnet20_plan
    bad = tmp_path / "truncated.json"
    bad.write_text(plan_path.read_text()[:500])
    result = run_cli("apply", "--plan", str(bad), "--model", "resnet20", "--out", str(tmp_path / "x.pt"))
    assert_one_line_error(result, "not valid JSON")


def test_wrong_schema_version(resnet20_plan, tmp_path) -> None:
    _, _, plan_path = resnet20_plan
    doc = json.loads(plan_path.read_text())
    doc["schema_version"] = 99
    bad = tmp_path / "v99.json"
    bad.write_text(json.dumps(doc))
    result = run_cli("apply", "--plan", str(bad), "--model", "resnet20", "--out", str(tmp_path / "x.pt"))
    assert_one_line_error(result, "schema version 99")


def test_indices_out_of_range(resnet20_plan, tmp_path) -> None:
    _, _, plan_path = resnet20_plan
    doc = json.loads(plan_path.read_text())
    module = next(iter(doc["modules"]))
    doc["modules"][module]["out"] = [0, 1, 999]
    bad = tmp_path / "range.json"
    bad.write_text(json.dumps(doc))
    _, weights, _ = resnet20_plan
    result = run_cli(
        "apply", "--plan", str(bad), "--model", "resnet20", "--weights", str(weights), "--out", str(tmp_path / "x.pt")
    )  # fmt: skip
    assert_one_line_error(result, module, "[0,")
    assert not (tmp_path / "x.pt").exists()


def test_schema_violation_names_the_place(resnet20_plan, tmp_path) -> None:
    _, _, plan_path = resnet20_plan
    doc = json.loads(plan_path.read_text())
    doc["achieved"]["flops"] = "lots"
    bad = tmp_path / "schema.json"
    bad.write_text(json.dumps(doc))
    result = run_cli("apply", "--plan", str(bad), "--model", "resnet20", "--out", str(tmp_path / "x.pt"))
    assert_one_line_error(result, "achieved/flops")


def test_missing_files_and_unknown_names(tmp_path) -> None:
    result = run_cli("apply", "--plan", str(tmp_path / "none.json"), "--model", "resnet20", "--out", "x.pt")
    assert_one_line_error(result, "not found")
    result = run_cli("info", "--model", "resnet99")
    assert_one_line_error(result, "unknown model", "resnet56", "digits_cnn")
    result = run_cli("info", "--model", "resnet20", "--weights", str(tmp_path / "missing.pt"))
    assert_one_line_error(result, "missing.pt")


def test_info_reports_groups(tmp_path) -> None:
    result = run_cli("info", "--model", "resnet20", "--json", "--graph-out", str(tmp_path / "g.graphml"))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["decisions"] == sum(g["size"] for g in doc["groups"] if g["prunable"])
    assert any(not g["prunable"] and "linear" in g["reason"] for g in doc["groups"])
    assert (tmp_path / "g.graphml").stat().st_size > 0
    text = run_cli("info", "--model", "resnet20")
    assert "not pruned" in text.stdout and "prunable channels" in text.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["search", "--learning-rate", "nan"], "--learning-rate must be a finite number >= 0"),
        (["search", "--seed", "abc"], "'abc' is not a valid integer"),
        (["info", "--num-classes", "0"], "--num-classes must be an integer"),
    ],
)
def test_bad_numbers_as_a_user_types_them(args, fragment, tmp_path) -> None:
    """The real console script (the fuzz suite calls the same CLI in-process): one line, exit code 2."""
    result = run_cli(*args, "--quiet", "--out", str(tmp_path / "run")) if args[0] == "search" else run_cli(*args)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "run").exists()
