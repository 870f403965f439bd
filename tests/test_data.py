"""Datasets: digits splits, batches and augmentation, CIFAR-10 sources and cache, Fashion-MNIST idx, errors."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import autoprune.data.cifar10 as cifar10
from autoprune.data import DATASETS, DataBundle, Split, load_dataset, split_indices
from autoprune.data.fashion_mnist import read_idx
from autoprune.errors import AutopruneError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Distinct solid colours survive JPEG almost exactly, so a decoded pixel tells which class an image came from.
COLOURS = {"cat": (200, 30, 30), "ant": (30, 200, 30), "bee": (30, 30, 200)}


def one_line_error(excinfo: pytest.ExceptionInfo[AutopruneError], *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


# --- digits -------------------------------------------------------------------------------------------------------


def test_digits_shapes_and_split_sizes() -> None:
    bundle = load_dataset("digits")
    assert (bundle.name, bundle.num_classes, bundle.input_shape) == ("digits", 10, (1, 8, 8))
    # 1,797 samples: 20% (359) test, then 10% of the remaining 1,438 as val.
    assert [len(s.labels) for s in (bundle.train, bundle.val, bundle.test)] == [1294, 144, 359]
    assert bundle.train.images.shape == (1294, 1, 8, 8)
    assert bundle.train.images.dtype == torch.float32 and bundle.train.labels.dtype == torch.int64
    assert bundle.train.images.min() >= 0.0 and bundle.train.images.max() <= 1.0
    assert set(bundle.test.labels.tolist()) == set(range(10))


def test_digits_val_split_is_seeded_and_test_is_fixed() -> None:
    a, b, c = load_dataset("digits", seed=0), load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.labels, b.train.labels)
    assert not torch.equal(a.val.images, c.val.images)
    assert torch.equal(a.test.images, c.test.images)
    assert len(load_dataset("digits", val_size=100).val.labels) == 100


def test_split_indices_partition_without_overlap() -> None:
    kept, carved = split_indices(1438, 0.1, seed=0)
    assert len(carved) == 144 and len(kept) == 1294
    assert set(kept.tolist()).isdisjoint(carved.tolist())
    assert sorted(kept.tolist() + carved.tolist()) == list(range(1438))
    assert torch.equal(carved, split_indices(1438, 0.1, seed=0)[1])
    assert not torch.equal(carved, split_indices(1438, 0.1, seed=1)[1])


def test_split_leaves_global_rng_alone() -> None:
    state = torch.get_rng_state()
    load_dataset("digits", seed=3)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("val_size", [1.0, -0.1, 1438, -1, True, "0.1"])
def test_bad_val_size(val_size: object) -> None:
    with pytest.raises(AutopruneError) as excinfo:
        load_dataset("digits", val_size=val_size)  # type: ignore[arg-type]
    one_line_error(excinfo, "val_size")


# --- batches and augmentation -------------------------------------------------------------------------------------


def test_loader_normalises_and_shuffles_by_seed() -> None:
    bundle = load_dataset("digits")
    plain = list(bundle.loader("train", 100))
    assert len(plain) == 13 and len(plain[-1][1]) == 94
    assert len(bundle.loader("train", 100, drop_last=True)) == 12
    x = torch.cat([b[0] for b in plain])
    assert x.dtype == torch.float32
    expected = (bundle.train.images - bundle.mean[0]) / bundle.std[0]
    assert torch.allclose(x, expected)
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1
    first = [y for _, y in bundle.loader("train", 100, shuffle=True, seed=5)]
    again = [y for _, y in bundle.loader("train", 100, shuffle=True, seed=5)]
    other = [y for _, y in bundle.loader("train", 100, shuffle=True, seed=6)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    assert sorted(torch.cat(first).tolist()) == sorted(bundle.train.labels.tolist())


def test_batches_draw_a_fixed_random_subset_of_a_split() -> None:
    bundle = load_dataset("digits")
    batches = bundle.batches("val", 32, limit=70)
    assert [len(y) for _, y in batches] == [32, 32, 6]
    again = torch.cat([y for _, y in bundle.batches("val", 70, limit=70)])
    assert torch.equal(torch.cat([y for _, y in batches]), again)
    assert sum(len(y) for _, y in bundle.batches("test", 64)) == 359


def test_limited_batches_of_a_class_ordered_split_cover_all_classes() -> None:
    labels = torch.arange(10).repeat_interleave(50)  # sorted by class, like CIFAR-10's class folders
    images = torch.zeros(500, 1, 2, 2, dtype=torch.uint8)
    split = Split(images, labels)
    bundle = DataBundle("sorted", 10, (1, 2, 2), split, split, split, mean=(0.5,), std=(0.5,))
    picked = torch.cat([y for _, y in bundle.batches("val", 100, limit=100)])
    assert len(picked.unique()) == 10


def rgb_bundle(n: int = 6) -> DataBundle:
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    split = Split(images, torch.zeros(n, dtype=torch.int64))
    return DataBundle("toy", 1, (3, 32, 32), split, split, split, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def test_augment_crops_and_flips_deterministically() -> None:
    bundle = rgb_bundle()
    x0 = next(iter(bundle.loader("train", 6, augment=True, seed=1)))[0]
    x1 = next(iter(bundle.loader("train", 6, augment=True, seed=1)))[0]
    x2 = next(iter(bundle.loader("train", 6, augment=True, seed=2)))[0]
    assert torch.equal(x0, x1) and not torch.equal(x0, x2)
    padded = torch.nn.functional.pad(bundle.train.images.float() / 255, (4, 4, 4, 4))
    for i in range(6):
        crops = [padded[i, :, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        crops += [c.flip(2) for c in crops]
        assert any(torch.allclose(x0[i], c) for c in crops), f"sample {i} is no crop or flip of its image"
    assert not torch.allclose(x0, bundle.normalize(bundle.train.images))


def test_augment_refused_for_non_rgb32() -> None:
    with pytest.raises(AutopruneError) as excinfo:
        load_dataset("digits").loader("train", 8, augment=True)
    one_line_error(excinfo, "32×32 RGB")


def test_bundle_checks_its_fields() -> None:
    images = torch.zeros(4, 1, 8, 8)
    with pytest.raises(AutopruneError, match="labels must lie"):
        split = Split(images, torch.tensor([0, 1, 2, 3]))
        DataBundle("bad", 3, (1, 8, 8), split, split, split, (0.5,), (0.5,))
    with pytest.raises(AutopruneError, match="shape"):
        split = Split(images, torch.zeros(4, dtype=torch.int64))
        DataBundle("bad", 3, (1, 7, 7), split, split, split, (0.5,), (0.5,))


# --- cifar10 from JPEG folders, archives and pickles --------------------------------------------------------------


def write_jpeg_tree(root: Path, per_class: int = 4) -> None:
    for split in ("train", "test"):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (32, 32), colour).save(folder / f"{i:04d}.jpg", quality=95)


def write_tar(source: Path, archive: Path, arcname: str) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=arcname)
    return archive


def check_colour_labels(bundle: DataBundle) -> None:
    """Labels follow the sorted class names (ant, bee, cat), and each image has its class's colour."""
    assert bundle.classes == ("ant", "bee", "cat")
    for split in (bundle.train, bundle.val, bundle.test):
        for image, label in zip(split.images, split.labels, strict=True):
            colour = torch.tensor(COLOURS[bundle.classes[label]], dtype=torch.float32)
            assert (image.float().mean((1, 2)) - colour).abs().max() < 4


