"""What a checkpoint's `state.json` must hold before a resume continues from it.

A run directory is data a user may have edited, truncated or been handed, so a resume checks the state's types
and values before the problem is set up, and its masks against the channel graph before any evaluation is spent.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

import numpy as np

from autoprune.constraints import Constraints
from autoprune.errors import AutopruneError
from autoprune.graph import ChannelGraph

SOURCE = "checkpoint/state.json"
ENV_KEYS = ("best_score", "best_keep", "best_keep_score", "lagrange", "evaluations", "recent_scores")
"""What `ChannelPruneEnv.get_state` writes."""


def check_state(state: Any, evaluations: int, needs_env: bool, vectorised: bool = False) -> dict[str, Any]:
    """`state` if a run with a budget of `evaluations` can continue from it, else AutopruneError.

    Args:
        state: the parsed JSON.
        evaluations: the run's budget.
        needs_env: the agent's env state is needed to continue (an RL run not yet finished).
        vectorised: the run's env is a vector (Ray actors, or one env per candidate scored at a time), whose state
            may be a list (one per env).
    """
    if not isinstance(state, dict):
        _fail(f"is a JSON {type(state).__name__}, not an object")
    missing = [key for key in ("evaluations", "best_score", "best_keep", "seconds") if key not in state]
    if missing:
        _fail(f"lacks {', '.join(missing)}")
    count = state["evaluations"]
    if type(count) is not int or not 0 <= count <= evaluations:
        _fail(f"evaluations must be an integer in [0, {evaluations}], got {count!r:.40}")
    _number(state["seconds"], "seconds", minimum=0.0)
    if type(state.get("images", 0)) is not int or state.get("images", 0) < 0:
        _fail("images must be a non-negative integer")
    if (state["best_keep"] is None) != (state["best_score"] is None) or (count > 0 and state["best_keep"] is None):
        _fail("best_score and best_keep must both be set once an evaluation was made")
    if state["best_keep"] is not None:
        _number(state["best_score"], "best_score")
        _bits(state["best_keep"], "best_keep")
    for key in ("finalists", "leaders"):
        entries = state.get(key, [])
        if not isinstance(entries, list) or not all(_is_finalist(f) for f in entries):
            _fail(f"{key} must be a list of objects with score and keep")
        for entry in entries:
            _number(entry["score"], f"{key} score")
            _bits(entry["keep"], f"{key} keep")
    named = state.get("named", {})
    if not isinstance(named, dict):
        _fail("named must be an object of masks")
    for name, keep in named.items():
        _bits(keep, f"named plan {name!r:.40}")
    if needs_env and count < evaluations:
        envs = state.get("env")
        envs = [envs] if isinstance(envs, dict) else envs if vectorised else None
        if not isinstance(envs, list) or not envs or not all(isinstance(e, dict) for e in envs):
            _fail(
                "env must be the agent's env state (an object, or a list of them where several candidates are "
                "scored at a time: --workers, --candidate-batch)"
            )
        for env in envs:
            _check_env(env)
    return state


def check_masks(state: dict[str, Any], graph: ChannelGraph, constraints: Constraints) -> None:
    """Raise AutopruneError unless the state's masks fit `graph` and its best mask meets `constraints`."""
    envs = state.get("env") or []
    masks = [state["best_keep"], *(e["best_keep"] for e in ([envs] if isinstance(envs, dict) else envs))]
    saved = [f["keep"] for key in ("finalists", "leaders") for f in state.get(key, [])]
    saved += list(state.get("named", {}).values())
    masks += saved
    for keep in masks:
        if keep is not None and len(keep) != graph.num_decisions:
            _fail(f"holds a mask of {len(keep)} decisions; this model has {graph.num_decisions}")
    if state["best_keep"] is not None and not constraints.feasible(graph, np.asarray(state["best_keep"])):
        _fail("best_keep exceeds the run's budget")
    if any(not constraints.feasible(graph, np.asarray(keep)) for keep in saved):
        _fail("a finalist, leader or named plan exceeds the run's budget")


def _check_env(env: dict[str, Any]) -> None:
    missing = [key for key in ENV_KEYS if key not in env]
    if missing:
        _fail(f"env lacks {', '.join(missing)}")
    for key in ("best_score", "best_keep_score"):
        if env[key] is not None:
            _number(env[key], f"env {key}")
    _number(env["lagrange"], "env lagrange", minimum=0.0)
    if type(env["evaluations"]) is not int or env["evaluations"] < 0:
        _fail("env evaluations must be a non-negative integer")
    if env["best_keep"] is not None:
        _bits(env["best_keep"], "env best_keep")
    if not isinstance(env["recent_scores"], list):
        _fail("env recent_scores must be a list")
    for score in env["recent_scores"]:
        _number(score, "env recent_scores")


def _is_finalist(value: Any) -> bool:
    return isinstance(value, dict) and "score" in value and "keep" in value


def _number(value: Any, name: str, minimum: float = -math.inf) -> None:
    if type(value) not in (int, float) or not minimum <= value < math.inf:
        bound = "" if minimum == -math.inf else f" >= {minimum:g}"
        _fail(f"{name} must be a finite number{bound}, got {value!r:.40}")


def _bits(value: Any, name: str) -> None:
    if not isinstance(value, list) or not value or any(type(v) is not int or v not in (0, 1) for v in value):
        _fail(f"{name} must be a non-empty list of 0/1")


def _fail(message: str) -> NoReturn:
    raise AutopruneError(f"{SOURCE} {message}; the run cannot be resumed from it (start a new run)")
