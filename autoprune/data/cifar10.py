"""CIFAR-10 from class folders of JPEGs, a .tar.gz of them, or the python pickle batches; decoded once, cached.

Accepted `data_dir` layouts:

- a folder with `train/<class>/*.jpg` and `test/<class>/*.jpg` (class names sorted alphabetically give the
  labels), or a folder holding exactly one such folder;
- a `.tar.gz` of such a folder, e.g. the developers' `shared/data/cifar10-jpeg.tar.gz`;
- the python batches `data_batch_1..5`, `test_batch` (and `batches.meta`), in the folder itself or in its
  `cifar-10-batches-py/`, or a `.tar.gz` of them such as the official `cifar-10-python.tar.gz`.

Decoded arrays are cached as `.npz` under the cache dir, keyed by the source's path, sizes and times, so only the
first load pays for decoding.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from autoprune.data._messages import one_line
from autoprune.data.bundle import DataBundle, Split
from autoprune.data.cache import cache_dir as resolve_cache_dir
from autoprune.data.cache import load_npz, save_npz, source_key
from autoprune.data.splits import carve
from autoprune.errors import AutopruneError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_IMAGE_PIXELS = 2**22
"""Largest image decoded (4 Mpx, e.g. 2048×2048): a few-KiB PNG can claim gigapixels (a decompression bomb)."""
MIN_IMAGE_SIDE = 8
"""Smallest side accepted (the digits are 8×8): smaller images leave a CNN nothing to learn from."""
PICKLE_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
PICKLE_TEST = "test_batch"
PICKLE_META = "batches.meta"
_PICKLE_FILES = (*PICKLE_TRAIN, PICKLE_TEST, PICKLE_META)
_PICKLE_SUBDIR = "cifar-10-batches-py"
_LAYOUT_HINT = (
    "train/<class>/*.jpg and test/<class>/*.jpg folders, a .tar.gz of them (e.g. shared/data/cifar10-jpeg.tar.gz), "
    "or the CIFAR-10 python batches (data_batch_1..5, test_batch)"
)

Arrays = dict[str, np.ndarray]


def load_cifar10(
    data_dir: str | os.PathLike[str] | None = None,
    val_size: int | float = 0.1,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DataBundle:
    """CIFAR-10 with `val_size` of the train split carved out as val with `seed`; test is the official one.

    Args:
        data_dir: a folder or `.tar.gz` in one of the layouts of this module's docstring.
        val_size: a count, or a fraction of the train split.
        seed: seeds the val split.
        cache_dir: where decoded arrays are cached (default `$AUTOPRUNE_CACHE` or `~/.cache/autoprune`).
    """
    if data_dir is None:
        raise AutopruneError(f"cifar10 needs its files: pass --data-dir (data_dir=) pointing to {_LAYOUT_HINT}")
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise AutopruneError(f"cifar10 data not found at {path}: pass --data-dir pointing to {_LAYOUT_HINT}")
    arrays = read_cached(path, cache_dir)
    train, val = carve(arrays["train_x"], arrays["train_y"], val_size, seed)
    test = Split(torch.from_numpy(arrays["test_x"]), torch.from_numpy(arrays["test_y"].astype(np.int64)))
    classes = tuple(str(c) for c in arrays["classes"])
    return DataBundle(
        name="cifar10",
        num_classes=len(classes),
        input_shape=tuple(train.images.shape[1:]),  # type: ignore[arg-type]
        train=train,
        val=val,
        test=test,
        mean=MEAN,
        std=STD,
        classes=classes,
    )


def read_cached(path: Path, cache_dir: str | os.PathLike[str] | None = None) -> Arrays:
    """The decoded arrays of the source at `path`, from the cache when it holds them for this very source.

    Returns:
        `train_x`, `test_x` uint8 (N, 3, H, W); `train_y`, `test_y` int64 (N,); `classes` str (K,).
    """
    source = _locate(path)
    cache_file = resolve_cache_dir(cache_dir) / f"cifar10-{source_key(source)}.npz"
    arrays = load_npz(cache_file)
    if arrays is None:
        arrays = read_source(source)
        save_npz(cache_file, arrays)
    return arrays


def read_source(path: Path) -> Arrays:
    """Decode the source at `path` (a folder found by `_locate`, or an archive) without the cache."""
    if path.is_file():
        return _read_archive(path)
    if (path / PICKLE_TEST).is_file():
        return _from_pickles(lambda name: _read_if_file(path / name), str(path))
    return _from_images(_image_files(path), str(path))


def _locate(path: Path) -> Path:
    """The archive, pickle folder or image root that `path` names or holds."""
    if path.is_file():
        return path
    for candidate in (path, path / _PICKLE_SUBDIR):
        if (candidate / PICKLE_TEST).is_file():
            return candidate
    if (path / "train").is_dir() and (path / "test").is_dir():
        return path
    subdirs = [p for p in path.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / "train").is_dir() and (subdirs[0] / "test").is_dir():
        return subdirs[0]
    raise AutopruneError(f"{path} does not hold cifar10 in a known layout: expected {_LAYOUT_HINT}")


def _read_if_file(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def _image_files(root: Path) -> list[tuple[str, str, str, bytes]]:
    items = []
    for split in ("train", "test"):
        for class_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            for f in sorted(class_dir.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    items.append((split, class_dir.name, f.name, f.read_bytes()))
    return items


def _read_archive(path: Path) -> Arrays:
    pickles: dict[str, bytes] = {}
    images: list[tuple[str, str, str, bytes]] = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = PurePosixPath(member.name).parts
                if parts[-1] in _PICKLE_FILES:
                    pickles[parts[-1]] = _extract(tar, member)
                elif len(parts) >= 3 and parts[-3] in ("train", "test") and _is_image(parts[-1]):
                    images.append((parts[-3], parts[-2], parts[-1], _extract(tar, member)))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise AutopruneError(
            f"cannot read archive {path} ({one_line(e)}); re-download it, or give a complete .tar.gz of cifar10"
        ) from e
    if pickles:
        return _from_pickles(pickles.get, str(path))
    if not images:
        raise AutopruneError(f"archive {path} holds no cifar10 files: expected {_LAYOUT_HINT}")
    return _from_images(images, str(path))


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    assert f is not None  # regular files always have contents
    return f.read()


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _from_images(items: list[tuple[str, str, str, bytes]], where: str) -> Arrays:
    """Arrays from `(split, class, file name, encoded bytes)` items; labels follow the sorted class names."""
    classes = sorted({c for split, c, _, _ in items if split == "train"})
    test_classes = {c for split, c, _, _ in items if split == "test"}
    if not classes or not test_classes:
        raise AutopruneError(f"{where} has no images under both train/<class>/ and test/<class>/")
    if not test_classes <= set(classes):
        extra = ", ".join(sorted(test_classes - set(classes)))
        raise AutopruneError(
            f"{where}: test classes {extra} have no train folder; give train and test the same classes"
        )
    items.sort(key=lambda item: item[:3])
    label = {c: i for i, c in enumerate(classes)}
    images = decode_images([(f"{s}/{c}/{n}", blob) for s, c, n, blob in items])
    labels = np.array([label[c] for _, c, _, _ in items], dtype=np.int64)
    is_train = np.array([s == "train" for s, _, _, _ in items])
    return {
        "train_x": images[is_train],
        "train_y": labels[is_train],
        "test_x": images[~is_train],
        "test_y": labels[~is_train],
        "classes": np.array(classes),
    }


def decode_images(named_blobs: list[tuple[str, bytes]]) -> np.ndarray:
    """Decode `(name, encoded bytes)` images of one size to uint8 (N, 3, H, W) RGB.

    One process decodes the 60,000 CIFAR-10 JPEGs in about 8 s; a pool of two did not beat that on a busy
    2-core machine, since its result arrays must be pickled back, and the cache makes it a one-time cost.
    """
    out: np.ndarray | None = None
    for i, (name, blob) in enumerate(named_blobs):
        try:
            with Image.open(io.BytesIO(blob)) as im:
                _check_size(name, im.size, None if out is None else out.shape[2:])  # from the header, not decoded
                rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise AutopruneError(f"cannot decode image {name} ({one_line(e)}); replace or remove the file") from e
        if out is None:
            out = np.empty((len(named_blobs), 3, *rgb.shape[:2]), dtype=np.uint8)
        out[i] = rgb.transpose(2, 0, 1)
    return out if out is not None else np.empty((0, 3, 0, 0), dtype=np.uint8)


def _check_size(name: str, size: tuple[int, int], others: tuple[int, ...] | None) -> None:
    """Refuse an image before decoding it: too large (a decompression bomb), too small, or unlike the others."""
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise AutopruneError(
            f"image {name} is {height}×{width} pixels, more than {MAX_IMAGE_PIXELS} (a decompression bomb?); "
            "replace or remove the file"
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise AutopruneError(
            f"image {name} is {height}×{width} pixels; images need at least {MIN_IMAGE_SIDE} on each side"
        )
    if others is not None and (height, width) != tuple(others):
        raise AutopruneError(
            f"image {name} is {height}×{width} but others are {others[0]}×{others[1]}; give images of one size"
        )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches' dicts of lists and numpy arrays, and refuses any other global."""

    _ALLOWED = frozenset(
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    ) | {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR-10 batch")
        return super().find_class(module, name)


def _from_pickles(read: Callable[[str], bytes | None], where: str) -> Arrays:
    missing = [name for name in (*PICKLE_TRAIN, PICKLE_TEST) if read(name) is None]
    if missing:
        raise AutopruneError(
            f"{where} lacks CIFAR-10 batches {', '.join(missing)}; give all of data_batch_1..5, test_batch"
        )
    train = [_batch(read(name), name) for name in PICKLE_TRAIN]  # type: ignore[arg-type]
    test_x, test_y = _batch(read(PICKLE_TEST), PICKLE_TEST)  # type: ignore[arg-type]
    classes = CLASSES
    meta = read(PICKLE_META)
    if meta is not None:
        names = _unpickle(meta, PICKLE_META).get("label_names")
        if names:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return {
        "train_x": np.concatenate([x for x, _ in train]),
        "train_y": np.concatenate([y for _, y in train]),
        "test_x": test_x,
        "test_y": test_y,
        "classes": np.array(classes),
    }


def _unpickle(blob: bytes, name: str) -> dict[str, object]:
    try:
        obj = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise AutopruneError(
            f"cannot read CIFAR-10 batch {name} ({one_line(e)}); re-download the python batches"
        ) from e
    if not isinstance(obj, dict):
        raise AutopruneError(f"CIFAR-10 batch {name} is not a dict; re-download the python batches")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _batch(blob: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(blob, name)
    try:
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d["labels"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
        raise AutopruneError(
            f"CIFAR-10 batch {name} lacks data or labels ({one_line(e)}); re-download the python batches"
        ) from e
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise AutopruneError(f"CIFAR-10 batch {name} has data of shape {data.shape}; expected (N, 3072) with N labels")
    return data.reshape(-1, 3, 32, 32), labels
