"""The entrypoint of a submitted Ray Job: run an `autoprune` command, then print its results into the job's log.

`python -m autoprune.distributed.job --job-id ID -- search --target-flops 0.5 ...` runs `autoprune search ...`
on the cluster (its run directory: the command's `--out`/`--resume`, else `<tmp>/autoprune-jobs/ID`), then prints
the small result files (`results.RESULT_FILES`: plan.json, summary.md, metrics.csv, pruned.pt, ...) as a base64
tar.gz between two marker lines. The submitting client reads them back from the job's log, so no shared
filesystem is needed. A command that writes no run directory (`info`, `apply`, `--help`) runs as given and
prints a line saying there are no results instead.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from autoprune.distributed.results import BEGIN, END, NONE, RESULT_FILES, emit, pack

__all__ = ["BEGIN", "END", "RESULT_FILES", "RUN_COMMANDS", "emit", "main", "pack", "run_dir"]

RUN_COMMANDS = ("search", "baseline", "sweep", "tune")
"""The commands whose `--out` (or `--resume`) is a run directory; only these are given a default `--out`."""


def run_dir(args: Sequence[str], job_id: str) -> tuple[list[str], Path | None]:
    """The command's arguments, with an `--out` added where a run command has none, and its run directory.

    Returns:
        The arguments to run, and the run directory (None for a command that writes none, such as `info`).
    """
    args = list(args)
    if not args or args[0] not in RUN_COMMANDS or "--help" in args or "-h" in args:
        return args, None
    for flag in ("--out", "--resume"):
        for i, arg in enumerate(args):
            if arg == flag and i + 1 < len(args):
                return args, Path(args[i + 1])
            if arg.startswith(flag + "="):
                return args, Path(arg.split("=", 1)[1])
    out = Path(tempfile.gettempdir()) / "autoprune-jobs" / job_id
    return [*args, "--out", str(out)], out


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
    if directory is None:
        print(f"{NONE} (`autoprune {command[0]}` writes no run directory) ===", flush=True)
    elif directory.is_dir():
        payload, notes = pack(directory)
        for note in notes:
            print(f"autoprune job {ns.job_id}: {note}", flush=True)
        emit(payload)
    return code


if __name__ == "__main__":
    sys.exit(main())
