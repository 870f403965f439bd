"""Datasets as compact in-memory splits (`DataBundle`), loaded by name with `load_dataset`."""

from autoprune.data.bundle import BatchLoader, DataBundle, Split
from autoprune.data.cache import cache_dir
from autoprune.data.registry import DATASETS, DatasetSpec, load_dataset
from autoprune.data.splits import split_indices

__all__ = [
    "DATASETS",
    "BatchLoader",
    "DataBundle",
    "DatasetSpec",
    "Split",
    "cache_dir",
    "load_dataset",
    "split_indices",
]
