"""The run directory: metrics (CSV and TensorBoard) and checkpoints that survive a SIGKILL.

Every evaluation appends one CSV row (flushed). A checkpoint records how many rows it covers; resuming cuts the
CSV back to that count and purges later TensorBoard steps, so the evaluations after the checkpoint are redone
and appear exactly once. One process writes a run directory at a time (`RunDir.locked`), and a resume reads
its files as data that may be damaged or crafted (`read_metrics`, `autoprune.search.state`).
"""

from __future__ import annotations

import csv
import fcntl
import itertools
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.atomic import atomic_write_text
from autoprune.data._messages import one_line
from autoprune.errors import AutopruneError
from autoprune.outputs import check_writable_folder

COLUMNS = (
    "evaluation",
    "score",
    "best_score",
    "flops_ratio",
    "params_ratio",
    "reward",
    "violation",
    "lagrange",
    "seconds",
    "images",
    "probe",
)
LOCK = ".lock"
"""The file a run's owner holds an exclusive `flock` on."""


class RunDir:
    """Files of one search run.

    Args:
        path: the run directory (created by `locked`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.metrics_path = self.path / "metrics.csv"
        self.state_path = self.path / "checkpoint" / "state.json"
        self._csv = None
        self._writer = None
        self._tb = None

    # -- ownership -------------------------------------------------------------------------------------------
    def check_new(self) -> None:
        """Raise AutopruneError unless a new run can be written here (nothing is created yet)."""
        if self.path.exists() and not self.path.is_dir():
            raise AutopruneError(f"--out {self.path} is a file; give a directory for the run")
        if self.config_path.exists():
            raise AutopruneError(
                f"{self.path} already holds a run; continue it with --resume {self.path} or choose another --out"
            )
        check_writable_folder(self.path, f"run directory {self.path}")

    @contextmanager
    def locked(self) -> Iterator[RunDir]:
        """Hold this run's exclusive lock (creating the directory) while the block runs.

        One process writes a run directory at a time: a second search with the same --out, or a --resume of a
        running search, gets an AutopruneError. The kernel releases the lock when its holder exits or is killed.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise AutopruneError(f"cannot create run directory {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AutopruneError(
                f"{self.path} is in use by another autoprune process (a search or its --resume); wait for it to "
                "finish, or choose another --out"
            ) from None
        try:
            yield self
        finally:
            os.close(fd)

    # -- metrics ---------------------------------------------------------------------------------------------
    def read_metrics(self, count: int) -> list[list[str]]:
        """The first `count` rows of metrics.csv, checked: its header, evaluations 1..count in order, numbers."""
        if count == 0:
            return []
        problem = None
        try:
            with open(self.metrics_path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                rows = list(itertools.islice(reader, count))
        except FileNotFoundError:
            problem = "is missing"
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            problem = f"is unreadable ({one_line(exc)[:120]})"
        else:
            if header != list(COLUMNS):
                problem = "does not start with the metrics header"
            elif len(rows) < count:
                problem = f"has {len(rows)} rows"
            else:
                bad = next((i for i, row in enumerate(rows, 1) if not _valid_row(row, i)), None)
                problem = None if bad is None else f"row {bad} is not evaluation {bad}'s metrics"
        if problem:
            raise AutopruneError(
                f"{self.metrics_path} {problem}, but the checkpoint covers {count} evaluations; the run cannot be "
                "resumed (start a new run)"
            )
        return rows

    def open_metrics(self, rows: list[list[str]]) -> None:
        """Rewrite metrics.csv with `rows` (from `read_metrics`; none for a new run), then append from there."""
        atomic_write_text(self.metrics_path, ",".join(COLUMNS) + "\n" + "".join(",".join(r) + "\n" for r in rows))
        self._csv = open(self.metrics_path, "a", newline="")  # noqa: SIM115 - closed in close()
        self._writer = csv.writer(self._csv, lineterminator="\n")  # LF like the header (csv defaults to CRLF)
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(self.path / "tb"), purge_step=len(rows) + 1 if rows else None)

    def log(self, record: dict[str, Any]) -> None:
        """Append one evaluation's metrics."""
        self._writer.writerow([_fmt(record.get(c, "")) for c in COLUMNS])
        self._csv.flush()
        step = int(record["evaluation"])
        for key in ("score", "best_score", "flops_ratio", "params_ratio", "reward", "lagrange"):
            if record.get(key) is not None:
                self._tb.add_scalar(f"search/{key}", float(record[key]), step)

    # -- checkpoints -----------------------------------------------------------------------------------------
    def save_state(self, state: dict[str, Any]) -> None:
        """Write the checkpoint state (JSON-able; numpy arrays become lists) atomically."""
        atomic_write_text(self.state_path, json.dumps(_jsonable(state)))
        if self._tb is not None:
            self._tb.flush()

    def load_state(self) -> Any:
        """The last checkpoint's state as parsed JSON (see `autoprune.search.state`), or None when there is none."""
        if not self.state_path.exists():
            return None
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError, RecursionError) as exc:  # JSON and UTF-8 errors are ValueErrors
            raise AutopruneError(f"checkpoint {self.state_path} is corrupt: {one_line(exc)[:120]}") from None

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
            self._csv = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _valid_row(row: list[str], evaluation: int) -> bool:
    """A metrics row of `evaluation`: one cell per column, each a number or empty."""
    return len(row) == len(COLUMNS) and row[0] == str(evaluation) and all(map(_is_number, filter(None, row)))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}"
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
