"""`RayVecEnv`: an SB3 `VecEnv` whose sub-environments live in Ray actors, so candidate evaluations run in parallel.

Each actor builds its own environment from a picklable factory (for a search: its own `Problem`, i.e. model and
data, from the `ProblemConfig`, plus a `ChannelPruneEnv`), so nothing heavy crosses the wire but actions,
observations and infos. After every step the best feasible score over all actors is handed to every env that
has not reached it (`set_best`), so each next self-competition reward competes against the global best.

Fault tolerance: the driver keeps each actor's env state (`get_state`) after every call. An actor that dies
(killed, OOM, node lost) is replaced by a fresh one, its state is restored with `set_state`, and the call that
was in flight (an evaluation included) is made again, so no evaluation is lost or counted twice. Ray's own actor
restart is not used: it re-runs the constructor and would step an env that forgot its search state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn
from stable_baselines3.common.vec_env.util import dict_to_obs, obs_space_info

from autoprune.constraints import Constraints
from autoprune.errors import AutopruneError
from autoprune.problem import ProblemConfig

if TYPE_CHECKING:
    from autoprune.search.config import SearchConfig

log = logging.getLogger(__name__)

EnvFn = Callable[[], gym.Env]
"""Builds one environment; must be picklable (it is shipped to a Ray actor)."""


@dataclass(frozen=True)
class SearchEnvFactory:
    """Builds a `ChannelPruneEnv` on its own `Problem` (model, data, graph), inside whichever process calls it.

    Args:
        problem: what to prune and how candidates are scored.
        constraints: the budgets.
        steps_per_episode: see `ChannelPruneEnv`.
        tau: self-competition reward temperature.
        priority: per-decision priority of the projection (see `ChannelPruneEnv`).
        sensitivity: per-group measured drops, a node feature (see `ChannelPruneEnv`).
    """

    problem: ProblemConfig
    constraints: Constraints
    steps_per_episode: int = 1
    tau: float = 0.01
    priority: np.ndarray | None = None
    sensitivity: np.ndarray | None = None

    def __call__(self) -> gym.Env:
        from autoprune.envs.channel_prune import ChannelPruneEnv
        from autoprune.problem import load_problem

        problem = load_problem(self.problem)
        return ChannelPruneEnv(
            problem.graph,
            problem.evaluator.score,
            self.constraints,
            steps_per_episode=self.steps_per_episode,
            tau=self.tau,
            priority=self.priority,
            sensitivity=self.sensitivity,
        )


class EnvWorker:
    """One sub-environment, run as a Ray actor by `RayVecEnv` (usable as a plain object in tests).

    Every mutating call returns the env's state afterwards, so the driver always holds what a replacement needs.

    Args:
        env_fn: builds the environment.
        threads: torch intra-op threads (match the actor's CPUs).
    """

    def __init__(self, env_fn: EnvFn, threads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self._error: str | None = None
        self._user_error = False
        try:
            self.env = env_fn()
        except AutopruneError as exc:
            self._error, self._user_error = str(exc), True
        except Exception as exc:  # reported by `ready`, where the driver can raise it
            self._error = f"{type(exc).__name__}: {exc}"

    def ready(self) -> tuple[int, str | None, bool]:
        """`(pid, error, is_user_error)`: the error is the constructor's, or None when the env was built."""
        return os.getpid(), self._error, self._user_error

    def spaces(self) -> tuple[gym.Space, gym.Space, dict[str, Any]]:
        return self.env.observation_space, self.env.action_space, getattr(self.env, "metadata", {})

    def reset(self, seed: int | None, options: dict | None) -> tuple[Any, dict, dict | None]:
        obs, info = self.env.reset(seed=seed, **({"options": options} if options else {}))
        return obs, info, self._state()

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, dict, dict, dict | None]:
        """One step, auto-resetting at the episode's end as SB3 expects."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        done = terminated or truncated
        info["TimeLimit.truncated"] = truncated and not terminated
        reset_info: dict = {}
        if done:
            info["terminal_observation"] = obs
            obs, reset_info = self.env.reset()
        return obs, float(reward), done, info, reset_info, self._state()

    def set_best(self, best: float) -> dict | None:
        """Raise the env's best score to the global `best` (envs without `set_best` ignore it)."""
        set_best = getattr(self.env.unwrapped, "set_best", None)
        if set_best is not None:
            set_best(best)
        return self._state()

    def restore(self, state: dict) -> None:
        """Load a state recorded from a previous actor, and start a fresh episode from it."""
        self.env.unwrapped.set_state(state)
        self.env.reset()

    def call(self, name: str, args: tuple, kwargs: dict) -> tuple[Any, dict | None]:
        return getattr(self.env, name)(*args, **kwargs), self._state()

    def get_attr(self, name: str) -> Any:
        return getattr(self.env, name)

    def set_attr(self, name: str, value: Any) -> dict | None:
        setattr(self.env, name, value)
        return self._state()

    def is_wrapped(self, wrapper_class: type[gym.Wrapper]) -> bool:
        from stable_baselines3.common.env_util import is_wrapped

        return is_wrapped(self.env, wrapper_class)

    def _state(self) -> dict | None:
        get_state = getattr(self.env.unwrapped, "get_state", None)
        return get_state() if get_state is not None else None


