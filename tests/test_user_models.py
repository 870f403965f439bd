"""Models the way users bring them: a factory in a Python file, and the input shape taken from the dataset."""

from __future__ import annotations

import json
import textwrap

import pytest
from conftest import run_cli

from autoprune.errors import AutopruneError
from autoprune.factory import TRUSTED_ENV, trust_file
from autoprune.models import build_model

MODEL_FILE = textwrap.dedent(
    """
    from torch import nn

    def make(num_classes=10):
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
        )

    def broken():
        raise RuntimeError("no")
    """
)


@pytest.fixture
def model_file(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUSTED_ENV, raising=False)
    path = tmp_path / "my_net.py"
    path.write_text(MODEL_FILE)
    return path


def test_file_factory_runs_only_when_trusted(model_file) -> None:
    spec = f"{model_file}:make"
    with pytest.raises(AutopruneError, match="only when named on the command line") as err:
        build_model(spec)
    assert "\n" not in str(err.value)
    trust_file(spec)
    model = build_model(spec, num_classes=7)
    assert model[-1].out_features == 7


def test_file_factory_errors_are_one_line(model_file, tmp_path) -> None:
    missing = f"{tmp_path / 'nope.py'}:make"
    trust_file(missing)
    with pytest.raises(AutopruneError, match="file not found"):
        build_model(missing)
    trust_file(f"{model_file}:absent")
    with pytest.raises(AutopruneError, match="no callable 'absent'"):
        build_model(f"{model_file}:absent")


def test_cli_info_with_file_model_takes_shape_from_dataset(model_file) -> None:
    result = run_cli("info", "--model", f"{model_file}:make", "--dataset", "digits", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["input_shape"] == [1, 8, 8]
    grouped = [g for g in doc["groups"] if "0" in g["modules"]]
    assert grouped and all(g["prunable"] for g in grouped)  # the grouped conv's input group folds, not freezes
    assert 0 < doc["prunable_flops_share"] <= 1
    frozen = [g for g in doc["groups"] if not g["prunable"]]
    assert frozen and all("blocked_flops_share" in g for g in frozen)


def test_cli_info_says_when_input_shape_is_needed(model_file) -> None:
    result = run_cli("info", "--model", f"{model_file}:make")
    assert result.returncode == 2
    assert "--input-shape C,H,W (or --dataset) is needed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
