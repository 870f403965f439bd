"""The agent's checkpoint as data only: tensors that `torch.load(weights_only=True)` reads, counters in JSON.

SB3's own `save`/`load` pickle the whole algorithm with cloudpickle, so loading a crafted file runs its code. Here
a resumed run rebuilds its PPO object from the run's config exactly as a new run does, and only then loads the
policy's weights and the optimizer's moments into it, after checking that they fit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from autoprune.atomic import atomic_write, atomic_write_text
from autoprune.data._messages import one_line
from autoprune.errors import AutopruneError

if TYPE_CHECKING:
    from stable_baselines3 import PPO

WEIGHTS = "agent.pt"
"""Policy state dict and optimizer state, `torch.save`d."""
COUNTERS = "agent.json"
"""`num_timesteps` and `n_updates` of the PPO object."""
FORMAT = "autoprune-agent"


def save_agent(ppo: PPO, directory: Path) -> None:
    """Write `ppo`'s policy weights, optimizer state and counters into `directory` (each file atomically)."""
    tensors = {"policy": ppo.policy.state_dict(), "optimizer": ppo.policy.optimizer.state_dict()["state"]}
    atomic_write(directory / WEIGHTS, lambda f: torch.save(tensors, f))
    counters = {"format": FORMAT, "num_timesteps": int(ppo.num_timesteps), "n_updates": int(ppo._n_updates)}
    atomic_write_text(directory / COUNTERS, json.dumps(counters))


@dataclass
class AgentCheckpoint:
    """What `save_agent` wrote, read back as plain data."""

    policy: dict[str, torch.Tensor]
    """The policy's state dict."""
    moments: dict[int, dict[str, torch.Tensor]]
    """The optimizer's per-parameter state (Adam's step and moments), by parameter index."""
    num_timesteps: int
    n_updates: int


def read_agent(directory: Path) -> AgentCheckpoint:
    """Read the checkpoint in `directory` and check its types and values; nothing in it is executed.

    Raises:
        AutopruneError: a file is missing, corrupt or crafted.
    """
    weights, counters = directory / WEIGHTS, directory / COUNTERS
    if not weights.is_file() and (directory / "agent.zip").exists():
        raise AutopruneError(
            f"{directory} holds an agent.zip of an older autoprune, which is a pickle and is no longer loaded "
            "(it could run code); start a new run"
        )
    try:
        tensors = torch.load(weights, map_location="cpu", weights_only=True)
        meta = json.loads(counters.read_text())
    except FileNotFoundError as exc:
        raise AutopruneError(f"agent checkpoint {exc.filename} is missing; start a new run") from None
    except Exception as exc:  # weights_only refusals, truncated zips, bad JSON: all mean the file is unusable
        message = f"agent checkpoint in {directory} is unreadable ({_short(exc)}); start a new run"
        raise AutopruneError(message) from None
    try:
        return _checked(tensors, meta)
    except ValueError as exc:
        raise AutopruneError(f"agent checkpoint in {directory} is invalid ({exc}); start a new run") from None


def load_agent(ppo: PPO, directory: Path) -> None:
    """Load the checkpoint in `directory` into `ppo`, built by `make_ppo` as the run first built it.

    The optimizer keeps its hyperparameters from the config; only its per-parameter state comes from the file.

    Raises:
        AutopruneError: as `read_agent`, or the checkpoint does not fit `ppo`.
    """
    agent = read_agent(directory)
    params = list(ppo.policy.parameters())
    try:
        for index, state in agent.moments.items():
            if index >= len(params):
                raise ValueError(f"optimizer state for parameter {index} of {len(params)}")
            for name, value in state.items():
                if name != "step" and value.shape != params[index].shape:
                    raise ValueError(f"optimizer state {index}.{name} has shape {tuple(value.shape)}")
        ppo.policy.load_state_dict(agent.policy, strict=True)
        optimizer = ppo.policy.optimizer.state_dict()
        optimizer["state"] = agent.moments
        ppo.policy.optimizer.load_state_dict(optimizer)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise AutopruneError(f"agent checkpoint in {directory} does not fit this run's agent ({_short(exc)})") from None
    ppo.num_timesteps, ppo._n_updates = agent.num_timesteps, agent.n_updates


def _checked(tensors: Any, meta: Any) -> AgentCheckpoint:
    """The checkpoint, or ValueError unless its parts have the types and finite values `save_agent` writes."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f'{COUNTERS} is not an {FORMAT} file (no "format": "{FORMAT}")')
    for key in ("num_timesteps", "n_updates"):
        if type(meta.get(key)) is not int or meta[key] < 0:
            raise ValueError(f"{COUNTERS} needs a non-negative integer {key}")
    policy, moments = (tensors.get(k) if isinstance(tensors, dict) else None for k in ("policy", "optimizer"))
    if not isinstance(policy, dict) or not all(isinstance(k, str) for k in policy):
        raise ValueError(f"{WEIGHTS} holds no policy state dict")
    if not isinstance(moments, dict) or not all(type(i) is int and i >= 0 for i in moments):
        raise ValueError(f"{WEIGHTS} holds no optimizer state")
    if not all(isinstance(s, dict) and all(isinstance(k, str) for k in s) for s in moments.values()):
        raise ValueError("optimizer states must map names to tensors")
    values = [*policy.values(), *(v for s in moments.values() for v in s.values())]
    if not all(isinstance(v, torch.Tensor) and _finite(v) for v in values):
        raise ValueError("it holds values that are not finite tensors")
    return AgentCheckpoint(policy, moments, meta["num_timesteps"], meta["n_updates"])


def _finite(tensor: torch.Tensor) -> bool:
    return not tensor.is_floating_point() or bool(torch.isfinite(tensor).all())


def _short(exc: BaseException) -> str:
    """The first 200 characters of the exception's one-line message (torch's refusals run to many lines)."""
    text = one_line(exc)
    return text if len(text) <= 200 else text[:197] + "..."
