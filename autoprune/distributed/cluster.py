"""Connect this process to Ray: join a cluster, or start a private local one bound to 127.0.0.1."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from autoprune.errors import AutopruneError


def ensure_ray(address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None) -> bool:
    """Connect to Ray unless already connected; returns True when this call started a local instance.

    With no `address` (and no `RAY_ADDRESS` in the environment, as Ray sets for job drivers) a local instance is
    started with exactly the given resources, no dashboard, and its node on 127.0.0.1. Otherwise the cluster at
    `address` (`auto`, `host:port` or `ray://host:10001`) is joined; on a token-authenticated cluster the token
    comes from `RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH` or `~/.ray/auth_token` (with `RAY_AUTH_MODE=token`).

    Args:
        address: the cluster to join, or None for a local instance.
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
        client = (address or os.environ.get("RAY_ADDRESS", "")).startswith("ray://")
        try:
            ray.init(address=address, **({} if client else quiet))  # Ray Client would forward them to the server
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
            where = address or os.environ["RAY_ADDRESS"]
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AutopruneError(
                f"cannot join the Ray cluster at {where}: {first} (check the address, and RAY_AUTH_TOKEN where the "
                "cluster uses token authentication)"
            ) from None
        return False
    ray.init(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        **quiet,
    )
    return True


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