class RayVecEnv(VecEnv):
    """A `VecEnv` of Ray actors, one per sub-environment; Ray must be initialised (see `ensure_ray`).

    Args:
        env_fns: one picklable environment factory per actor.
        num_cpus: CPUs each actor reserves (also its torch threads).
        num_gpus: GPUs each actor reserves (fractions allowed).
        max_replacements: consecutive replacements of one actor within one call before giving up.
        name_prefix: actors are named `<prefix>-<index>` (`-r<n>` for replacements); default a fresh id.
        ready_timeout: seconds to wait for the actors to be placed and built (None: forever).
        owns_ray: shut Ray down in `close()` (set when the caller started it for this env).
    """

    def __init__(
        self,
        env_fns: Sequence[EnvFn],
        num_cpus: float = 1,
        num_gpus: float = 0,
        max_replacements: int = 3,
        name_prefix: str | None = None,
        ready_timeout: float | None = 600.0,
        owns_ray: bool = False,
    ) -> None:
        import ray

        if not env_fns:
            raise ValueError("RayVecEnv needs at least one env_fn")
        self._env_fns = list(env_fns)
        self._num_cpus, self._num_gpus = num_cpus, num_gpus
        self._max_replacements = max_replacements
        self._prefix = name_prefix or f"autoprune-env-{uuid.uuid4().hex[:8]}"
        self._ready_timeout = ready_timeout
        self._owns_ray = owns_ray
        self._actor_class = ray.remote(EnvWorker)
        self._generation = [0] * len(self._env_fns)
        self._states: list[dict | None] = [None] * len(self._env_fns)
        self._best: float | None = None
        self._pending: list[Any] = []
        self._actions: np.ndarray | None = None
        self.replacements = 0
        """Actors replaced so far (each re-did the call it died in)."""
        self.pids: list[int] = [0] * len(self._env_fns)
        """Process ids of the current actors."""
        self._closed = False
        self._actors = [self._spawn(i) for i in range(len(self._env_fns))]
        try:
            self._wait_ready(range(len(self._actors)))
            observation_space, action_space, metadata = ray.get(self._actors[0].spaces.remote())
        except BaseException:
            self.close()
            raise
        super().__init__(len(self._env_fns), observation_space, action_space)
        self.metadata = metadata
        self._keys, shapes, dtypes = obs_space_info(observation_space)
        self._buf_obs = {k: np.zeros((self.num_envs, *shapes[k]), dtype=dtypes[k]) for k in self._keys}

    # -- VecEnv API ------------------------------------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        refs = [a.reset.remote(self._seeds[i], self._options[i]) for i, a in enumerate(self._actors)]
        for i, ref in enumerate(refs):
            obs, self.reset_infos[i], state = self._result(i, ref, "reset", (self._seeds[i], self._options[i]))
            self._remember(i, state)
            self._save_obs(i, obs)
        self._reset_seeds()
        self._reset_options()
        return self._obs()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)
        self._pending = [a.step.remote(self._actions[i]) for i, a in enumerate(self._actors)]

    def step_wait(self) -> VecEnvStepReturn:
        rewards = np.zeros(self.num_envs, dtype=np.float32)
        dones = np.zeros(self.num_envs, dtype=bool)
        infos: list[dict] = []
        best = self._best
        for i, ref in enumerate(self._pending):
            obs, rewards[i], dones[i], info, reset_info, state = self._result(i, ref, "step", (self._actions[i],))
            self._remember(i, state)
            self._save_obs(i, obs)
            if dones[i]:
                self.reset_infos[i] = reset_info
            infos.append(info)
            score = info.get("best_score")
            if score is not None and (best is None or score > best):
                best = float(score)
        self._pending = []
        self._best = best
        if best is not None:
            lagging = [i for i, info in enumerate(infos) if "best_score" in info and _below(info["best_score"], best)]
            self._share_best(lagging)
        return self._obs(), rewards, dones, infos

    def close(self) -> None:
        import ray

        if self._closed:
            return
        self._closed = True
        for actor in getattr(self, "_actors", []):
            _kill(actor)
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [self._call(i, "get_attr", attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        for i in self._get_indices(indices):
            self._remember(i, self._call(i, "set_attr", attr_name, value))

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        results = []
        for i in self._get_indices(indices):
            result, state = self._call(i, "call", method_name, method_args, method_kwargs)
            self._remember(i, state)
            results.append(result)
        return results

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [self._call(i, "is_wrapped", wrapper_class) for i in self._get_indices(indices)]

    # -- search state, with the same names as `ChannelPruneEnv` --------------------------------------------
    def get_state(self) -> list[dict[str, Any]]:
        """Every actor's env state (JSON-ready), in order."""
        return self.env_method("get_state")

    def set_state(self, state: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
        """Load states from `get_state` (one per actor; a single state is given to every actor)."""
        states = [state] if isinstance(state, dict) else list(state)
        if not states:
            raise ValueError("set_state needs at least one state")
        for i in range(self.num_envs):
            self.env_method("set_state", states[i % len(states)], indices=[i])
        scores = [s.get("best_score") for s in states if s.get("best_score") is not None]
        self._best = max(scores) if scores else None
        if self._best is not None:
            self._share_best([i for i, s in enumerate(self._states) if s and _below(s.get("best_score"), self._best)])

    @property
    def best_score(self) -> float | None:
        """The best score any actor has seen (every env's reward competes against it from the next step)."""
        return self._best

    def _share_best(self, indices: Sequence[int]) -> None:
        refs = {i: self._actors[i].set_best.remote(self._best) for i in indices}
        for i, ref in refs.items():
            self._remember(i, self._result(i, ref, "set_best", (self._best,)))

    # -- fault tolerance -------------------------------------------------------------------------------------
    def _spawn(self, i: int) -> Any:
        suffix = f"-r{self._generation[i]}" if self._generation[i] else ""
        options = {"num_cpus": self._num_cpus, "num_gpus": self._num_gpus, "max_restarts": 0}
        actor = self._actor_class.options(name=f"{self._prefix}-{i}{suffix}", **options)
        return actor.remote(self._env_fns[i], max(1, int(self._num_cpus)))

    def _wait_ready(self, indices: Sequence[int] | range) -> None:
        import ray

        refs = [self._actors[i].ready.remote() for i in indices]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self._ready_timeout)
        if len(ready) < len(refs):
            raise AutopruneError(
                f"Ray placed only {len(ready)} of {len(refs)} env workers within {self._ready_timeout:.0f} s "
                f"(each asks for {self._num_cpus} CPU, {self._num_gpus} GPU); see `ray status` for free resources"
            )
        for i, (pid, error, user_error) in zip(indices, ray.get(refs), strict=True):
            if error is not None:
                raise AutopruneError(error) if user_error else RuntimeError(f"env worker {i} failed to start: {error}")
            self.pids[i] = pid

    def _replace(self, i: int, cause: BaseException) -> None:
        import ray

        _kill(self._actors[i])
        self._generation[i] += 1
        self._actors[i] = self._spawn(i)
        self._wait_ready([i])
        if self._states[i] is not None:
            ray.get(self._actors[i].restore.remote(self._states[i]))
        self.replacements += 1
        done = self._states[i].get("evaluations") if self._states[i] else 0
        log.warning(
            "env worker %d died (%s); replaced it, restored its state after %s evaluations, redoing its call",
            i,
            type(cause).__name__,
            done,
        )

    def _result(self, i: int, ref: Any, method: str, args: tuple) -> Any:
        """`ray.get(ref)`; if actor `i` died meanwhile, replace it and make the call again on the new actor."""
        import ray

        for _ in range(self._max_replacements + 1):
            try:
                return ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                self._replace(i, exc)
                ref = getattr(self._actors[i], method).remote(*args)
        raise RuntimeError(f"env worker {i} died {self._max_replacements + 1} times in a row; giving up")

    def _call(self, i: int, method: str, *args: Any) -> Any:
        return self._result(i, getattr(self._actors[i], method).remote(*args), method, args)

    def _remember(self, i: int, state: dict | None) -> None:
        if state is not None:
            self._states[i] = state

    # -- observation buffer ----------------------------------------------------------------------------------
    def _save_obs(self, i: int, obs: Any) -> None:
        for key in self._keys:
            self._buf_obs[key][i] = obs if key is None else obs[key]

    def _obs(self) -> VecEnvObs:
        return dict_to_obs(self.observation_space, {k: v.copy() for k, v in self._buf_obs.items()})


def _below(score: float | None, best: float) -> bool:
    return score is None or score < best


def _kill(actor: Any) -> None:
    import ray

    with contextlib.suppress(Exception):  # already dead, or Ray is gone: nothing left to free
        ray.kill(actor, no_restart=True)


def ray_search_env(
    config: SearchConfig,
    constraints: Constraints,
    priority: np.ndarray | None = None,
    sensitivity: np.ndarray | None = None,
) -> RayVecEnv:
    """The `RayVecEnv` of a search: `config.workers` actors (1 CPU and `config.gpus_per_worker` GPUs each).

    `priority` orders the projection of every worker's env and `sensitivity` is a node feature (see
    `ChannelPruneEnv`).

    Joins `config.address`, or starts a local Ray sized for the workers (shut down again by `close()`).
    """
    from autoprune.distributed.cluster import ensure_ray

    workers = max(1, config.workers)
    owns = ensure_ray(config.address, num_cpus=workers, num_gpus=None)
    if owns and config.gpus_per_worker > 0:
        import ray

        available = ray.cluster_resources().get("GPU", 0)
        if available < workers * config.gpus_per_worker:
            ray.shutdown()
            raise AutopruneError(
                f"{workers} workers x {config.gpus_per_worker} GPU need {workers * config.gpus_per_worker:g} GPUs, "
                f"this machine has {available:g}; lower --gpus-per-worker or --workers"
            )
    problem = config.problem
    if config.gpus_per_worker == 0 and problem.device == "auto":
        problem = replace(problem, device="cpu")  # a worker without a reserved GPU must not crowd onto one
    factory = SearchEnvFactory(problem, constraints, config.steps_per_episode, config.tau, priority, sensitivity)
    return RayVecEnv([factory] * workers, num_cpus=1, num_gpus=config.gpus_per_worker, owns_ray=owns)
