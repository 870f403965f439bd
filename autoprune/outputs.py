"""Output paths: checked before any work is done, and written with a one-line error when the system refuses."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from autoprune.errors import AutopruneError


def check_output_file(path: str | Path, option: str) -> Path:
    """`path` if a file can be written there: not a directory, in a folder that exists or can be made, writable.

    Args:
        path: where the file goes.
        option: the CLI option that named it, for the message (e.g. "--onnx").
    """
    path = Path(path)
    if path.is_dir():
        raise AutopruneError(f"{option} {path} is a directory; give a file name")
    check_writable_folder(path.parent, f"{option} {path}")
    return path


def check_writable_folder(folder: Path, what: str) -> None:
    """Raise AutopruneError unless `folder` is, or can be created as, a folder this process may write to."""
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise AutopruneError(f"cannot write {what}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AutopruneError(f"cannot write {what}: folder {existing} is not writable")


@contextmanager
def writing(path: str | Path, option: str) -> Iterator[None]:
    """Turn an OSError while writing `path` (a read-only folder, a full disk) into a one-line AutopruneError."""
    try:
        yield
    except OSError as exc:
        raise AutopruneError(f"cannot write {option} {path}: {exc.strerror or exc}") from None
