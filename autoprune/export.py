"""Save, reload and export physically pruned models."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from autoprune.atomic import atomic_write
from autoprune.errors import AutopruneError
from autoprune.models import build_model
from autoprune.plan import Plan

IN_MEMORY = "custom"
"""The model name of plans made for a model given in memory (`autoprune.prune`)."""


def save_pruned(path: str | Path, pruned: nn.Module, plan: Plan, num_classes: int) -> Path:
    """Write the pruned weights with what rebuilds the architecture: the model name and the plan.

    The file loads with `torch.load(path, weights_only=True)`; `load_pruned` rebuilds the module.
    """
    payload = {
        "format": "autoprune-pruned",
        "model": plan.model_name,
        "num_classes": num_classes,
        "plan": plan.to_dict(),
        "state_dict": pruned.state_dict(),
    }
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_pruned(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model written by `save_pruned` (no unpickling of arbitrary objects).

    Args:
        path: the file.
        model: the unpruned model the plan was made for, for a model autoprune cannot build by name (one passed
            to `autoprune.prune` in memory); pruned in place. None builds the plan's model by name.
    """
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AutopruneError(f"pruned model file not found: {path}") from None
    except Exception as exc:
        raise AutopruneError(f"cannot read pruned model {path}: {type(exc).__name__}") from None
    if not isinstance(payload, dict) or payload.get("format") != "autoprune-pruned":
        raise AutopruneError(f"{path} is not a pruned model written by autoprune")
    plan = Plan.from_dict(payload["plan"], source=f"plan inside {path}")
    if model is None and payload["model"] == IN_MEMORY:
        raise AutopruneError(
            f"{path} holds a model pruned in memory: pass its unpruned model, load_pruned(path, model)"
        )
    if model is None:
        model = build_model(payload["model"], num_classes=int(payload["num_classes"]))
    plan.apply(model.cpu(), inplace=True)
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path) -> Path:
    """Export `model` to ONNX with a dynamic batch dimension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return path
