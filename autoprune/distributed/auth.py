"""The Ray auth token: where it is found, how a new one is written, and where it may be sent.

Ray 2.60 turns token authentication on for clusters started with `ray start` and for a local `ray.init()`. The
token is a bearer secret: it is read from `RAY_AUTH_TOKEN`, the file named by `RAY_AUTH_TOKEN_PATH`, or
`~/.ray/auth_token` (Ray's own order), written only with mode 0600, and sent only where nobody on the way can
read it: to this machine (loopback) or over HTTPS.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from autoprune.errors import AutopruneError

DEFAULT_TOKEN_PATH = Path("~/.ray/auth_token")
"""Where `ray start` and `ray get-auth-token --generate` keep the token (expanded against `$HOME`)."""


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
    default = DEFAULT_TOKEN_PATH.expanduser()
    if default.is_file():
        return default.read_text().strip() or None
    return None


def ensure_local_token() -> Path | None:
    """Write a new token to `~/.ray/auth_token` (mode 0600) where a local Ray is about to need one and none exists.

    Ray would generate the same kind of token itself when a local `ray.init()` finds none, but writes it with the
    umask's mode (0644: readable by every user of the machine). Writing it first, exclusively and 0600, leaves Ray
    nothing to write. Nothing happens when `RAY_AUTH_MODE` turns authentication off or a token already exists.

    Returns:
        The file written, or None.
    """
    if os.environ.get("RAY_AUTH_MODE", "token").strip().lower() != "token":
        return None
    if find_token() is not None:
        return None
    path = DEFAULT_TOKEN_PATH.expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:  # written meanwhile (another Ray starting): theirs is as good
        return None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # what Ray's own generator makes: 256 random bits, hex
    return path


def is_private_address(address: str) -> bool:
    """Whether a token sent to `address` (a Jobs API URL) cannot be read on the way: HTTPS, or this machine."""
    try:
        parts = urlsplit(address if "://" in address else f"http://{address}")  # Ray's default scheme is http
        host = parts.hostname or ""
    except ValueError:  # e.g. an unclosed [IPv6 bracket
        return False
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and is_loopback_host(host)


def is_loopback_host(host: str) -> bool:
    """Whether `host` (an IP address or name, IPv6 without brackets) is this machine: 127.0.0.0/8, ::1, localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve anywhere
        return False


def check_token_destination(address: str, token: str | None, insecure: bool = False) -> None:
    """Refuse to send `token` to `address` over plain HTTP off this machine, unless `insecure`.

    Raises:
        AutopruneError: a token would travel in clear text, and `insecure` was not given.
    """
    if token and not insecure and not is_private_address(address):
        raise AutopruneError(
            f"refusing to send the Ray auth token to {address}: plain HTTP off this machine would expose it; use "
            "https://, or an ssh tunnel to 127.0.0.1 (`ray dashboard CLUSTER.yaml`), or pass --insecure-token "
            "on a network you trust"
        )
