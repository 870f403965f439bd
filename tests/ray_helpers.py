"""Helpers for tests that start a real Ray head with `ray start` and must stop exactly that one."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

LOOPBACK_IPS = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_members(sid: int) -> list[int]:
    """Processes in session `sid` (the `ray start` we launched and every Ray process it spawned)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    members.append(int(entry))
            except OSError:
                pass
    return members


def stop_session(sid: int, grace: float = 3.0) -> None:
    """Stop our head by its session id: `ray stop` would also stop other Ray instances on this machine."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in session_members(sid):
            with contextlib.suppress(OSError):  # gone meanwhile
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while session_members(sid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not session_members(sid):
            return


def start_head(env: dict[str, str], extra: Sequence[str] = ()) -> int:
    """`ray start --head` on 127.0.0.1 with 2 CPUs in a new session; returns the session id (see `stop_session`).

    `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` keeps Ray from replacing `--node-ip-address=127.0.0.1` by the machine's
    external address, so the head listens on loopback only.
    """
    bin_dir = Path(sys.executable).parent
    command = [
        str(bin_dir / "ray"), "start", "--head", f"--port={free_port()}", "--num-cpus=2",
        "--node-ip-address=127.0.0.1", f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats", *extra,
    ]  # fmt: skip
    env = {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    start = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = start.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        start.kill()
        stop_session(start.pid)
        raise
    if start.returncode != 0:
        stop_session(start.pid)
        raise AssertionError(output.decode()[-3000:])
    return start.pid


def listening_sockets(root: psutil.Process) -> set[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP and bound UDP socket of `root` and its descendants."""
    found = set()
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return found
    for proc in processes:
        try:
            name = proc.name()
            for conn in proc.net_connections(kind="inet"):
                if conn.laddr and (conn.status == psutil.CONN_LISTEN or conn.type == socket.SOCK_DGRAM):
                    found.add((name, conn.laddr.ip, conn.laddr.port))
        except psutil.Error:  # ended meanwhile
            continue
    return found
