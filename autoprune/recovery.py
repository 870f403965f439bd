"""Recover a pruned model's accuracy in named stages (BN recalibration, reconstruction, fine-tuning), measuring
it after each.

`recover` is what both `autoprune apply` and a search's finalisation run. A stage is a `Stage`: a name (the
metrics say `val_acc_<name>`, `test_acc_<name>`), a label for people, and a function that changes the model in
place. Another recovery step slots in as one more `Stage` in the list `recovery_stages` returns; one that may
hurt (as the least-squares re-fit can) names a `verdict` metric, and `recover` undoes it where it lowered
validation accuracy.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoprune.data import DataBundle
from autoprune.masking import recalibrate_bn
from autoprune.reconstruct import refitted
from autoprune.training import evaluate, train

Log = Callable[[str], None]
"""Where progress messages go (one line each)."""

RECALIBRATION_BATCHES = 20
"""Training batches (of `RECALIBRATION_BATCH_SIZE`) that re-estimate BatchNorm statistics after pruning."""
RECALIBRATION_BATCH_SIZE = 128

LABELS = {
    "unpruned": "unpruned",
    "pruned": "pruned",
    "reconstructed": "+ reconstruction",
    "recalibrated": "+ BN recalibration",
    "finetuned": "+ fine-tune",
}
"""How reports name the stages they know; any other stage is shown by its name."""


def stage_label(name: str) -> str:
    """The label of stage `name` in summaries and plots."""
    return LABELS.get(name, name)


def stderr_log(message: str) -> None:
    """Print one progress line on stderr (where it does not mix with results on stdout)."""
    print(f"autoprune: {message}", file=sys.stderr, flush=True)


def quiet(message: str) -> None:
    """A `Log` that drops every message."""


@dataclass(frozen=True)
class Stage:
    """One recovery step, applied to the pruned model in place."""

    name: str
    """Short name: the metrics of the model after it are `<split>_acc_<name>`."""
    run: Callable[[nn.Module, DataBundle, torch.device], dict[str, Any] | None]
    """Called as `run(model, bundle, device)`; changes `model` in place and may return metrics to report."""
    what: str = ""
    """What it does, for progress messages (e.g. "recalibrating BN statistics on 2560 training images")."""
    verdict: str | None = None
    """With a metric name: `recover` keeps what the stage did only where it does not lower accuracy on the
    validation split (measured just before and after it) and otherwise undoes it and says so under this name."""


def recalibration(
    batches: int = RECALIBRATION_BATCHES, batch_size: int = RECALIBRATION_BATCH_SIZE, seed: int = 0
) -> Stage:
    """BatchNorm statistics re-estimated on `batches` shuffled training batches (drawn with `seed`)."""

    def run(model: nn.Module, bundle: DataBundle, device: torch.device) -> None:
        loader = bundle.loader("train", batch_size, shuffle=True, seed=seed, device=device)
        recalibrate_bn(model.to(device), [b for _, b in zip(range(batches), loader, strict=False)])

    return Stage("recalibrated", run, f"recalibrating BN statistics on up to {batches * batch_size} training images")


CALIBRATION_PIXELS = 1024 * 32 * 32
"""The reconstruction's calibration images, in pixels per channel: 1024 CIFAR-sized images (about 1 GB of peak
memory for ResNet-56). They pass through the network as one batch, so larger inputs get fewer images."""


def calibration_images(input_shape: tuple[int, int, int]) -> int:
    """How many training images the reconstruction fits on: `CALIBRATION_PIXELS` worth, between 64 and 1024."""
    return max(64, min(1024, CALIBRATION_PIXELS // (input_shape[-1] * input_shape[-2])))


def calibration_batches(
    bundle: DataBundle, images: int, seed: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The reconstruction's calibration data: `images` shuffled training images (in batches of 64, rounded down),
    drawn with `seed`; fewer images with the same seed are the first of the same draw."""
    loader = bundle.loader("train", 64, shuffle=True, seed=seed + 1, device=device)
    return [b for _, b in zip(range(images // 64), loader, strict=False)]


def reconstruction(original: nn.Module, kept: dict[str, dict[str, list[int]]], seed: int = 0) -> Stage:
    """Least-squares reconstruction (`autoprune.reconstruct`) of the network as cut from `original`.

    It re-fits every conv and linear layer on `calibration_images` training images (1024 of CIFAR's size; on
    ResNet-56 at 50% FLOPs 1024 gave 0.7-0.9 points more test accuracy than 256 on two plans, 2048 at most 0.2
    more than 1024, bench/results/v12/refit_variants.md) and keeps the unpruned model's BN statistics, which fit
    outputs re-fitted to match the unpruned ones (re-estimating them after the re-fit was 0.5-2.1 points worse on
    the test split for the four ResNet-56 plans of bench/results/reconstruction.md). The re-fitted model replaces
    the one it is given only if it is at least as accurate on the validation split (`Stage.verdict`), so the stage
    never lowers validation accuracy; the metric `reconstruction` says which happened.
    """

    def run(model: nn.Module, bundle: DataBundle, device: torch.device) -> dict[str, Any]:
        calibration = calibration_batches(bundle, calibration_images(bundle.input_shape), seed, device)
        net, report = refitted(original.to(device), kept, calibration)
        model.load_state_dict(net.state_dict())
        model.eval()
        return {
            "reconstruction_seconds": round(report.seconds, 2),
            "reconstruction_layers": len(report.layers),
            "reconstruction": "re-fitted",
        }

    return Stage(
        "reconstructed", run, "re-fitting the layers (least squares on training images)", verdict="reconstruction"
    )


def finetuning(epochs: float, seed: int = 0, progress: bool = False, lr: float = 0.02) -> Stage:
    """SGD fine-tuning on the train split for `epochs` (see `autoprune.training.train`)."""

    def run(model: nn.Module, bundle: DataBundle, device: torch.device) -> None:
        train(model, bundle, epochs=epochs, lr=lr, device=device, seed=seed, progress=progress)
        model.eval()

    return Stage("finetuned", run, f"fine-tuning for {epochs:g} epochs")


def recovery_stages(
    recalibrate: bool = True,
    finetune_epochs: float = 0.0,
    seed: int = 0,
    progress: bool = False,
    reconstruct_from: tuple[nn.Module, dict[str, dict[str, list[int]]]] | None = None,
) -> list[Stage]:
    """The default recovery: BN recalibration, reconstruction where `reconstruct_from` gives the unpruned model
    and the plan's kept channels, then fine-tuning when `finetune_epochs` > 0."""
    stages = [recalibration(seed=seed)] if recalibrate else []
    if reconstruct_from is not None:
        stages.append(reconstruction(*reconstruct_from, seed=seed))
    if finetune_epochs > 0:
        stages.append(finetuning(finetune_epochs, seed=seed, progress=progress))
    return stages


def recover(
    pruned: nn.Module,
    bundle: DataBundle,
    recalibrate: bool = True,
    finetune_epochs: float = 0.0,
    *,
    stages: Sequence[Stage] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    splits: Sequence[str] = ("val", "test"),
    log: Log = stderr_log,
    progress: bool = False,
) -> dict[str, float]:
    """Run the recovery stages on `pruned` (in place) and measure its accuracy before them and after each.

    Args:
        pruned: the physically pruned model; left on `device` in eval mode.
        bundle: the data: stages train on its train split, accuracy is measured on `splits`.
        recalibrate: re-estimate BatchNorm statistics (ignored when `stages` is given).
        finetune_epochs: fine-tune for this many epochs after recalibration (ignored when `stages` is given).
        stages: the stages to run instead of `recovery_stages(recalibrate, finetune_epochs, seed)`.
        device: where to run.
        seed: seeds the recalibration batches and fine-tuning.
        splits: splits accuracy is measured on (none: the stages run unmeasured).
        log: receives one progress line per step.
        progress: show a progress bar while fine-tuning.

    Returns:
        `{<split>_acc_pruned, <split>_acc_<stage>...}` (fractions in [0, 1]), what the stages reported (e.g.
        `reconstruction`), and `recovery_seconds`.
    """
    device = torch.device(device)
    if stages is None:
        stages = recovery_stages(recalibrate, finetune_epochs, seed, progress)
    start = time.perf_counter()
    metrics = measure(pruned, bundle, "pruned", splits, device, log)
    previous = "pruned"
    for stage in stages:
        log(f"{stage.what or stage.name}...")
        if stage.verdict:
            metrics.update(_run_guarded(stage, pruned, bundle, device, metrics, previous, splits, log))
        else:
            metrics.update(stage.run(pruned, bundle, device) or {})
            metrics.update(measure(pruned, bundle, stage.name, splits, device, log))
        previous = stage.name
    pruned.to(device).eval()
    metrics["recovery_seconds"] = round(time.perf_counter() - start, 2)
    return metrics


def _run_guarded(
    stage: Stage,
    model: nn.Module,
    bundle: DataBundle,
    device: torch.device,
    metrics: dict[str, Any],
    previous: str,
    splits: Sequence[str],
    log: Log,
) -> dict[str, Any]:
    """Run `stage` on `model` and measure it, undoing the stage where it lowered validation accuracy below that
    of stage `previous` (reusing the measurements in `metrics`; `Stage.verdict`)."""
    before = _validation_accuracy(model, bundle, device, metrics.get(f"val_acc_{previous}"))
    state = copy.deepcopy(model.state_dict())
    result = {**(stage.run(model, bundle, device) or {}), **measure(model, bundle, stage.name, splits, device, log)}
    now = _validation_accuracy(model, bundle, device, result.get(f"val_acc_{stage.name}"))
    if now >= before:
        return result
    model.load_state_dict(state)
    result.update({f"{s}_acc_{stage.name}": metrics[f"{s}_acc_{previous}"] for s in splits})
    result[str(stage.verdict)] = f"skipped: it lowered validation accuracy ({now:.2%} < {before:.2%})"
    return result


def _validation_accuracy(model: nn.Module, bundle: DataBundle, device: torch.device, known: float | None) -> float:
    """`known` where the validation split was measured already, else `model`'s accuracy on it (as `measure`)."""
    return evaluate(model, bundle.batches("val", 500, device=device), device) if known is None else known


def measure(
    model: nn.Module,
    bundle: DataBundle,
    stage: str,
    splits: Sequence[str] = ("val", "test"),
    device: str | torch.device = "cpu",
    log: Log = stderr_log,
) -> dict[str, float]:
    """`{<split>_acc_<stage>: accuracy}` of `model` on each of `splits`, with one progress line."""
    if not splits:
        return {}
    sizes = ", ".join(f"{len(bundle.split(s).labels)} {s}" for s in splits)
    log(f"evaluating the {stage} model on {sizes} images...")
    return {f"{s}_acc_{stage}": evaluate(model, bundle.batches(s, 500, device=device), device) for s in splits}
