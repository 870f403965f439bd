"""The sklearn digits: 1,797 grey-scale 8×8 images of handwritten digits, shipped with scikit-learn."""

from __future__ import annotations

import os

import numpy as np
from sklearn.datasets import load_digits as _sklearn_digits

from autoprune.data.bundle import DataBundle
from autoprune.data.splits import carve

TEST_FRACTION = 0.2
"""Share of the samples held out as the test split, always with `TEST_SEED`, so test is the same for every seed."""
TEST_SEED = 0
# Mean and std of all 1,797 images scaled to [0, 1]; fixed so that normalisation does not depend on the split.
MEAN, STD = (0.3053,), (0.3760,)


def load_digits(
    data_dir: str | os.PathLike[str] | None = None,
    val_size: int | float = 0.1,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DataBundle:
    """The digits with a fixed 20% test split and `val_size` of the rest carved as val with `seed`.

    `data_dir` and `cache_dir` are not used: scikit-learn ships the data.
    """
    raw = _sklearn_digits()
    images = (raw.images / 16.0).astype(np.float32)[:, None]
    train_val, test = carve(images, raw.target, TEST_FRACTION, TEST_SEED)
    train, val = carve(train_val.images.numpy(), train_val.labels.numpy(), val_size, seed)
    return DataBundle(
        name="digits",
        num_classes=10,
        input_shape=(1, 8, 8),
        train=train,
        val=val,
        test=test,
        mean=MEAN,
        std=STD,
        classes=tuple(str(d) for d in range(10)),
    )
