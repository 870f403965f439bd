"""The entrypoint of a submitted Ray Job: run an `autoprune` command, then print its results into the job's log.

`python -m autoprune.distributed.job --job-id ID -- search --target-flops 0.5 ...` runs `autoprune search ...`
on the cluster (its run directory: the command's `--out`/`--resume`, else `<tmp>/autoprune-jobs/ID`), then prints
the small result files (plan.json, summary.md, metrics.csv, pruned.pt, ...) as a base64 tar.gz between two
marker lines. The submitting client reads them back from the job's log, so no shared filesystem is needed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

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
"""Files of a run (or sweep) directory sent back, where they exist."""

MAX_BYTES = 64 * 2**20
"""Files larger than this stay on the cluster (the plan is enough to rebuild the pruned model with `apply`)."""

BEGIN = "=== autoprune results begin"
END = "=== autoprune results end ==="
_LINE = 76


def run_dir(args: Sequence[str], job_id: str) -> tuple[list[str], Path]:
    """The command's arguments with an `--out` added where it has none, and its run directory."""
    args = list(args)
    for flag in ("--out", "--resume"):
        for i, arg in enumerate(args):
            if arg == flag and i + 1 < len(args):
                return args, Path(args[i + 1])
            if arg.startswith(flag + "="):
                return args, Path(arg.split("=", 1)[1])
    out = Path(tempfile.gettempdir()) / "autoprune-jobs" / job_id
    return [*args, "--out", str(out)], out


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


def emit(payload: bytes, out=sys.stdout) -> None:
    """Print `payload` as base64 lines between the markers (the first carries its size and SHA-256)."""
    text = base64.b64encode(payload).decode()
    digest = hashlib.sha256(payload).hexdigest()
    out.write(f"{BEGIN} bytes={len(payload)} sha256={digest} ===\n")
    for start in range(0, len(text), _LINE):
        out.write(text[start : start + _LINE] + "\n")
    out.write(END + "\n")
    out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command, then emit its results (also after a failure, where any exist); returns its exit code."""
    parser = argparse.ArgumentParser(prog="python -m autoprune.distributed.job")
    parser.add_argument("--job-id", required=True, help="names the default run directory")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- <autoprune command and options>")
    ns = parser.parse_args(argv)
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    if not command:
        parser.error("give the autoprune command to run after --")
    command, directory = run_dir(command, ns.job_id)
    print(f"autoprune job {ns.job_id}: running autoprune {' '.join(command)}", flush=True)
    code = subprocess.call([sys.executable, "-m", "autoprune.cli", *command])
    if directory.is_dir():
        payload, notes = pack(directory)
        for note in notes:
            print(f"autoprune job {ns.job_id}: {note}", flush=True)
        emit(payload)
    return code


if __name__ == "__main__":
    sys.exit(main())