def test_cifar10_from_jpeg_folder(tmp_path: Path) -> None:
    write_jpeg_tree(tmp_path / "data")
    bundle = load_dataset("cifar10", data_dir=tmp_path / "data", val_size=3, cache_dir=tmp_path / "cache")
    assert (bundle.num_classes, bundle.input_shape) == (3, (3, 32, 32))
    assert [len(s.labels) for s in (bundle.train, bundle.val, bundle.test)] == [9, 3, 12]
    assert bundle.train.images.dtype == torch.uint8
    assert bundle.test.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    check_colour_labels(bundle)
    x, _ = next(iter(bundle.loader("train", 4, augment=True)))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32


@pytest.mark.parametrize("arcname", [".", "cifar10-jpeg"])
def test_cifar10_from_tar_gz_matches_folder(tmp_path: Path, arcname: str) -> None:
    write_jpeg_tree(tmp_path / "data")
    archive = write_tar(tmp_path / "data", tmp_path / "c.tar.gz", arcname)
    from_tar = load_dataset("cifar10", data_dir=archive, cache_dir=tmp_path / "c1")
    from_dir = load_dataset("cifar10", data_dir=tmp_path / "data", cache_dir=tmp_path / "c2")
    check_colour_labels(from_tar)
    for a, b in zip((from_tar.train, from_tar.test), (from_dir.train, from_dir.test), strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_cifar10_folder_holding_one_dataset_folder(tmp_path: Path) -> None:
    write_jpeg_tree(tmp_path / "outer" / "cifar")
    bundle = load_dataset("cifar10", data_dir=tmp_path / "outer", cache_dir=tmp_path / "cache")
    assert len(bundle.test.labels) == 12


def write_pickles(folder: Path, n: int = 3, meta: bool = True) -> np.ndarray:
    """Tiny python batches of `n` images each, as CIFAR-10's own (bytes keys, flat rows); returns all pixels."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6 * n, 3072), dtype=np.uint8)
    for i, name in enumerate([*cifar10.PICKLE_TRAIN, cifar10.PICKLE_TEST]):
        rows = pixels[i * n : (i + 1) * n]
        batch = {b"data": rows, b"labels": [(i + j) % 10 for j in range(n)], b"batch_label": b"x"}
        (folder / name).write_bytes(pickle.dumps(batch))
    if meta:
        names = [c.encode() for c in cifar10.CLASSES]
        (folder / cifar10.PICKLE_META).write_bytes(pickle.dumps({b"label_names": names}))
    return pixels.reshape(-1, 3, 32, 32)


def test_cifar10_from_pickles_folder_and_archive(tmp_path: Path) -> None:
    pixels = write_pickles(tmp_path / "src" / "cifar-10-batches-py")
    archive = write_tar(tmp_path / "src" / "cifar-10-batches-py", tmp_path / "py.tar.gz", "cifar-10-batches-py")
    for source in (tmp_path / "src", archive):
        bundle = load_dataset("cifar10", data_dir=source, val_size=0, cache_dir=tmp_path / "cache")
        assert bundle.classes == cifar10.CLASSES and bundle.num_classes == 10
        assert torch.equal(bundle.train.images, torch.from_numpy(pixels[:15]))
        assert torch.equal(bundle.test.images, torch.from_numpy(pixels[15:]))
        assert bundle.train.labels[:4].tolist() == [0, 1, 2, 1]


def test_cifar10_pickle_refuses_foreign_objects(tmp_path: Path) -> None:
    write_pickles(tmp_path / "py", meta=False)
    (tmp_path / "py" / "test_batch").write_bytes(pickle.dumps({b"data": os.getcwd, b"labels": []}))
    with pytest.raises(AutopruneError) as excinfo:
        load_dataset("cifar10", data_dir=tmp_path / "py", cache_dir=tmp_path / "cache")
    one_line_error(excinfo, "test_batch")


def test_cifar10_second_load_uses_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jpeg_tree(tmp_path / "data")
    archive = write_tar(tmp_path / "data", tmp_path / "c.tar.gz", ".")
    first = load_dataset("cifar10", data_dir=archive, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("cifar10-*.npz"))) == 1

    def no_decoding(path: Path) -> None:
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(cifar10, "read_source", no_decoding)
    second = load_dataset("cifar10", data_dir=archive, cache_dir=tmp_path / "cache")
    assert torch.equal(first.train.images, second.train.images)
    assert first.classes == second.classes
    # A changed source is a cache miss.
    os.utime(archive, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset("cifar10", data_dir=archive, cache_dir=tmp_path / "cache")


def test_cifar10_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jpeg_tree(tmp_path / "data", per_class=1)
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "env-cache"))
    load_dataset("cifar10", data_dir=tmp_path / "data", val_size=0)
    assert len(list((tmp_path / "env-cache").glob("cifar10-*.npz"))) == 1


# --- fashion-mnist ------------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, n_train: int = 20, n_test: int = 5, gz: bool = True) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    arrays = {
        "train-images-idx3-ubyte": train_images,
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for name, array in arrays.items():
        data = idx_bytes(array)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return train_images


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_idx_files(tmp_path: Path, gz: bool) -> None:
    train_images = write_idx_set(tmp_path, gz=gz)
    bundle = load_dataset("fashion-mnist", data_dir=tmp_path, val_size=5)
    assert (bundle.num_classes, bundle.input_shape) == (10, (1, 28, 28))
    assert [len(s.labels) for s in (bundle.train, bundle.val, bundle.test)] == [15, 5, 5]
    both = torch.cat([bundle.train.images, bundle.val.images])
    assert sorted(map(bytes, both.numpy())) == sorted(map(bytes, train_images[:, None]))
    assert bundle.test.labels.tolist() == [0, 1, 2, 3, 4]


def test_read_idx_rejects_corrupt_files(tmp_path: Path) -> None:
    good = idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8))
    cases = {"magic": b"\x00\x00\x0d\x03" + good[4:], "short": good[:-1], "gzip.gz": b"not gzip", "empty": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(AutopruneError) as excinfo:
            read_idx(tmp_path / name)
        one_line_error(excinfo, name)
    (tmp_path / "ok").write_bytes(good)
    assert read_idx(tmp_path / "ok").shape == (2, 3, 3)


def test_fashion_mnist_missing_files(tmp_path: Path) -> None:
    write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(AutopruneError) as excinfo:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    one_line_error(excinfo, "t10k-labels-idx1-ubyte", "--data-dir")
    with pytest.raises(AutopruneError) as excinfo:
        load_dataset("fashion-mnist", data_dir=tmp_path / "nowhere")
    one_line_error(excinfo, "nowhere", "dataset-fashion-mnist")


# --- names, factories, errors -------------------------------------------------------------------------------------


def test_registry_lists_builtin_datasets() -> None:
    assert set(DATASETS) == {"digits", "cifar10", "fashion-mnist"}
    assert all(spec.description and "\n" not in spec.description for spec in DATASETS.values())


def test_user_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_data.py").write_text(
        "from autoprune.data import load_dataset\n"
        "def make(seed):\n"
        "    return load_dataset('digits', seed=seed, val_size=50)\n"
        "def wrong():\n"
        "    return 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_data", raising=False)
    bundle = load_dataset("my_data:make", seed=4)
    assert len(bundle.val.labels) == 50
    assert torch.equal(bundle.val.labels, load_dataset("digits", seed=4, val_size=50).val.labels)
    for name, fragment in [("my_data:wrong", "DataBundle"), ("my_data:nope", "nope"), ("no_such_mod:f", "import")]:
        with pytest.raises(AutopruneError) as excinfo:
            load_dataset(name)
        one_line_error(excinfo, fragment)


def test_unknown_dataset_lists_names() -> None:
    with pytest.raises(AutopruneError) as excinfo:
        load_dataset("imagenet")
    one_line_error(excinfo, "imagenet", "digits", "cifar10", "fashion-mnist")


def test_cifar10_without_data_dir() -> None:
    with pytest.raises(AutopruneError) as excinfo:
        load_dataset("cifar10")
    one_line_error(excinfo, "--data-dir", ".tar.gz")


def test_cifar10_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(AutopruneError) as excinfo:
        load_dataset("cifar10", data_dir=tmp_path / "missing", cache_dir=tmp_path)
    one_line_error(excinfo, "not found", "--data-dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AutopruneError) as excinfo:
        load_dataset("cifar10", data_dir=tmp_path / "empty", cache_dir=tmp_path)
    one_line_error(excinfo, "known layout")


def test_cifar10_corrupt_archives(tmp_path: Path) -> None:
    write_jpeg_tree(tmp_path / "data")
    whole = write_tar(tmp_path / "data", tmp_path / "whole.tar.gz", ".").read_bytes()
    (tmp_path / "junk.tar.gz").write_bytes(b"this is not an archive")
    (tmp_path / "cut.tar.gz").write_bytes(whole[: len(whole) // 2])
    for name in ("junk.tar.gz", "cut.tar.gz"):
        with pytest.raises(AutopruneError) as excinfo:
            load_dataset("cifar10", data_dir=tmp_path / name, cache_dir=tmp_path / "cache")
        one_line_error(excinfo, name, "cannot read archive")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for split in ("train", "test"):
            info = tarfile.TarInfo(f"{split}/cat/0.jpg")
            info.size = 5
            tar.addfile(info, io.BytesIO(b"nojpg"))
    (tmp_path / "badjpg.tar.gz").write_bytes(buffer.getvalue())
    with pytest.raises(AutopruneError) as excinfo:
        load_dataset("cifar10", data_dir=tmp_path / "badjpg.tar.gz", cache_dir=tmp_path / "cache")
    one_line_error(excinfo, "test/cat/0.jpg")
    assert not list((tmp_path / "cache").glob("*.npz"))


# --- the developers' shared copy of CIFAR-10 ----------------------------------------------------------------------


@pytest.mark.slow
def test_shared_cifar10_jpeg_archive(tmp_path: Path) -> None:
    archive = SHARED_DATA / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} not present")
    start = time.perf_counter()
    bundle = load_dataset("cifar10", data_dir=archive, cache_dir=tmp_path)
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    again = load_dataset("cifar10", data_dir=archive, cache_dir=tmp_path)
    cached_s = time.perf_counter() - start
    print(f"decode {decode_s:.1f} s, cached load {cached_s:.2f} s")
    assert bundle.classes == cifar10.CLASSES
    assert [len(s.labels) for s in (bundle.train, bundle.val, bundle.test)] == [45000, 5000, 10000]
    assert bundle.test.labels.bincount().tolist() == [1000] * 10
    assert torch.equal(bundle.val.images, again.val.images)
    assert cached_s < 2.0


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width`×`height` RGB pixels (its pixel data is empty)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def image_tree(root: Path, image: bytes, suffix: str = ".png") -> Path:
    """A cifar10-style folder whose every image is `image`."""
    for split in ("train", "test"):
        for name in ("ant", "bee"):
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                (root / split / name / f"{i}{suffix}").write_bytes(image)
    return root


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("image", "fragments"),
    [
        (png(4096, 4096), ("4096×4096", "decompression bomb")),  # 16 Mpx in 17 KiB
        (png_header(30000, 30000), ("decompression bomb",)),  # past PIL's own limit: refused by Image.open
        (png(1, 1), ("1×1", "at least 8")),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, ("cannot decode",)),
    ],
    ids=["bomb", "huge-header", "1x1", "corrupt"],
)
def test_cifar10_images_refused_before_decoding(tmp_path: Path, image: bytes, fragments: tuple[str, ...]) -> None:
    data = image_tree(tmp_path / "data", image)
    with pytest.raises(AutopruneError) as excinfo:
        load_dataset("cifar10", data_dir=data, cache_dir=tmp_path / "cache")
    one_line_error(excinfo, *fragments)


def test_cifar10_images_of_different_sizes(tmp_path: Path) -> None:
    data = image_tree(tmp_path / "data", png(16, 16))
    (data / "train" / "bee" / "1.png").write_bytes(png(32, 16))
    with pytest.raises(AutopruneError) as excinfo:
        load_dataset("cifar10", data_dir=data, cache_dir=tmp_path / "cache")
    one_line_error(excinfo, "16×32", "one size")
