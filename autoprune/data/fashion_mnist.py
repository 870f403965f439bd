"""Fashion-MNIST from its idx files (plain or .gz), by default where Debian's dataset-fashion-mnist puts them."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from autoprune.data._messages import one_line
from autoprune.data.bundle import DataBundle, Split
from autoprune.data.splits import carve
from autoprune.errors import AutopruneError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN, STD = (0.2860,), (0.3530,)
_UBYTE = 0x08


def load_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    val_size: int | float = 0.1,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DataBundle:
    """Fashion-MNIST (28×28 grey) with `val_size` of train carved out as val with `seed`.

    Args:
        data_dir: folder of the four idx files, each plain or gzipped (default `DEFAULT_DIR`).
        val_size: a count, or a fraction of the train split.
        seed: seeds the val split.
        cache_dir: not used; the idx files load in well under a second.
    """
    root = Path(data_dir if data_dir is not None else DEFAULT_DIR).expanduser()
    if not root.is_dir():
        raise AutopruneError(
            f"fashion-mnist folder {root} not found: pass --data-dir with its four idx files, "
            "or install them with `apt-get install dataset-fashion-mnist`"
        )
    arrays = {split: tuple(read_idx(_find(root, name)) for name in names) for split, names in FILES.items()}
    for split, (images, labels) in arrays.items():
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise AutopruneError(
                f"fashion-mnist {split} idx files hold images {images.shape} and labels {labels.shape}; "
                "expected (N, H, W) images and N labels"
            )
    train_images, train_labels = arrays["train"]
    train, val = carve(train_images[:, None], train_labels, val_size, seed)
    test_images, test_labels = arrays["test"]
    test = Split(torch.from_numpy(test_images[:, None].copy()), torch.from_numpy(test_labels.astype(np.int64)))
    return DataBundle(
        name="fashion-mnist",
        num_classes=len(CLASSES),
        input_shape=(1, *train_images.shape[1:]),  # type: ignore[arg-type]
        train=train,
        val=val,
        test=test,
        mean=MEAN,
        std=STD,
        classes=CLASSES,
    )


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise AutopruneError(
        f"fashion-mnist file {name}[.gz] not found in {root}: pass --data-dir with the four idx files, "
        "or install them with `apt-get install dataset-fashion-mnist`"
    )


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """The uint8 array in an idx file (`.gz` files are decompressed).

    The format: 2 zero bytes, a type byte (0x08 for unsigned bytes), the number of dimensions, each dimension as a
    big-endian uint32, then the data in C order.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise AutopruneError(f"cannot read idx file {path} ({one_line(e)}); re-download or reinstall it") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE:
        raise AutopruneError(f"{path} is not an idx file of unsigned bytes; re-download or reinstall it")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise AutopruneError(f"idx file {path} is truncated; re-download or reinstall it")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) - header != int(np.prod(shape)):
        raise AutopruneError(
            f"idx file {path} holds {len(raw) - header} bytes of data for shape {shape}; re-download or reinstall it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()
