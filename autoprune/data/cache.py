"""Where decoded datasets and the default model are cached, and how cache entries are keyed and written."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from autoprune.atomic import atomic_write
from autoprune.data._messages import one_line


def cache_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """`path` if given, else `$AUTOPRUNE_CACHE`, else `~/.cache/autoprune`."""
    if path is None:
        path = os.environ.get("AUTOPRUNE_CACHE") or Path.home() / ".cache" / "autoprune"
    return Path(path).expanduser()


def source_key(path: Path) -> str:
    """A short hash of a file's or folder's path, sizes and modification times; it changes when they do."""
    root = path.resolve()
    entries = [_stat_line(root, root)] if root.is_file() else sorted(_walk(root, root))
    return hashlib.sha256("\n".join([str(root), *entries]).encode()).hexdigest()[:16]


def _walk(root: Path, folder: Path) -> Iterator[str]:
    # os.scandir, not Path.rglob: 60,000 CIFAR files take 0.4 s instead of 2.4 s.
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir():
                yield from _walk(root, Path(entry.path))
            elif entry.is_file():
                yield _stat_line(root, Path(entry.path))


def _stat_line(root: Path, file: Path) -> str:
    st = file.stat()
    return f"{file.relative_to(root) if file != root else ''}\0{st.st_size}\0{st.st_mtime_ns}"


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays saved at `path`, or None if it is missing or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as e:
        warnings.warn(f"ignoring unreadable cache file {path} ({one_line(e)}); rebuilding it", stacklevel=2)
        return None


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` to `path` with `write_atomic`."""
    write_atomic(path, lambda f: np.savez(f, **arrays))


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a cache file atomically (see `autoprune.atomic`); a cache that cannot be written only warns."""
    try:
        atomic_write(path, write)
    except OSError as e:
        warnings.warn(
            f"could not write cache file {path} ({one_line(e)}); set AUTOPRUNE_CACHE to a writable folder", stacklevel=3
        )
