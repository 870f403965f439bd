"""Tests for autoprune.models: the built-in architectures, name resolution and weight loading."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.models import MODELS, ModelSpec, build_model, load_weights, model_spec
from autoprune.nn import PadShortcut

SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _assert_one_line(err: pytest.ExceptionInfo[AutopruneError]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", sorted(MODELS))
def test_builtin_builds_and_gives_logits(name: str) -> None:
    spec = model_spec(name)
    assert isinstance(spec, ModelSpec) and spec.name == name
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, *spec.input_shape))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


def test_default_datasets() -> None:
    assert MODELS["digits_cnn"].default_dataset == "digits"
    assert MODELS["digits_cnn"].input_shape == (1, 8, 8)
    assert {s.default_dataset for n, s in MODELS.items() if n != "digits_cnn"} == {"cifar10"}
    assert model_spec("pkg.module:factory") is None


@pytest.mark.parametrize(("name", "blocks", "params_m"), [("resnet20", 3, 0.27), ("resnet56", 9, 0.85)])
def test_cifar_resnet_layout(name: str, blocks: int, params_m: float) -> None:
    model = build_model(name)
    assert round(_param_count(model) / 1e6, 2) == params_m
    keys = set(model.state_dict())
    for stage in (1, 2, 3):
        for part in ("conv1.weight", "bn1.running_mean", "conv2.weight", "bn2.weight"):
            assert f"layer{stage}.{blocks - 1}.{part}" in keys
        assert f"layer{stage}.{blocks}.conv1.weight" not in keys
    assert {"conv1.weight", "bn1.weight", "linear.weight", "linear.bias"} <= keys
    assert model.linear.in_features == 64
    modules = dict(model.named_modules())
    for block in ("layer2.0", "layer3.0"):
        assert isinstance(modules[f"{block}.shortcut"], PadShortcut)
    assert not isinstance(modules["layer1.0.shortcut"], PadShortcut)
    assert not isinstance(modules["layer2.1.shortcut"], PadShortcut)


def test_digits_cnn_has_a_residual_block() -> None:
    model = build_model("digits_cnn")
    block = model.features[-1]
    x = torch.randn(2, 64, 4, 4)
    with torch.no_grad():
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()
    # With the second BN zeroed, only the identity path is left: relu(x).
    torch.testing.assert_close(block.eval()(x), torch.relu(x))


@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
def test_shared_weights_load_strictly(name: str) -> None:
    path = SHARED_MODELS / f"{name}-cifar10jpeg.pt"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    state = torch.load(path, weights_only=True)["state_dict"]
    model = load_weights(build_model(name), path)
    assert set(model.state_dict()) == set(state)
    torch.testing.assert_close(model.linear.weight, state["linear.weight"])
    torch.testing.assert_close(
        model.layer3[-1].bn2.running_var, state[f"layer3.{len(model.layer3) - 1}.bn2.running_var"]
    )


def test_user_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "autoprune_test_factories.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def with_classes(num_classes):
                return nn.Linear(4, num_classes)

            def without_args():
                return nn.Linear(4, 3)

            def not_a_model():
                return "oops"
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("autoprune_test_factories:with_classes", num_classes=5)
    assert isinstance(model, nn.Linear) and model.out_features == 5
    assert build_model("autoprune_test_factories:without_args", num_classes=5).out_features == 3
    with pytest.raises(AutopruneError, match=r"not a torch\.nn\.Module") as err:
        build_model("autoprune_test_factories:not_a_model")
    _assert_one_line(err)
    with pytest.raises(AutopruneError, match="no callable 'missing'"):
        build_model("autoprune_test_factories:missing")


def test_unknown_name_lists_builtins() -> None:
    with pytest.raises(AutopruneError) as err:
        build_model("resnet57")
    message = _assert_one_line(err)
    assert "'resnet57'" in message and "resnet56" in message and "digits_cnn" in message


def test_failing_import_names_module() -> None:
    with pytest.raises(AutopruneError) as err:
        build_model("no_such_pkg_xyz.models:net")
    assert "no_such_pkg_xyz.models" in _assert_one_line(err)


def test_torchvision_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(AutopruneError, match="needs torchvision") as err:
        build_model("torchvision:resnet18")
    _assert_one_line(err)


@pytest.fixture
def resnet20_state() -> dict[str, torch.Tensor]:
    return build_model("resnet20").state_dict()


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "dataparallel"])
def test_load_weights_formats(tmp_path: Path, resnet20_state: dict[str, torch.Tensor], wrap: str) -> None:
    payload = {
        "plain": resnet20_state,
        "state_dict": {"state_dict": resnet20_state, "epoch": 3},
        "model": {"model": resnet20_state},
        "dataparallel": {f"module.{k}": v for k, v in resnet20_state.items()},
    }[wrap]
    path = tmp_path / "w.pt"
    torch.save(payload, path)
    model = load_weights(build_model("resnet20"), str(path))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, resnet20_state[key])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AutopruneError, match="no weights file") as err:
        load_weights(build_model("resnet20"), tmp_path / "absent.pt")
    _assert_one_line(err)


def test_truncated_file(tmp_path: Path, resnet20_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "w.pt"
    torch.save(resnet20_state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AutopruneError, match="truncated, corrupt") as err:
        load_weights(build_model("resnet20"), path)
    _assert_one_line(err)


def test_pickled_model_needs_trust(tmp_path: Path) -> None:
    saved = build_model("resnet20")
    path = tmp_path / "full.pt"
    torch.save(saved, path)
    with pytest.raises(AutopruneError, match="--trust-pickle") as err:
        load_weights(build_model("resnet20"), path)
    assert "only if you trust the file" in _assert_one_line(err)
    model = load_weights(build_model("resnet20"), path, trust_pickle=True)
    torch.testing.assert_close(model.conv1.weight, saved.conv1.weight)
    torch.testing.assert_close(model.linear.bias, saved.linear.bias)


def test_other_model_weights_name_keys(tmp_path: Path, resnet20_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "r20.pt"
    torch.save({"state_dict": resnet20_state}, path)
    with pytest.raises(AutopruneError) as err:
        load_weights(build_model("resnet56"), path)
    message = _assert_one_line(err)
    assert "missing keys: layer1.3." in message and "different model" in message


def test_shape_mismatch_names_key_and_leaves_model(tmp_path: Path, resnet20_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "r20.pt"
    torch.save(resnet20_state, path)
    model = build_model("resnet20", num_classes=100)
    before = model.conv1.weight.detach().clone()
    with pytest.raises(AutopruneError) as err:
        load_weights(model, path)
    message = _assert_one_line(err)
    assert "shape mismatch: linear.weight (10, 64) in file vs (100, 64) in model" in message
    torch.testing.assert_close(model.conv1.weight, before)


def test_file_without_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "acc": 0.9}, path)
    with pytest.raises(AutopruneError, match="holds no state dict") as err:
        load_weights(build_model("resnet20"), path)
    _assert_one_line(err)
