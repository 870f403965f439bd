"""`BatchedVecEnv`: K copies of the pruning env in one process whose candidates are scored in one batched pass.

SB3 steps a `DummyVecEnv`'s environments one after another, so each would score its candidate alone. This
VecEnv first projects every env's action onto the budget (`ChannelPruneEnv.project`) and hands the K masks to
the scorer's `prefetch` (`autoprune.batched_scoring.BatchedScorer`: one pass of K candidates), then steps the
envs, whose score calls find their results ready. After each step the best score over all envs is given to
every env (`set_best`), so each self-competition reward competes against the global best, as with Ray workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

Prefetch = Callable[[Sequence[np.ndarray]], None]
"""Scores masks ahead, in one batch (e.g. `BatchedScorer.prefetch`)."""


class BatchedVecEnv(DummyVecEnv):
    """A `DummyVecEnv` of `ChannelPruneEnv`s that share a scorer, with every step's candidates scored together.

    Args:
        env_fns: build the envs (each scoring through the scorer `prefetch` belongs to).
        prefetch: scores a list of masks ahead.
    """

    def __init__(self, env_fns: list[Callable[[], gym.Env]], prefetch: Prefetch) -> None:
        super().__init__(env_fns)
        self.prefetch = prefetch

    def step_wait(self) -> VecEnvStepReturn:
        self.prefetch([env.unwrapped.project(a) for env, a in zip(self.envs, self.actions, strict=True)])
        result = super().step_wait()
        best = self.best_score
        if best is not None:
            for env in self.envs:
                env.unwrapped.set_best(best)
        return result

    @property
    def best_score(self) -> float | None:
        """The best score any env has seen."""
        scores = [env.unwrapped.best_score for env in self.envs if env.unwrapped.best_score is not None]
        return max(scores) if scores else None

    def get_state(self) -> list[dict[str, Any]]:
        """Every env's search state (JSON-ready), in order."""
        return [env.unwrapped.get_state() for env in self.envs]

    def set_state(self, state: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
        """Load states from `get_state` (one per env; a single state is given to every env)."""
        states = [state] if isinstance(state, dict) else list(state)
        if not states:
            raise ValueError("set_state needs at least one state")
        for i, env in enumerate(self.envs):
            env.unwrapped.set_state(states[i % len(states)])
