"""Set up a pruning problem from user options: model, weights, data, channel graph, and the score function."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoprune.batched_scoring import BatchedScorer
from autoprune.data import DataBundle, load_dataset
from autoprune.data._messages import one_line
from autoprune.errors import AutopruneError
from autoprune.fields import check_types
from autoprune.graph import ChannelGraph, build_channel_graph
from autoprune.models import build_model, load_weights, model_spec
from autoprune.scoring import Batches, SlicedScorer
from autoprune.threaded_scoring import ThreadedScorer


@dataclass
class ProblemConfig:
    """What to prune and how candidates are scored."""

    model: str = "digits_cnn"
    """Built-in model name, `pkg.module:factory`, or `torchvision:<name>` (where torchvision is installed)."""
    weights: str | None = None
    """Trained weights (state dict or checkpoint); the default digits model is trained and cached if omitted."""
    trust_pickle: bool = False
    """Allow weights files that need full unpickling (only for files you trust)."""
    dataset: str | None = None
    """Dataset name or `pkg.module:factory`; default: the model's own (digits or cifar10)."""
    data_dir: str | None = None
    """Where the dataset's files are (cifar10: JPEG folders, their .tar.gz, or pickle batches)."""
    device: str = "auto"
    """`cpu`, `cuda`, `cuda:N`, or `auto` (cuda where available)."""
    eval_samples: int = 1000
    """Validation samples each candidate is scored on (a fixed subset of the validation split)."""
    racing: bool = True
    """Stop a candidate after its BN-recalibration pass when it is clearly worse than the best so far (paired
    test on the recalibration images, `autoprune.scoring`); False scores every candidate on every image."""
    eval_batch_size: int = 500
    """Batch size for scoring."""
    recalibrate_batches: int = 4
    """Training batches (of 64) for BN recalibration before scoring each candidate (0: none). Recalibrated
    scores track post-fine-tune accuracy far better than raw masked accuracy (EagleEye, Li et al. 2020)."""
    score_with_reconstruction: bool = False
    """Re-fit each candidate's conv and linear layers by least squares (`autoprune.reconstruct`) on the
    recalibration images instead of recalibrating its BN statistics, and score it so: candidates are ranked by
    what a search delivers without training (`autoprune.recovery.reconstruction`, which keeps the unpruned BN
    statistics), at about twice the cost per candidate. Needs `recalibrate_batches` > 0."""
    candidate_batch: int = 0
    """Candidates scored together; the agent's rollouts, the random baselines and the sensitivity probes hand
    over this many at a time, and each candidate of a batch races against the incumbent at its start. On a CPU
    they run side by side on worker threads that share torch's threads (`autoprune.threaded_scoring`); on a GPU
    in one pass of the masked network, each with its own mask and BN statistics (`autoprune.batched_scoring`).
    0: as many as torch has threads on a CPU (one thread each), one at a time on a GPU."""
    val_size: float = 0.1
    """Validation split carved from the training data (fraction or count)."""
    split_seed: int = 0
    """Seeds the validation split. Keep 0 with the default digits model, which was trained on split 0's train
    part; a search's own randomness is `SearchConfig.seed`."""
    ignore: tuple[str, ...] = ()
    """Modules whose output channels must not be pruned (the output layer never is)."""
    min_channels: int = 1
    """Fewest channels any coupled group keeps."""
    round_to: int = 1
    """Round kept channels per group up to a multiple of this."""
    cache_dir: str | None = None
    """Cache for decoded data and the default model (default `$AUTOPRUNE_CACHE` or ~/.cache/autoprune)."""

    def validate(self) -> None:
        """Raise AutopruneError for settings that cannot work (checked before anything is loaded)."""
        check_types(self)
        for option, value, least in (
            ("--eval-samples", self.eval_samples, 1),
            ("eval_batch_size", self.eval_batch_size, 1),
            ("--recalibrate-batches", self.recalibrate_batches, 0),
            ("split_seed", self.split_seed, 0),
            ("--min-channels", self.min_channels, 1),
            ("--round-to", self.round_to, 1),
            ("--candidate-batch", self.candidate_batch, 0),
        ):
            if value < least:
                raise AutopruneError(f"{option} must be at least {least}, got {value}")
        if self.score_with_reconstruction and not self.recalibrate_batches:
            raise AutopruneError("--score-with-reconstruction needs training images: --recalibrate-batches > 0")
        if not 0 < self.val_size < math.inf or (self.val_size >= 1 and self.val_size != int(self.val_size)):
            raise AutopruneError(f"val_size must be a fraction in (0, 1) or a whole count, got {self.val_size}")


@dataclass
class Problem:
    """Everything a search needs, built once per process (or Ray worker)."""

    config: ProblemConfig
    model: nn.Module
    bundle: DataBundle
    graph: ChannelGraph
    evaluator: SlicedScorer
    device: torch.device
    base_score: float = field(init=False)

    def __post_init__(self) -> None:
        self.base_score = self.evaluator(None)

    def score(self, keep: np.ndarray) -> float:
        """Validation accuracy of the network under `keep` (estimated when racing stopped it early)."""
        return self.evaluator(keep)

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, *self.bundle.input_shape, device=self.device)

    @cached_property
    def fresh_scorer(self) -> SlicedScorer | None:
        """A scorer on as many validation images as the search's, none of them the search's (scored like the
        search's candidates, without racing), or None where the validation split is too small to give them.
        Built on first use, then kept."""
        samples = self.evaluator.num_samples
        fresh = self.bundle.batches("val", self.config.eval_batch_size, limit=samples, skip=samples, device=self.device)
        if not samples or sum(len(y) for _, y in fresh) < samples:
            return None
        return SlicedScorer(
            self.model,
            self.graph,
            fresh,
            self.evaluator.recalibration,
            z=math.inf,
            reconstruction=self.config.score_with_reconstruction,
        )


