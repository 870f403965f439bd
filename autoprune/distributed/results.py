"""A submitted job's results: which files travel back, how they are printed into its log, and how they land.

The job (`autoprune.distributed.job`) packs the result files of its run directory as a tar.gz and prints it base64
between two marker lines at the end of its log; the client (`autoprune.distributed.submit`) cuts it out and unpacks
it. The log is the cluster's to write, so the client trusts nothing in it: only the file names in `RESULT_FILES`,
plain files only, at most `MAX_UNPACKED` bytes once inflated (counted while inflating), nothing overwritten
without `force`, no symbolic link in the destination followed, and nothing written at all unless every entry is
acceptable (they are unpacked into a temporary folder beside the destination, then moved in).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import hashlib
import io
import os
import re
import secrets
import shutil
import sys
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO, TextIO

from autoprune.errors import AutopruneError

RESULT_FILES = (
    "plan.json",
    "summary.md",
    "metrics.csv",
    "pruned.pt",
    "config.json",
    "trials.csv",
    "comparison.md",
    "comparison.csv",
    "comparison_summary.csv",
)
"""Files of a run (or sweep) directory sent back, where they exist; the client accepts no other name."""

MAX_BYTES = 64 * 2**20
"""Files larger than this stay on the cluster (the plan is enough to rebuild the pruned model with `apply`)."""

MAX_UNPACKED = 512 * 2**20
"""The most bytes a results payload may inflate to (all files and tar headers together)."""

BEGIN = "=== autoprune results begin"
END = "=== autoprune results end ==="
NONE = "=== autoprune results: none"
"""Printed instead of a payload by a job whose command writes no run directory (e.g. `info`)."""

_LINE = 76
HEADER = re.compile(r"bytes=(\d+) sha256=([0-9a-f]{64})")
"""The size and SHA-256 of the payload, on the first marker line."""
_CHUNK = 2**20


def pack(directory: Path) -> tuple[bytes, list[str]]:
    """A gzipped tar of the result files in `directory`, and notes on those left out."""
    buffer = io.BytesIO()
    notes = []
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in RESULT_FILES:
            path = directory / name
            if not path.is_file():
                continue
            if path.stat().st_size > MAX_BYTES:
                notes.append(f"{name} ({path.stat().st_size / 2**20:.0f} MiB) left on the cluster in {directory}")
                continue
            tar.add(path, arcname=name)
    return buffer.getvalue(), notes


def emit(payload: bytes, out: TextIO | None = None) -> None:
    """Print `payload` as base64 lines between the markers (the first carries its size and SHA-256)."""
    out = sys.stdout if out is None else out
    text = base64.b64encode(payload).decode()
    digest = hashlib.sha256(payload).hexdigest()
    out.write(f"{BEGIN} bytes={len(payload)} sha256={digest} ===\n")
    for start in range(0, len(text), _LINE):
        out.write(text[start : start + _LINE] + "\n")
    out.write(END + "\n")
    out.flush()


def extract_payload(logs: str, job_id: str = "the job") -> bytes | None:
    """The bytes between the last pair of result markers in `logs`, checked against their size and SHA-256.

    Returns:
        The payload, or None where the job said its command writes no run directory.
    """
    lines = logs.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith(BEGIN)]
    if not starts:
        if any(ln.startswith(NONE) for ln in lines):
            return None
        raise AutopruneError(f"{job_id} printed no results (its command wrote no run directory)")
    start = starts[-1]
    try:
        end = lines.index(END, start)
    except ValueError:
        raise AutopruneError(f"the results in the log of {job_id} are cut short") from None
    header = HEADER.search(lines[start])
    try:
        payload = base64.b64decode("".join(ln.strip() for ln in lines[start + 1 : end]), validate=True)
    except binascii.Error:
        raise AutopruneError(f"the results in the log of {job_id} are garbled") from None
    if header and (len(payload) != int(header.group(1)) or hashlib.sha256(payload).hexdigest() != header.group(2)):
        raise AutopruneError(f"the results in the log of {job_id} fail their checksum")
    return payload


def check_destination(dest: Path, force: bool = False, names: tuple[str, ...] = RESULT_FILES) -> None:
    """Refuse a destination that results could not be written into safely.

    Args:
        dest: the folder results go to (it need not exist yet).
        force: allow replacing result files already there.
        names: the result files to look for.

    Raises:
        AutopruneError: `dest` is a symbolic link or not a folder, one of `names` in it is a symbolic link or
            not a plain file, or one exists and `force` is not given.
    """
    if dest.is_symlink():
        raise AutopruneError(f"refusing to write results into {dest}: it is a symbolic link (give the real folder)")
    if not dest.exists():
        return
    if not dest.is_dir():
        raise AutopruneError(f"refusing to write results into {dest}: it exists and is not a folder")
    for name in names:
        target = dest / name
        if target.is_symlink():
            raise AutopruneError(f"refusing to write results into {dest}: {name} there is a symbolic link")
        if target.exists() and not target.is_file():
            raise AutopruneError(f"refusing to write results into {dest}: {name} there is not a plain file")
        if target.exists() and not force:
            raise AutopruneError(
                f"{target} already exists; pass --force to overwrite it, or give another --download folder"
            )


class _Capped(io.RawIOBase):
    """A readable stream that raises once more than `limit` bytes have been read through it."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        self.raw = raw
        self.limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        self.count += len(data)
        if self.count > self.limit:
            raise _TooLarge
        buffer[: len(data)] = data
        return len(data)


