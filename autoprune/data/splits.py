"""Seeded, deterministic carving of one split out of another."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from autoprune.data.bundle import Split
from autoprune.errors import AutopruneError


def split_indices(n: int, size: int | float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices of the samples kept and carved out when `size` of `n` samples are drawn at random.

    Args:
        n: number of samples in the source split.
        size: how many to carve out: a count, or a fraction of `n` in [0, 1).
        seed: seeds the permutation (a private `torch.Generator`; the global RNG is untouched).

    Returns:
        `(kept, carved)`, each sorted ascending, disjoint, together `0..n-1`.
    """
    count = _count(n, size)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[count:].sort().values, order[:count].sort().values


def carve(images: np.ndarray, labels: np.ndarray, size: int | float, seed: int) -> tuple[Split, Split]:
    """`(kept, carved)` splits of a numpy source as tensors, drawn by `split_indices`."""
    x, y = torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64))
    kept, carved = split_indices(len(y), size, seed)
    return Split(x[kept], y[kept]), Split(x[carved], y[carved])


def _count(n: int, size: int | float) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise AutopruneError(f"val_size must be a count or a fraction, got {size!r}")
    if isinstance(size, float):
        if not 0.0 <= size < 1.0:
            raise AutopruneError(f"val_size as a fraction must lie in [0, 1), got {size}")
        return round(n * size)
    if not 0 <= size < n:
        raise AutopruneError(f"val_size as a count must lie in 0..{n - 1} for {n} training samples, got {size}")
    return size
