"""Connect this process to Ray: join a cluster, or start a private local one bound to 127.0.0.1.

A private local Ray listens on loopback only: GCS, raylet (node and object manager), workers, the driver, the
dashboard and runtime-env agents and the metrics exporters. Ray 2.60 binds its gRPC servers to 127.0.0.1 exactly
when the node's IP is 127.0.0.1, and the agents and metrics servers follow the node's IP, but `ray.init` replaces
a loopback `_node_ip_address` by the machine's external address unless Ray thinks clusters are unsupported on this
platform (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, as on macOS and Windows). `ensure_ray` says so for the length of
the start, so the node is created on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from autoprune.distributed.auth import ensure_local_token, is_loopback_host
from autoprune.errors import AutopruneError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_SINGLE_NODE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ensure_ray(address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None) -> bool:
    """Connect to Ray unless already connected; returns True when this call started a local instance.

    With no `address` (and no `RAY_ADDRESS` in the environment, as Ray sets for job drivers) a private local
    instance is started with exactly the given resources, no dashboard, every port on 127.0.0.1, and the auth
    token (where one has to be made) written with mode 0600. A cluster started with `ray start` on this machine
    is reused instead, when it can be joined (its token is at hand) and has the CPUs asked for; one line on stderr
    says which of the two happened. Otherwise the cluster at `address` (`auto`, `host:port` or `ray://host:10001`)
    is joined; on a token-authenticated cluster the token comes from `RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH` or
    `~/.ray/auth_token` (with `RAY_AUTH_MODE=token`).

    Args:
        address: the cluster to join, or None for a private local instance.
        num_cpus: logical CPUs of a local instance (default: all cores).
        num_gpus: GPUs of a local instance (default: those detected).

    Returns:
        Whether the caller owns the instance (and should `ray.shutdown()` it when done).
    """
    import ray

    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.WARNING, "configure_logging": True}
    if address or os.environ.get("RAY_ADDRESS"):
        where = address or os.environ.get("RAY_ADDRESS", "")
        client = where.startswith("ray://")
        # Ray would turn a loopback address into this machine's external one, where a loopback cluster
        # (such as our own private one, joined from another process) does not listen
        keep = _loopback_node() if not client and _is_loopback(where) else contextlib.nullcontext()
        try:
            with keep:
                ray.init(address=address, **({} if client else quiet))  # Ray Client would forward them to the server
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AutopruneError(
                f"cannot join the Ray cluster at {where}: {first} (check the address, and RAY_AUTH_TOKEN where the "
                "cluster uses token authentication)"
            ) from None
        return False
    running = running_cluster()
    if running:
        refused = _join_running(running, num_cpus or 1)
        if refused is None:
            log.warning("joining the Ray cluster started with `ray start` on this machine (%s)", running)
            return False
        log.warning(
            "a Ray cluster started with `ray start` is running on this machine (%s) but cannot be used (%s); "
            "starting a private local Ray on 127.0.0.1 beside it",
            running,
            refused,
        )
    ensure_local_token()
    with _loopback_node():
        ray.init(
            address="local",  # never the cluster in ray_current_cluster: that one has its own resources
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            dashboard_host=LOOPBACK,
            _node_ip_address=LOOPBACK,
            **quiet,
        )
    return True


def _join_running(address: str, cpus: float) -> str | None:
    """Join the cluster at `address` if it has `cpus` CPUs for us; None when joined, else why not (disconnected)."""
    import ray

    keep = _loopback_node() if _is_loopback(address) else contextlib.nullcontext()
    try:
        with keep:
            ray.init(address=address, logging_level=logging.WARNING, configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        text = str(exc).strip()
        return text.splitlines()[0][:160] if text else type(exc).__name__
    available = ray.cluster_resources().get("CPU", 0)
    if available < cpus:
        ray.shutdown()
        return f"it has {available:g} CPUs, {cpus:g} needed"
    return None


def running_cluster() -> str | None:
    """The address of the cluster that the last `ray start` on this machine recorded, while its GCS runs."""
    from ray._private import services

    recorded = services.find_bootstrap_address(None)
    if not recorded:
        return None
    with contextlib.suppress(Exception):  # `ps` missing or unreadable: trust the record, as ray.init would
        services.find_gcs_addresses.cache_clear()  # it caches what it found, even once that is gone
        running = services.find_gcs_addresses()
        port = recorded.rsplit(":", 1)[-1]
        if not any(str(a).rsplit(":", 1)[-1] == port for a in running):
            return None  # a stale record (the cluster was killed rather than stopped)
    return recorded


def _is_loopback(address: str) -> bool:
    """Whether a cluster address (`host:port`, or `auto`: the one `ray start` recorded) is on this machine."""
    if address == "auto":
        from ray._private import services

        address = os.environ.get("RAY_ADDRESS") or services.find_bootstrap_address(None) or ""
    try:
        host = urlsplit(address if "://" in address else f"//{address}").hostname
    except ValueError:
        return False
    return bool(host) and is_loopback_host(host)


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """Keep a loopback node IP from being replaced by the external one while Ray starts (see the module doc)."""
    from ray._private import ray_constants

    before_env = os.environ.get(_SINGLE_NODE)
    before = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_NODE] = "0"  # for the processes Ray starts now (raylet, agents; workers inherit it)
    ray_constants.ENABLE_RAY_CLUSTER = False  # read by `services.get_node_ip_address` in this process
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before
        if before_env is None:
            os.environ.pop(_SINGLE_NODE, None)
        else:
            os.environ[_SINGLE_NODE] = before_env


def fit_experiment(
    address: str | None,
    num_cpus: float | None,
    storage: str,
    name: str,
    trainable: Any,
    resume: bool,
    new_tuner: Callable[[Any], Any],
) -> Any:
    """Run a Tune experiment on Ray, restoring it from `storage/name` when `resume` and it can be restored.

    Args:
        address: Ray cluster to join (None: a local Ray, shut down afterwards).
        num_cpus: CPUs of a local Ray.
        storage: Tune's storage path; name: the experiment's name under it.
        trainable: the trainable, with its resources.
        resume: restore (errored trials restarted) rather than start anew, where possible.
        new_tuner: builds a fresh `Tuner` for `trainable`.

    Returns:
        Tune's `ResultGrid`.
    """
    from ray import tune

    owns = ensure_ray(address, num_cpus=num_cpus)
    try:
        path = f"{storage}/{name}"
        if resume and tune.Tuner.can_restore(path):
            tuner = tune.Tuner.restore(path, trainable=trainable, restart_errored=True)
        else:
            tuner = new_tuner(trainable)
        return tuner.fit()
    finally:
        if owns:
            import ray

            ray.shutdown()
