"""CIFAR-10 with a validation split nobody trained on, for studying how a search selects (bench only).

The shared CIFAR-10 weights were fine-tuned on the whole train split, so the usual validation split (carved from
train) is training data to them: a search's scores there measure how well a pruned network keeps its fit of
images it was trained on. This dataset factory carves the validation split from the official test split instead
(2000 images, drawn with a fixed seed) and tests on the other 8000, so that validation and test images are both
held out. Use it with `--dataset bench.heldout_cifar:heldout` from the repository root.
"""

from __future__ import annotations

import os

import torch

from autoprune.data import DataBundle, load_dataset
from autoprune.data.bundle import Split
from autoprune.data.splits import split_indices

VAL_IMAGES = 2000
"""Test images carved out as validation."""


def heldout(data_dir: str | os.PathLike[str] | None = None, cache_dir: str | None = None) -> DataBundle:
    """CIFAR-10: train = the whole official train split, val = 2000 test images, test = the other 8000."""
    base = load_dataset("cifar10", data_dir=data_dir, val_size=0.1, seed=0, cache_dir=cache_dir)
    train = Split(torch.cat([base.train.images, base.val.images]), torch.cat([base.train.labels, base.val.labels]))
    rest, val = split_indices(len(base.test.labels), VAL_IMAGES, seed=1)
    return DataBundle(
        name="cifar10-heldout",
        num_classes=base.num_classes,
        input_shape=base.input_shape,
        train=train,
        val=Split(base.test.images[val], base.test.labels[val]),
        test=Split(base.test.images[rest], base.test.labels[rest]),
        mean=base.mean,
        std=base.std,
        classes=base.classes,
    )
