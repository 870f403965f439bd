"""`DataBundle`: a dataset's splits held compactly in memory, and the batches cut from them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from autoprune.errors import AutopruneError

SPLITS = ("train", "val", "test")
_CROP_PAD = 4


class Split(NamedTuple):
    """One split of a dataset: `images` (N, C, H, W) as uint8 in 0..255 or float in [0, 1]; `labels` (N,) int64."""

    images: Tensor
    labels: Tensor


@dataclass
class DataBundle:
    """A classification dataset with train, val and test splits, and its normalisation.

    Images stay compact (uint8 where the source is 8-bit) and are normalised per batch by `loader` and `batches`.
    """

    name: str
    """Dataset name, e.g. `digits` or `cifar10`."""
    num_classes: int
    """Number of classes; labels lie in `0..num_classes - 1`."""
    input_shape: tuple[int, int, int]
    """Shape (C, H, W) of one image as the model sees it."""
    train: Split
    """Training split: what is left of the official train split after carving out `val`."""
    val: Split
    """Validation split, carved from the official train split with a seeded permutation."""
    test: Split
    """Test split: the official one where the dataset has it."""
    mean: tuple[float, ...]
    """Per-channel mean subtracted from images scaled to [0, 1]."""
    std: tuple[float, ...]
    """Per-channel standard deviation that images are divided by after subtracting `mean`."""
    classes: tuple[str, ...] = field(default=())
    """Class names in label order, where known."""

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(s) for s in self.input_shape)  # type: ignore[assignment]
        if len(self.input_shape) != 3:
            raise AutopruneError(f"dataset {self.name!r}: input_shape must be (C, H, W), got {self.input_shape}")
        channels = self.input_shape[0]
        if len(self.mean) != channels or len(self.std) != channels:
            raise AutopruneError(f"dataset {self.name!r}: give one mean and one std per channel ({channels})")
        for name in SPLITS:
            images, labels = getattr(self, name)
            split = Split(images, labels)
            setattr(self, name, split)
            if tuple(images.shape[1:]) != self.input_shape or images.dim() != 4:
                raise AutopruneError(
                    f"dataset {self.name!r}: {name} images have shape {tuple(images.shape)}, "
                    f"expected (N, {', '.join(map(str, self.input_shape))})"
                )
            if images.dtype != torch.uint8 and not images.is_floating_point():
                raise AutopruneError(f"dataset {self.name!r}: {name} images must be uint8 or float")
            if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
                raise AutopruneError(f"dataset {self.name!r}: {name} labels must be int64 of shape (N,)")
            if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes:
                raise AutopruneError(f"dataset {self.name!r}: {name} labels must lie in 0..{self.num_classes - 1}")

    @property
    def can_augment(self) -> bool:
        """Whether `loader(..., augment=True)` applies: random crop and flip suit 32×32 RGB images only."""
        return self.input_shape == (3, 32, 32)

    def split(self, name: str) -> Split:
        """The split called `name` (`train`, `val` or `test`)."""
        if name not in SPLITS:
            raise AutopruneError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def normalize(self, images: Tensor) -> Tensor:
        """Float32 images normalised with `mean` and `std`, on the device of `images`."""
        x = _to_unit_float(images)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def loader(
        self,
        split: str,
        batch_size: int,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        device: str | torch.device | None = None,
        drop_last: bool = False,
    ) -> BatchLoader:
        """Normalised float32 batches `(x, y)` of one split.

        Args:
            split: `train`, `val` or `test`.
            batch_size: samples per batch.
            shuffle: visit samples in a random order drawn from `seed`.
            augment: random crop (zero padding 4) and horizontal flip, drawn from `seed`; 32×32 RGB only.
            seed: seeds shuffling and augmentation; each pass over the loader repeats the same batches.
            device: where batches are made (images are moved as uint8, then normalised there).
            drop_last: leave out a last batch smaller than `batch_size`.
        """
        if batch_size < 1:
            raise AutopruneError(f"batch_size must be at least 1, got {batch_size}")
        if augment and not self.can_augment:
            raise AutopruneError(
                f"augmentation (random crop + flip) is for 32×32 RGB images; {self.name} has shape "
                f"{self.input_shape}: train without augment"
            )
        return BatchLoader(self, self.split(split), batch_size, shuffle, augment, seed, device, drop_last)

    def batches(
        self,
        split: str,
        batch_size: int,
        limit: int | None = None,
        device: str | torch.device | None = None,
        skip: int = 0,
    ) -> list[tuple[Tensor, Tensor]]:
        """Normalised batches of `limit` samples of a split (all if None), made once for re-use.

        Sources such as CIFAR-10's class folders are ordered by class, so a subset is drawn at random with a
        fixed seed (the same samples every call), never the first `limit`.

        Args:
            split: `train`, `val` or `test`.
            batch_size: samples per batch.
            limit: how many samples to include.
            device: where the batches are kept.
            skip: leave out the first `skip` samples of that fixed random order: `skip=n` gives samples disjoint
                from `limit=n`'s (fewer, or none, where the split runs out).
        """
        images, labels = self.split(split)
        if limit is not None or skip:
            if (limit is not None and limit < 0) or skip < 0:
                raise AutopruneError(f"limit and skip must not be negative, got {limit} and {skip}")
            stop = len(labels) if limit is None else skip + limit
            if skip or stop < len(labels):
                order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
                subset = order[skip:stop].sort().values
                images, labels = images[subset], labels[subset]
        head = BatchLoader(self, Split(images, labels), batch_size, False, False, 0, device, False)
        return list(head)


class BatchLoader:
    """An iterable over normalised batches of one split; see `DataBundle.loader`.

    Every pass draws its order and augmentation afresh from the same seed, so passes repeat exactly.
    """

    def __init__(
        self,
        bundle: DataBundle,
        split: Split,
        batch_size: int,
        shuffle: bool,
        augment: bool,
        seed: int,
        device: str | torch.device | None,
        drop_last: bool,
    ) -> None:
        self.bundle = bundle
        self.images, self.labels = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.labels)
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(n, generator=generator) if self.shuffle else None
        for b in range(len(self)):
            if order is None:
                x = self.images[b * self.batch_size : (b + 1) * self.batch_size]
                y = self.labels[b * self.batch_size : (b + 1) * self.batch_size]
            else:
                idx = order[b * self.batch_size : (b + 1) * self.batch_size]
                x, y = self.images[idx], self.labels[idx]
            x = x.to(self.device, non_blocking=True)
            if self.augment:
                x = _crop_and_flip(_to_unit_float(x), generator)
            yield self.bundle.normalize(x), y.to(self.device, non_blocking=True)


def _to_unit_float(images: Tensor) -> Tensor:
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32)


def _crop_and_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Per-sample random crop of the zero-padded batch and horizontal flip with probability 1/2."""
    n, _, h, w = x.shape
    padded = F.pad(x, (_CROP_PAD,) * 4)
    dy = torch.randint(0, 2 * _CROP_PAD + 1, (n, 1), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * _CROP_PAD + 1, (n, 1), generator=generator).to(x.device)
    flip = (torch.rand(n, 1, generator=generator) < 0.5).to(x.device)
    rows = dy + torch.arange(h, device=x.device)
    cols = dx + torch.arange(w, device=x.device)
    cols = torch.where(flip, cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices on dims 0, 2, 3 around a slice put the channel dim last: (n, h, w, c).
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()
