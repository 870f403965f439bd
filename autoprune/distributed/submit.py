"""Submit an `autoprune` command to a Ray cluster as a Ray Job, follow its log, and fetch its results.

The job runs `python -m autoprune.distributed.job`, which prints the run directory's small result files as a
base64 tar.gz between marker lines at the end of its log; `fetch_results` cuts them out of the log and unpacks
them locally (`autoprune.distributed.results`: allowed names only, all or nothing, size-capped), so client and
cluster need no shared filesystem.

Token authentication (on by default for clusters started with `ray start` since Ray 2.59): the bearer token is
taken from `token`, else `RAY_AUTH_TOKEN`, else the file named by `RAY_AUTH_TOKEN_PATH`, else
`~/.ray/auth_token` (where `ray start` / `ray get-auth-token --generate` put it on the head), and is sent only to
this machine or over HTTPS unless the caller says otherwise (`autoprune.distributed.auth`).
"""

from __future__ import annotations

import asyncio
import shlex
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autoprune.distributed.auth import check_token_destination, find_token
from autoprune.distributed.results import BEGIN, END, HEADER, NONE, extract_payload, unpack
from autoprune.errors import AutopruneError

__all__ = ["TERMINAL", "JobClient", "LogFilter", "extract_payload", "find_token", "unpack"]

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobClient:
    """A `JobSubmissionClient` for `address` (`http://host:8265`) with the auth token in its headers.

    Args:
        address: the cluster's dashboard (Jobs API) address.
        token: the auth token (default: see `find_token`).
        insecure_token: allow sending the token over plain HTTP to another machine.

    Raises:
        AutopruneError: the token would travel in clear text (before anything is sent), or the cluster cannot be
            reached or refuses the token.
    """

    def __init__(self, address: str, token: str | None = None, insecure_token: bool = False) -> None:
        import logging

        from ray.job_submission import JobSubmissionClient

        logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)  # no INFO line per stream end
        self.address = address
        token = find_token(token)
        check_token_destination(address, token, insecure_token)
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

    def fetch_results(self, job_id: str, dest: str | Path, force: bool = False) -> list[Path] | None:
        """Unpack the results printed at the end of the job's log into `dest` (replacing files there if `force`).

        Returns:
            The files written, or None where the job's command writes no run directory (e.g. `info`).
        """
        payload = extract_payload(self.client.get_job_logs(job_id), job_id)
        return None if payload is None else unpack(payload, Path(dest), force=force)

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
            size = HEADER.search(line)
            self.echo(f"[autoprune] results in the log ({int(size.group(1)) / 1024:.0f} KiB)" if size else line)
        elif self._hiding:
            self._hiding = line.strip() != END
        elif not line.startswith(NONE):  # the job's "no results" notice: the client says it in its own words
            self.echo(line)


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