def resolve_device(device: str) -> torch.device:
    """`auto` picks cuda where available; asking for cuda without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise AutopruneError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AutopruneError("--device cuda was asked for, but no CUDA GPU is available here; use --device cpu")
    return resolved


def load_model(config: ProblemConfig, num_classes: int) -> nn.Module:
    """The model with its trained weights (the default digits CNN is trained and cached on first use)."""
    if config.weights is None and config.model == "digits_cnn" and (config.dataset in (None, "digits")):
        from autoprune.training import pretrained_default

        model, _ = pretrained_default(cache_dir=config.cache_dir)
        return model
    model = build_model(config.model, num_classes=num_classes)
    if config.weights is not None:
        load_weights(model, Path(config.weights), trust_pickle=config.trust_pickle)
    else:
        warnings.warn(f"no --weights given: pruning an untrained {config.model}", stacklevel=2)
    return model


def load_problem(config: ProblemConfig) -> Problem:
    """Load model, data and graph, and set up masked scoring on the validation split."""
    config.validate()
    device = resolve_device(config.device)
    spec = model_spec(config.model)
    if spec is None and ":" not in config.model:
        build_model(config.model)  # raises the "unknown model" error listing what exists
    dataset = config.dataset or (spec.default_dataset if spec else None)
    if dataset is None:
        raise AutopruneError(f"--dataset is needed for model {config.model!r} (no default dataset)")
    bundle = load_dataset(
        dataset, data_dir=config.data_dir, val_size=config.val_size, seed=config.split_seed, cache_dir=config.cache_dir
    )
    model = load_model(config, bundle.num_classes).to(device).eval()
    return build_problem(config, model, bundle, device)


def build_problem(config: ProblemConfig, model: nn.Module, bundle: DataBundle, device: torch.device) -> Problem:
    """Set up masked scoring of `model` (trained, on `device`) on `bundle`'s validation split.

    `config` supplies the scoring and graph settings; its model, weights and dataset fields are not loaded.
    """
    check_fits(model, bundle, config.model, device)
    example = torch.zeros(1, *bundle.input_shape, device=device)
    calibration = bundle.batches("train", 64, limit=64, device=device)[0][0]
    graph = build_channel_graph(
        model,
        example,
        model_name=config.model,
        ignore=config.ignore,
        calibration=calibration,
        min_channels=config.min_channels,
        round_to=config.round_to,
    )
    batches = bundle.batches("val", config.eval_batch_size, limit=config.eval_samples, device=device)
    recal = None
    if config.recalibrate_batches:
        loader = bundle.loader("train", 64, shuffle=True, seed=config.split_seed, device=device)
        recal = [b for _, b in zip(range(config.recalibrate_batches), loader, strict=False)]
    z = 2.0 if config.racing else math.inf
    evaluator = scorer_for(config, device, model, graph, batches, recal, z)
    return Problem(config=config, model=model, bundle=bundle, graph=graph, evaluator=evaluator, device=device)


def scorer_for(
    config: ProblemConfig,
    device: torch.device,
    model: nn.Module,
    graph: ChannelGraph,
    batches: Batches,
    recalibration: Batches | None,
    z: float,
) -> SlicedScorer:
    """The candidate scorer `config.candidate_batch` asks for on `device` (see `ProblemConfig.candidate_batch`)."""
    on_cpu = device.type == "cpu"
    candidates = config.candidate_batch or (torch.get_num_threads() if on_cpu else 1)
    reconstruction = config.score_with_reconstruction
    if candidates == 1:
        return SlicedScorer(model, graph, batches, recalibration, z=z, reconstruction=reconstruction)
    if on_cpu:
        return ThreadedScorer(
            model, graph, batches, recalibration, z=z, reconstruction=reconstruction, candidates=candidates
        )
    if reconstruction:
        raise AutopruneError(
            "--score-with-reconstruction re-fits one candidate at a time on a GPU: use --candidate-batch 1"
        )
    return BatchedScorer(model, graph, batches, recalibration, z=z, candidates=candidates)


def check_fits(model: nn.Module, bundle: DataBundle, model_name: str, device: torch.device | str = "cpu") -> None:
    """Raise AutopruneError unless `model` takes `bundle`'s images and gives one logit per class."""
    shape = tuple(bundle.input_shape)
    try:
        with torch.no_grad():
            logits = model.eval()(torch.zeros(2, *shape, device=device))
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
        if first is not None and first.in_channels != shape[0]:
            why = f"its first convolution takes {first.in_channels} channels, the images have {shape[0]}"
        else:
            why = f"its forward pass fails: {one_line(exc)[:100]}"
        raise AutopruneError(
            f"model {model_name!r} does not take {bundle.name} images of shape {shape} ({why}); give a --dataset "
            "that fits the model, or a model made for this dataset"
        ) from None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] != bundle.num_classes:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise AutopruneError(
            f"model {model_name!r} gives outputs of shape {got} on {bundle.name} images; a classifier for its "
            f"{bundle.num_classes} classes must give (batch, {bundle.num_classes})"
        )
