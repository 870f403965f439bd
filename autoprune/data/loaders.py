"""A `DataBundle` from a user's data loaders: their batches gathered once into memory."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from autoprune.data.bundle import DataBundle, Split
from autoprune.errors import AutopruneError


def bundle_from_loaders(
    train: Iterable[Any],
    val: Iterable[Any],
    test: Iterable[Any] | None = None,
    num_classes: int | None = None,
    name: str = "loaders",
) -> DataBundle:
    """The splits of `(images, labels)` batches (a `DataLoader`'s, for one), held in memory as given.

    Images are taken as already normalised (mean 0 and std 1 are recorded), and each loader is read once, so its
    random augmentation is frozen into one pass; a bundle of 32×32 RGB images gets autoprune's crop and flip
    when it fine-tunes.

    Args:
        train: training batches (BN recalibration, fine-tuning).
        val: validation batches: the search scores candidates on them.
        test: test batches, measured after the search; None measures on `val` again.
        num_classes: classes of the labels; None takes the largest label + 1.
        name: the dataset's name in reports.
    """
    splits = {"train": _gather(train, "train_loader"), "val": _gather(val, "val_loader")}
    splits["test"] = _gather(test, "test_loader") if test is not None else splits["val"]
    if num_classes is None:
        num_classes = 1 + max(int(s.labels.max()) for s in splits.values())
    channels = splits["train"].images.shape[1]
    return DataBundle(
        name=name,
        num_classes=num_classes,
        input_shape=tuple(splits["train"].images.shape[1:]),
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
        **splits,
    )


def _gather(batches: Iterable[Any], what: str) -> Split:
    images, labels = [], []
    try:
        for batch in batches:
            if not isinstance(batch, list | tuple) or len(batch) < 2:
                raise AutopruneError(f"{what} must give (images, labels) batches, got {type(batch).__name__}")
            x, y = torch.as_tensor(batch[0]), torch.as_tensor(batch[1])
            if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
                raise AutopruneError(
                    f"{what} must give images of shape (N, C, H, W) and labels of shape (N,), got "
                    f"{tuple(x.shape)} and {tuple(y.shape)}"
                )
            images.append(x.detach().to("cpu", torch.float32))
            labels.append(y.detach().to("cpu", torch.int64))
    except TypeError:
        raise AutopruneError(f"{what} must be an iterable of (images, labels) batches") from None
    if not images:
        raise AutopruneError(f"{what} gave no batches")
    shapes = {tuple(x.shape[1:]) for x in images}
    if len(shapes) > 1:
        raise AutopruneError(f"{what} gives images of different shapes: {sorted(shapes)}")
    return Split(torch.cat(images), torch.cat(labels))
