"""Model names the CLI and library accept, and loading of trained weights into them.

A model is named in one of three ways: a built-in name (`resnet56`), `pkg.module:factory` for the user's
own code, or `torchvision:<name>` when torchvision is installed. Weights are loaded with `weights_only=True`
unless the user says they trust the file.
"""

from __future__ import annotations

import importlib
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.factory import accepted_kwargs, resolve_factory
from autoprune.models.cifar_resnet import resnet20, resnet32, resnet44, resnet56, resnet110
from autoprune.models.digits_cnn import digits_cnn
from autoprune.models.mobilenetv2 import mobilenet_v2
from autoprune.models.vgg import vgg16_bn


@dataclass(frozen=True)
class ModelSpec:
    """A built-in model."""

    name: str
    """Name accepted by `build_model` and the CLI's `--model`."""
    factory: Callable[..., nn.Module]
    """Builds a freshly initialised model; takes `num_classes`."""
    input_shape: tuple[int, int, int]
    """Shape (C, H, W) of one input sample."""
    default_dataset: str
    """Name of the dataset the model is meant for ("cifar10" or "digits")."""


_CIFAR = (3, 32, 32)
MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("resnet20", resnet20, _CIFAR, "cifar10"),
        ModelSpec("resnet32", resnet32, _CIFAR, "cifar10"),
        ModelSpec("resnet44", resnet44, _CIFAR, "cifar10"),
        ModelSpec("resnet56", resnet56, _CIFAR, "cifar10"),
        ModelSpec("resnet110", resnet110, _CIFAR, "cifar10"),
        ModelSpec("vgg16_bn", vgg16_bn, _CIFAR, "cifar10"),
        ModelSpec("mobilenet_v2", mobilenet_v2, _CIFAR, "cifar10"),
        ModelSpec("digits_cnn", digits_cnn, (1, 8, 8), "digits"),
    ]
}
"""The built-in models by name."""

_MAX_KEYS_SHOWN = 3
MAX_CLASSES = 100_000
"""Most outputs a classifier may be built with (more is a typo, and its last layer would not fit in memory)."""


def model_spec(name: str) -> ModelSpec | None:
    """Returns the spec of a built-in model, or None for a user or torchvision model."""
    return MODELS.get(name)


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """Builds a freshly initialised model.

    Args:
        name: a built-in name (see `MODELS`), `pkg.module:factory` (the factory is called with `num_classes`
            if it takes that argument, else with none), or `torchvision:<name>` (no pretrained weights).
        num_classes: number of outputs of the classifier.

    Returns:
        The model, in training mode as built.

    Raises:
        AutopruneError: the name is unknown, the module cannot be imported, the factory gives no nn.Module, or
            `num_classes` is not a positive integer.
    """
    if type(num_classes) is not int or not 1 <= num_classes <= MAX_CLASSES:
        raise AutopruneError(f"--num-classes must be an integer in [1, {MAX_CLASSES}], got {num_classes!r:.40}")
    if name in MODELS:
        return MODELS[name].factory(num_classes=num_classes)
    if name.startswith("torchvision:"):
        return _build_torchvision(name.removeprefix("torchvision:"), num_classes)
    if ":" in name:
        return _build_from_factory(name, num_classes)
    raise AutopruneError(
        f"unknown model {name!r}; use one of {', '.join(MODELS)}, "
        "'pkg.module:factory' for your own model, or 'torchvision:<name>'"
    )


def _build_from_factory(name: str, num_classes: int) -> nn.Module:
    factory = resolve_factory(name, "model")
    model = factory(**accepted_kwargs(factory, {"num_classes": num_classes}))
    if not isinstance(model, nn.Module):
        raise AutopruneError(f"{name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _build_torchvision(arch: str, num_classes: int) -> nn.Module:
    try:
        models = importlib.import_module("torchvision.models")
    except ImportError as e:
        raise AutopruneError(
            f"model 'torchvision:{arch}' needs torchvision, which is not installed; pip install torchvision"
        ) from e
    available = models.list_models()
    if arch not in available:
        raise AutopruneError(f"torchvision has no model {arch!r}; choose one of {', '.join(available)}")
    return models.get_model(arch, weights=None, num_classes=num_classes)


def load_weights(model: nn.Module, path: str | Path, trust_pickle: bool = False) -> nn.Module:
    """Loads trained weights into `model` in place, with every key and shape checked.

    Args:
        model: the model the weights belong to, as built by `build_model`.
        path: a `torch.save` file holding a state dict, a dict whose `state_dict` or `model` entry holds
            one, or (only with `trust_pickle`) a whole pickled nn.Module. A DataParallel `module.` prefix is
            removed.
        trust_pickle: allow unpickling arbitrary Python objects, which can run code from the file.

    Returns:
        `model`, with the weights loaded.

    Raises:
        AutopruneError: the file is missing, unreadable, needs `trust_pickle`, or does not fit `model`.
    """
    path = Path(path)
    if not path.is_file():
        raise AutopruneError(f"no weights file at {path}; check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if trust_pickle or "Weights only load failed" not in str(e):
            raise AutopruneError(_unreadable(path, e)) from e
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(e))
        what = f" (such as {found.group(1)})" if found else ""
        raise AutopruneError(
            f"{path} holds pickled Python objects{what} that are not loaded by default; pass "
            "--trust-pickle (trust_pickle=True) only if you trust the file, "
            "or re-save it as torch.save(model.state_dict(), path)"
        ) from e
    except (ImportError, AttributeError) as e:
        raise AutopruneError(
            f"{path} needs code that cannot be imported ({_summary(e)}); make the model's module importable "
            "or re-save the file as a state dict"
        ) from e
    except Exception as e:
        raise AutopruneError(_unreadable(path, e)) from e
    state = _find_state_dict(obj, path)
    _check_fits(model, state, path)
    model.load_state_dict(state, strict=True)
    return model


def _unreadable(path: Path, e: Exception) -> str:
    return (
        f"cannot read {path} ({_summary(e)}): it is truncated, corrupt or not a torch.save file; "
        "re-download or re-save it"
    )


def _find_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    elif isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                obj = inner.state_dict()
                break
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AutopruneError(
            f"{path} holds no state dict (found {_describe(obj)}); save one with torch.save(model.state_dict(), path)"
        )
    if all(isinstance(k, str) and k.startswith("module.") for k in obj):
        return {k.removeprefix("module."): v for k, v in obj.items()}
    return dict(obj)


def _check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    # BatchNorm fills in a missing `num_batches_tracked` itself (older checkpoints lack it).
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(v.shape)} in file vs {tuple(expected[k].shape)} in model"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = [
        f"{label}: {_first_few(keys)}"
        for label, keys in [
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatch", mismatched),
        ]
        if keys
    ]
    if problems:
        raise AutopruneError(
            f"weights in {path} do not fit {type(model).__name__} ({'; '.join(problems)}); "
            "they are for a different model: choose the model they were trained as"
        )


def _first_few(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_KEYS_SHOWN])
    more = len(items) - _MAX_KEYS_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def _describe(obj: object) -> str:
    if isinstance(obj, Mapping):
        return f"a dict with keys {_first_few([str(k) for k in obj])}" if obj else "an empty dict"
    return f"a {type(obj).__name__}"


def _summary(e: BaseException) -> str:
    """The exception's type and first sentence, on one line."""
    lines = str(e).strip().splitlines()
    first = lines[0].split(". ")[0].rstrip(".") if lines else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
