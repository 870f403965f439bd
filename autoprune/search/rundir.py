"""The run directory: metrics (CSV and TensorBoard) and checkpoints that survive a SIGKILL.

Every evaluation appends one CSV row (flushed). A checkpoint records how many rows it covers; resuming cuts the
CSV back to that count and purges later TensorBoard steps, so the evaluations after the checkpoint are redone
and appear exactly once.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.atomic import atomic_write_text
from autoprune.errors import AutopruneError

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
)


class RunDir:
    """Files of one search run.

    Args:
        path: the run directory (created if missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoint").mkdir(exist_ok=True)
        self.metrics_path = self.path / "metrics.csv"
        self.state_path = self.path / "checkpoint" / "state.json"
        self._csv = None
        self._writer = None
        self._tb = None

    # -- metrics ---------------------------------------------------------------------------------------------
    def open_metrics(self, keep_rows: int) -> None:
        """Start appending metrics after the first `keep_rows` evaluations (0: a new run)."""
        rows: list[list[str]] = []
        if keep_rows and self.metrics_path.exists():
            with open(self.metrics_path, newline="") as f:
                rows = list(csv.reader(f))[1 : keep_rows + 1]
        atomic_write_text(self.metrics_path, ",".join(COLUMNS) + "\n" + "".join(",".join(r) + "\n" for r in rows))
        self._csv = open(self.metrics_path, "a", newline="")  # noqa: SIM115 - closed in close()
        self._writer = csv.writer(self._csv)
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(self.path / "tb"), purge_step=keep_rows + 1 if keep_rows else None)

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

    def load_state(self) -> dict[str, Any] | None:
        """The last checkpoint's state, or None when the run has none yet."""
        if not self.state_path.exists():
            return None
        try:
            return json.loads(self.state_path.read_text())
        except json.JSONDecodeError as exc:
            raise AutopruneError(f"checkpoint {self.state_path} is corrupt: {exc}") from None

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
            self._csv = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


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
