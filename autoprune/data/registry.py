"""The datasets autoprune knows by name, and `load_dataset`, which also takes a user's `pkg.module:factory`."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from autoprune.data.bundle import DataBundle
from autoprune.data.cifar10 import load_cifar10
from autoprune.data.digits import load_digits
from autoprune.data.fashion_mnist import load_fashion_mnist
from autoprune.errors import AutopruneError
from autoprune.factory import accepted_kwargs, resolve_factory


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset."""

    loader: Callable[..., DataBundle]
    """Called as `loader(data_dir=..., val_size=..., seed=..., cache_dir=...)`."""
    description: str
    """One line for `--help` and listings."""


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(load_digits, "sklearn digits, 1,797 grey 8×8 images, 10 classes; ships with scikit-learn"),
    "cifar10": DatasetSpec(
        load_cifar10, "CIFAR-10, 60,000 RGB 32×32 images, 10 classes; needs --data-dir (JPEG folders or pickles)"
    ),
    "fashion-mnist": DatasetSpec(
        load_fashion_mnist, "Fashion-MNIST, 70,000 grey 28×28 images, 10 classes; idx files (Debian's package)"
    ),
}


def load_dataset(
    name: str = "digits",
    data_dir: str | os.PathLike[str] | None = None,
    val_size: int | float = 0.1,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DataBundle:
    """Load a dataset by name, with a validation split carved from its train split.

    Args:
        name: a key of `DATASETS`, or `pkg.module:factory` for a dataset of your own. The factory is called with
            those of the keyword arguments `data_dir`, `val_size`, `seed` and `cache_dir` that it accepts, and
            must return a `DataBundle`.
        data_dir: where the dataset's files are (cifar10 and fashion-mnist).
        val_size: size of the validation split: a count, or a fraction of the train split.
        seed: seeds the validation split; the same seed always gives the same split.
        cache_dir: where decoded data is cached (default `$AUTOPRUNE_CACHE` or `~/.cache/autoprune`).
    """
    kwargs = {"data_dir": data_dir, "val_size": val_size, "seed": seed, "cache_dir": cache_dir}
    if ":" in name:
        return _from_factory(name, kwargs)
    spec = DATASETS.get(name.lower().replace("_", "-"))
    if spec is None:
        raise AutopruneError(
            f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}, or pkg.module:factory for your own"
        )
    return spec.loader(**kwargs)


def _from_factory(name: str, kwargs: dict[str, object]) -> DataBundle:
    factory = resolve_factory(name, "dataset")
    bundle = factory(**accepted_kwargs(factory, kwargs))
    if not isinstance(bundle, DataBundle):
        raise AutopruneError(f"dataset factory {name} returned {type(bundle).__name__}; it must return a DataBundle")
    return bundle
