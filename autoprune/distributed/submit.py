"""Submit an `autoprune` command to a Ray cluster as a Ray Job, follow its log, and fetch its results.

The job runs `python -m autoprune.distributed.job`, which prints the run directory's small result files as a
base64 tar.gz between marker lines at the end of its log; `fetch_results` cuts them out of the log and unpacks
them locally, so client and cluster need no shared filesystem.

Token authentication (on by default for clusters started with `ray start` since Ray 2.59): the bearer token is
taken from `token`, else `RAY_AUTH_TOKEN`, else the file named by `RAY_AUTH_TOKEN_PATH`, else
`~/.ray/auth_token` (where `ray start` / `ray get-auth-token --generate` put it on the head).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import os
import re
import shlex
import tarfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autoprune.distributed.job import BEGIN, END
from autoprune.errors import AutopruneError

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_HEADER = re.compile(r"bytes=(\d+) sha256=([0-9a-f]{64})")


def find_token(token: str | None = None) -> str | None:
    """The cluster's auth token: `token`, `RAY_AUTH_TOKEN`, the file at `RAY_AUTH_TOKEN_PATH`, `~/.ray/auth_token`."""
    if token:
        return token.strip()
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path_env = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path_env:
        try:
            return Path(path_env).expanduser().read_text().strip() or None
        except OSError as exc:
            raise AutopruneError(f"RAY_AUTH_TOKEN_PATH={path_env} cannot be read: {exc.strerror}") from None
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        return default.read_text().strip() or None
    return None


class JobClient:
    """A `JobSubmissionClient` for `address` (`http://host:8265`) with the auth token in its headers.

    Args:
        address: the cluster's dashboard (Jobs API) address.
        token: the auth token (default: see `find_token`).
    """

    def __init__(self, address: str, token: str | None = None) -> None:
        import logging

        from ray.job_submission import JobSubmissionClient

        logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)  # no INFO line per stream end
        self.address = address
        token = find_token(token)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            self.client = JobSubmissionClient(address, headers=headers)
        except Exception as exc:  # ConnectionError, AuthenticationError, ValueError for bad addresses...
            raise AutopruneError(_explain(exc, address, token)) from None

    def submit(
        self,
        args: Sequence[str],
        python: str = "python",
        runtime_env: dict[str, Any] | None = None,
        job_id: str | None = None,
    ) -> str:
        """Start `autoprune <args>` as a job; returns its id (`autoprune-<time>-<hex>` unless given)."""
        if not args:
            raise AutopruneError("give the autoprune command to run after --, e.g. -- search --target-flops 0.5")
        job_id = job_id or f"autoprune-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        entrypoint = shlex.join([python, "-m", "autoprune.distributed.job", "--job-id", job_id, "--", *args])
        try:
            return self.client.submit_job(entrypoint=entrypoint, submission_id=job_id, runtime_env=runtime_env)
        except Exception as exc:
            raise AutopruneError(_explain(exc, self.address, None)) from None

    def status(self, job_id: str) -> str:
        """The job's status name (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
        try:
            return str(self.client.get_job_status(job_id).value)
        except Exception as exc:
            raise AutopruneError(f"no job {job_id} at {self.address}: {_first_line(exc)}") from None

    def follow(self, job_id: str, echo: Callable[[str], None] = print) -> str:
        """Stream the job's log to `echo` (line by line, results payload hidden) until it ends; returns its status."""
        self.status(job_id)  # a clear error for an unknown id

        async def stream() -> None:
            hide = LogFilter(echo)
            async for chunk in self.client.tail_job_logs(job_id):
                hide.feed(chunk)
            hide.close()

        try:
            asyncio.run(stream())
        except Exception as exc:  # the log stream broke (network); the job itself may be fine
            echo(f"[autoprune] log stream interrupted ({_first_line(exc)}); waiting for the job to end")
        while (status := self.status(job_id)) not in TERMINAL:
            time.sleep(1.0)
        return status

    def fetch_results(self, job_id: str, dest: str | Path) -> list[Path]:
        """Unpack the results printed at the end of the job's log into `dest`; returns the files written."""
        logs = self.client.get_job_logs(job_id)
        return unpack(extract_payload(logs, job_id), Path(dest))

    def failure(self, job_id: str, status: str) -> AutopruneError:
        """A one-line error for a job that did not succeed, naming it and how to read its log."""
        info = self.client.get_job_info(job_id)
        reason = ""
        try:
            errors = [ln for ln in self.client.get_job_logs(job_id).splitlines() if "autoprune: error:" in ln]
            reason = errors[-1].split("autoprune: error:", 1)[1].strip() if errors else ""
        except Exception:  # the log may be gone with its node; the job's message still says something
            pass
        reason = reason or _first_line(info.message or "") or status.lower()
        return AutopruneError(
            f"job {job_id} {status.lower()}: {reason}; see its log with "
            f"`autoprune submit --address {self.address} --logs {job_id}`"
        )


class LogFilter:
    """Passes log text on line by line, replacing the results payload by one short notice."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self._partial = ""
        self._hiding = False

    def feed(self, chunk: str) -> None:
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line)

    def close(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = ""

    def _line(self, line: str) -> None:
        if line.startswith(BEGIN):
            self._hiding = True
            size = _HEADER.search(line)
            self.echo(f"[autoprune] results in the log ({int(size.group(1)) / 1024:.0f} KiB)" if size else line)
        elif self._hiding:
            self._hiding = line.strip() != END
        else:
            self.echo(line)


def extract_payload(logs: str, job_id: str = "the job") -> bytes:
    """The bytes between the last pair of result markers in `logs`, checked against their size and SHA-256."""
    lines = logs.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith(BEGIN)]
    if not starts:
        raise AutopruneError(f"{job_id} printed no results (its command wrote no run directory)")
    start = starts[-1]
    try:
        end = lines.index(END, start)
    except ValueError:
        raise AutopruneError(f"the results in the log of {job_id} are cut short") from None
    header = _HEADER.search(lines[start])
    try:
        payload = base64.b64decode("".join(ln.strip() for ln in lines[start + 1 : end]), validate=True)
    except binascii.Error:
        raise AutopruneError(f"the results in the log of {job_id} are garbled") from None
    if header and (len(payload) != int(header.group(1)) or hashlib.sha256(payload).hexdigest() != header.group(2)):
        raise AutopruneError(f"the results in the log of {job_id} fail their checksum")
    return payload


def unpack(payload: bytes, dest: Path) -> list[Path]:
    """Write the plain files of a results tar into `dest` (anything else, e.g. a path with folders, is refused)."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = member.name
            if not member.isfile() or Path(name).name != name or name in ("", ".", ".."):
                raise AutopruneError(f"refusing results entry {name!r}: only plain file names are expected")
            data = tar.extractfile(member).read()
            (dest / name).write_bytes(data)
            written.append(dest / name)
    return written


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else (type(exc).__name__ if isinstance(exc, BaseException) else "")


def _explain(exc: BaseException, address: str, token: str | None) -> str:
    text = str(exc)
    if "Authentication" in type(exc).__name__ or "401" in text or "403" in text or "Unauthorized" in text:
        if token:
            return f"the Ray cluster at {address} rejected the auth token; check RAY_AUTH_TOKEN or the token file"
        return (
            f"the Ray cluster at {address} requires token authentication: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) "
            "to the head's token (`ray get-auth-token` on the head prints it)"
        )
    return f"cannot reach the Ray Jobs API at {address}: {_first_line(exc)}"
