"""Plan files a user may be handed: size and nesting caps, bounded indices, and plans that cannot run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from autoprune.constraints import Constraints, project
from autoprune.errors import AutopruneError
from autoprune.graph import build_channel_graph
from autoprune.models import build_model
from autoprune.plan import MAX_BYTES, Plan


@pytest.fixture(scope="module")
def digits():
    """The (untrained) digits CNN and its plan at 50% FLOPs, as a JSON document."""
    torch.manual_seed(0)
    model = build_model("digits_cnn").eval()
    graph = build_channel_graph(model, torch.zeros(1, 1, 8, 8), model_name="digits_cnn")
    plan = Plan.from_mask(model, graph, project(graph, graph.full_mask(), Constraints(flops=0.5)))
    return model, plan.to_dict()


def refused(doc_or_text, tmp_path: Path, model=None) -> str:
    """The one-line error of loading (and applying to `model`) a plan file holding `doc_or_text`."""
    path = tmp_path / "plan.json"
    if isinstance(doc_or_text, bytes):
        path.write_bytes(doc_or_text)
    else:
        path.write_text(doc_or_text if isinstance(doc_or_text, str) else json.dumps(doc_or_text))
    with pytest.raises(AutopruneError) as excinfo:
        plan = Plan.load(path)
        plan.apply(model)
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_valid_plan_applies_and_runs(digits, tmp_path) -> None:
    model, doc = digits
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    pruned = Plan.load(path).apply(model)
    assert pruned(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert not pruned.training and sum(p.numel() for p in pruned.parameters()) < sum(
        p.numel() for p in model.parameters()
    )


def test_apply_keeps_the_training_mode(digits) -> None:
    model, doc = digits
    pruned = Plan.from_dict(doc).apply(copy.deepcopy(model).train())
    assert pruned.training


def test_conv_and_batchnorm_keeping_different_channels(digits, tmp_path) -> None:
    model, doc = digits
    doc = copy.deepcopy(doc)
    doc["modules"]["features.1"]["out"] = doc["modules"]["features.1"]["out"][:-1]  # the BN of features.0
    assert "cannot run" in refused(doc, tmp_path, model)


@pytest.mark.parametrize("side", ["out", "in"])
def test_huge_indices(digits, tmp_path, side) -> None:
    model, doc = digits
    doc = copy.deepcopy(doc)
    name = next(n for n, sides in doc["modules"].items() if side in sides)
    doc["modules"][name][side] = [0, 10**30]
    assert f"modules/{name}/{side}" in refused(doc, tmp_path, model)


def test_huge_input_shape(digits, tmp_path) -> None:
    model, doc = digits
    doc = copy.deepcopy(doc)
    doc["model"]["input_shape"] = [3, 10**30, 1]
    assert "input_shape" in refused(doc, tmp_path, model)
    doc["model"]["input_shape"] = [3, 2**16, 2**16]
    assert "larger than any it runs" in refused(doc, tmp_path, model)


def test_deep_nesting(digits, tmp_path) -> None:
    model, doc = digits
    assert "not valid JSON" in refused("[" * 100_000 + "]" * 100_000, tmp_path, model)
    nested: list = []
    for _ in range(40):
        nested = [nested]
    doc = copy.deepcopy(doc)
    doc["model"]["structure"][0][2] = nested
    assert "nests deeper than" in refused(doc, tmp_path, model)


def test_oversized_file_is_not_parsed(digits, tmp_path) -> None:
    model, doc = digits
    text = json.dumps(doc)
    padding = " " * (MAX_BYTES - len(text) + 1)
    assert "larger than 16 MiB" in refused(text + padding, tmp_path, model)


@pytest.mark.parametrize("content", [b"\xff\xfe{}", b"", b"null", b"[1, 2]", b'{"format": "autoprune-plan"}'])
def test_garbage_files(digits, tmp_path, content) -> None:
    model, _ = digits
    refused(content, tmp_path, model)