class _TooLarge(Exception):
    pass


def unpack(payload: bytes, dest: Path, force: bool = False, max_bytes: int = MAX_UNPACKED) -> list[Path]:
    """Write the result files of a payload into `dest`: all of them, or none.

    Args:
        payload: a tar.gz from `pack` (as cut out of a log by `extract_payload`).
        dest: the folder to write into (created where missing).
        force: replace result files already in `dest`.
        max_bytes: the most bytes the payload may inflate to.

    Returns:
        The files written, in the payload's order.

    Raises:
        AutopruneError: the payload is not a tar.gz, holds an entry other than a plain file named in
            `RESULT_FILES` (or one twice), inflates past `max_bytes`, or `dest` is refused by `check_destination`.
    """
    check_destination(dest, force)
    staging = dest.parent / f".{dest.name}.{secrets.token_hex(4)}.partial"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError as exc:
        raise AutopruneError(f"cannot create {staging}: {exc.strerror or exc}") from None
    try:
        names = _unpack_into(payload, staging, max_bytes)
        check_destination(dest, force, tuple(names))  # again: the folder may have changed while unpacking
        try:
            if not dest.exists():
                staging.rename(dest)  # the whole folder appears at once
            else:
                for name in names:
                    os.replace(staging / name, dest / name)  # replaces a link made meanwhile, never follows it
        except OSError as exc:
            raise AutopruneError(f"cannot move the results into {dest}: {exc.strerror or exc}") from None
        return [dest / name for name in names]
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)


def _unpack_into(payload: bytes, staging: Path, max_bytes: int) -> list[str]:
    stream = _Capped(gzip.GzipFile(fileobj=io.BytesIO(payload)), max_bytes)
    names: list[str] = []
    try:
        with tarfile.open(fileobj=io.BufferedReader(stream, _CHUNK), mode="r|") as tar:
            for member in tar:
                name = member.name
                if name not in RESULT_FILES or not member.isfile():
                    raise AutopruneError(
                        f"refusing results entry {name!r}: only the plain files {', '.join(RESULT_FILES)} are expected"
                    )
                if name in names:
                    raise AutopruneError(f"refusing results entry {name!r}: it appears twice")
                if member.size > max_bytes - stream.count:
                    raise _TooLarge
                source = tar.extractfile(member)
                with open(staging / name, "xb") as f:
                    while chunk := source.read(_CHUNK):
                        f.write(chunk)
                names.append(name)
    except _TooLarge:
        raise AutopruneError(f"refusing the results: they inflate to more than {max_bytes / 2**20:.0f} MiB") from None
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise AutopruneError(f"the results are not a readable tar.gz archive ({_reason(exc)})") from None
    except OSError as exc:  # writing the staging folder (e.g. a full disk)
        raise AutopruneError(f"cannot write the results into {staging}: {exc.strerror or exc}") from None
    return names


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
