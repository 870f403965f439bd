"""Training and evaluation of classifiers on a `DataBundle`, and the embedded default model for a first run."""

from __future__ import annotations

import math
import os
import pickle
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from autoprune.data import DataBundle, load_dataset
from autoprune.data._messages import one_line
from autoprune.data.cache import cache_dir as resolve_cache_dir
from autoprune.data.cache import write_atomic
from autoprune.errors import AutopruneError
from autoprune.inference import for_inference
from autoprune.models import build_model

DEFAULT_MODEL = "digits_cnn"
DEFAULT_DATASET = "digits"
DEFAULT_SEED = 0
_DEFAULT_FILE = f"{DEFAULT_MODEL}-{DEFAULT_DATASET}-seed{DEFAULT_SEED}.pt"
_DEFAULT_EPOCHS = 5
_DEFAULT_LR = 0.05
_DEFAULT_BATCH = 64
_WARMUP = 0.15  # share of the steps over which the learning rate climbs to its peak


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy of `model` in eval mode over batches `(x, y)`, run on a copy rewritten for inference
    (`autoprune.inference`); `model` keeps its mode and weights.

    The model is moved to `device` (in place, as `nn.Module.to` does).
    """
    net = for_inference(model.to(device))
    correct = torch.zeros((), dtype=torch.int64, device=device)
    total = 0
    for x, y in batches:
        logits = net(x.to(device, non_blocking=True))
        correct += (logits.argmax(1) == y.to(device, non_blocking=True)).sum()
        total += len(y)
    if total == 0:
        raise AutopruneError("evaluate got no samples; give a split with samples (is val_size 0?)")
    return correct.item() / total


def one_cycle(step: int, total: int) -> float:
    """Learning-rate factor at `step` of `total`: linear warm-up from 0.1 to 1, then a cosine down to 0."""
    t = (step + 0.5) / total
    if t < _WARMUP:
        return 0.1 + 0.9 * t / _WARMUP
    return 0.5 * (1.0 + math.cos(math.pi * (t - _WARMUP) / (1.0 - _WARMUP)))


def train(
    model: nn.Module,
    bundle: DataBundle,
    epochs: float,
    lr: float = 0.02,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    seed: int = 0,
    augment: bool | None = None,
    progress: bool = False,
    weight_decay: float = 5e-4,
) -> nn.Module:
    """Train `model` on `bundle.train` with SGD (Nesterov, momentum 0.9) and a one-cycle learning rate.

    Deterministic on CPU for a given seed; the global RNG is saved and restored around training.

    Args:
        model: the classifier; trained in place, moved to `device`, left in the mode it was in.
        bundle: the data; only its train split is used.
        epochs: passes over the train split; fractions allowed (0.25 trains on a quarter of an epoch).
        lr: peak learning rate.
        batch_size: samples per step; the last partial batch of an epoch is dropped.
        device: where to train.
        seed: seeds shuffling, augmentation and any randomness in the model (dropout).
        augment: random crop and flip; None means wherever the bundle supports it (32×32 RGB).
        progress: show a tqdm progress bar.
        weight_decay: L2 penalty on all parameters.

    Returns:
        The same `model`.
    """
    if epochs < 0 or not math.isfinite(epochs):
        raise AutopruneError(f"epochs must be a non-negative number, got {epochs}")
    n = len(bundle.train.labels)
    if n < 2:
        raise AutopruneError(f"the train split of {bundle.name} has {n} samples; training needs at least 2")
    batch_size = min(batch_size, n)
    steps_per_epoch = n // batch_size
    total = round(epochs * steps_per_epoch)
    if epochs > 0:
        total = max(total, 1)
    if total == 0:
        return model.to(device)
    augment = bundle.can_augment if augment is None else augment
    params = [p for p in model.parameters() if p.requires_grad]
    dev = torch.device(device)
    was_training = model.training
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        model.to(dev).train()
        optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: one_cycle(min(s, total - 1), total))
        bar = tqdm(total=total, desc=f"train {bundle.name}", unit="step", disable=not progress, leave=False)
        step, epoch = 0, 0
        try:
            while step < total:
                epoch_seed = seed * 1_000_003 + epoch
                loader = bundle.loader("train", batch_size, True, augment, epoch_seed, dev, drop_last=True)
                for x, y in loader:
                    loss = F.cross_entropy(model(x), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    step += 1
                    bar.update()
                    if step == total:
                        break
                _check_finite(loss, lr)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                epoch += 1
        finally:
            bar.close()
            model.train(was_training)
    return model


def _check_finite(loss: Tensor, lr: float) -> None:
    if not torch.isfinite(loss):
        raise AutopruneError(f"training diverged (loss {loss.item()}); lower the learning rate (was {lr})")


def pretrained_default(
    cache_dir: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, DataBundle]:
    """The default model for a first run: `digits_cnn` trained on digits (seed 0), and the digits data.

    The first call trains it on the CPU (a few seconds) and caches the weights as
    `digits_cnn-digits-seed0.pt` under `cache_dir`; later calls load them. It scores over 90% on val.

    Args:
        cache_dir: where the weights are cached (default `$AUTOPRUNE_CACHE` or `~/.cache/autoprune`).
        device: where the returned model lives.

    Returns:
        `(model, bundle)`, the model in eval mode.
    """
    bundle = load_dataset(DEFAULT_DATASET, seed=DEFAULT_SEED)
    path = resolve_cache_dir(cache_dir) / _DEFAULT_FILE
    model = build_model(DEFAULT_MODEL, num_classes=bundle.num_classes)
    if not _load_cached(model, path):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(DEFAULT_SEED)
            model = build_model(DEFAULT_MODEL, num_classes=bundle.num_classes)
        train(model, bundle, _DEFAULT_EPOCHS, lr=_DEFAULT_LR, batch_size=_DEFAULT_BATCH, seed=DEFAULT_SEED)
        val_acc = evaluate(model, bundle.batches("val", 256))
        test_acc = evaluate(model, bundle.batches("test", 256))
        checkpoint = {"state_dict": model.state_dict(), "val_acc": val_acc, "test_acc": test_acc}
        write_atomic(path, lambda f: torch.save(checkpoint, f))
    return model.to(device).eval(), bundle


def _load_cached(model: nn.Module, path: Path) -> bool:
    """Load cached weights into `model`; False (with a warning if the file is bad) when they must be trained."""
    if not path.is_file():
        return False
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint["state_dict"])
    except (OSError, RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError) as e:
        warnings.warn(f"retraining the default model: cached weights {path} are unusable ({one_line(e)})", stacklevel=3)
        return False
    return True
