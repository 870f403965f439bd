"""Apply a plan to a model given by name, recover its accuracy on data, and write the model (and ONNX).

What `autoprune apply` runs; `autoprune.recovery.recover` does the recovery, as after a search.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from autoprune.errors import AutopruneError
from autoprune.plan import Plan
from autoprune.recovery import Log, recover, recovery_stages, stderr_log


@dataclass
class ApplyConfig:
    """One `apply`: which plan, on which model and weights, recovered on which data, written where."""

    plan: str
    """plan.json written by a search."""
    out: str
    """Where the pruned model goes (.pt, rebuilt by `autoprune.export.load_pruned`)."""
    model: str = "digits_cnn"
    """Built-in model name or `pkg.module:factory`: the model the plan was made for."""
    weights: str | None = None
    """Trained weights; the default digits model uses its cached ones when omitted."""
    random_init: bool = False
    """Prune a freshly initialised model when there are no weights (for trying plans out, not for use)."""
    trust_pickle: bool = False
    """Allow weights files that need full unpickling (only for files you trust)."""
    num_classes: int = 10
    """Classes of the model when no dataset says how many."""
    dataset: str | None = None
    """Dataset to recover and measure on (name or `pkg.module:factory`); None: write the model as pruned."""
    data_dir: str | None = None
    """Where the dataset's files are."""
    recalibrate: bool = True
    """Re-estimate BatchNorm statistics on training batches (needs `dataset`)."""
    reconstruct: bool = True
    """Then re-fit the conv and linear layers by least squares (`autoprune.reconstruct`; needs `dataset`),
    kept only where it does not lower validation accuracy."""
    finetune_epochs: float = 0.0
    """Fine-tune on the training split for this many epochs after recalibration (needs `dataset`)."""
    seed: int = 0
    """Seeds the recalibration batches and fine-tuning (a search's finalisation uses its own seed)."""
    device: str = "auto"
    """`cpu`, `cuda`, `cuda:N`, or `auto`."""
    onnx: str | None = None
    """Also export the recovered model to ONNX here."""
    cache_dir: str | None = None
    """Cache for decoded data and the default model."""
    progress: bool = True
    """Progress bar while fine-tuning."""


@dataclass
class Applied:
    """The result of `apply_plan`."""

    plan: Plan
    pruned: nn.Module
    """The pruned model after recovery, on the CPU."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Accuracy per stage and split (`test_acc_recalibrated`...), empty without a dataset."""


def apply_plan(config: ApplyConfig, log: Log = stderr_log) -> Applied:
    """Apply `config.plan` to the model, recover it on the dataset where one is given, and write it.

    Refuses (AutopruneError) a model without trained weights unless `random_init`, recovery without a dataset,
    and output paths that cannot be written, all before any work.
    """
    from autoprune.export import export_onnx, save_pruned
    from autoprune.models import build_model, load_weights
    from autoprune.outputs import check_output_file, writing
    from autoprune.problem import check_fits, resolve_device

    plan = Plan.load(config.plan)
    if config.finetune_epochs and not config.dataset:
        raise AutopruneError("--finetune-epochs needs --dataset (and --data-dir where the dataset has files)")
    if not 0 <= config.finetune_epochs < float("inf"):
        raise AutopruneError(f"--finetune-epochs must be a finite number >= 0, got {config.finetune_epochs}")
    default_weights = config.model == "digits_cnn" and config.dataset in (None, "digits")
    if not config.weights and not default_weights and not config.random_init:
        raise AutopruneError(
            f"apply needs --weights: the trained weights of {config.model} the plan was searched on "
            "(--random-init prunes an untrained model instead)"
        )
    check_output_file(config.out, "--out")
    if config.onnx:
        check_output_file(config.onnx, "--onnx")
    device = resolve_device(config.device)
    bundle = None
    if config.dataset:
        from autoprune.data import load_dataset

        log(f"loading {config.dataset}...")
        bundle = load_dataset(config.dataset, data_dir=config.data_dir, cache_dir=config.cache_dir)
    num_classes = bundle.num_classes if bundle else config.num_classes
    if config.weights or not default_weights:
        net = build_model(config.model, num_classes=num_classes)
        plan.check_model(net)  # a plan for another model is the likelier mistake than weights that do not fit
        if config.weights:
            load_weights(net, config.weights, trust_pickle=config.trust_pickle)
    else:
        from autoprune.training import pretrained_default

        log("loading the default digits model (trained and cached on first use)...")
        net, _ = pretrained_default(cache_dir=config.cache_dir)
    net = net.to(device).eval()
    if bundle is not None:
        check_fits(net, bundle, config.model, device)
    pruned = plan.apply(net)
    metrics: dict[str, Any] = {}
    if bundle is not None:
        rebuild = (net, plan.modules) if config.reconstruct else None
        stages = recovery_stages(
            config.recalibrate, config.finetune_epochs, config.seed, config.progress, reconstruct_from=rebuild
        )
        metrics = recover(pruned, bundle, stages=stages, device=device, log=log, progress=config.progress)
    pruned = pruned.cpu().eval()
    with writing(config.out, "--out"):
        save_pruned(config.out, pruned, plan, num_classes)
    if config.onnx:
        log(f"exporting ONNX to {config.onnx}...")
        with writing(config.onnx, "--onnx"):
            export_onnx(pruned, plan.input_shape, Path(config.onnx))
    return Applied(plan, pruned, metrics)
