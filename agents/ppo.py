"""SB3's PPO with the GAT policy, sized for a search where one env step is one candidate evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecEnv

from .policy import GATPolicy

EvalHook = Callable[[dict[str, Any]], "bool | None"]
"""Receives one evaluation's record; returning False stops training."""

_DROPPED_INFO = ("terminal_observation", "episode")


class EvaluationCallback(BaseCallback):
    """Forwards every evaluation's info dict to `on_eval`; stops training when `on_eval` returns False.

    Each record is the env's step info (`score`, `flops_ratio`, `keep`, ...; see `ChannelPruneEnv`) plus
    `reward`, `env_index` and `num_timesteps`, without SB3's bulky `terminal_observation` and Monitor's `episode`.

    Args:
        on_eval: called once per evaluation, in env order.
    """

    def __init__(self, on_eval: EvalHook, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.on_eval = on_eval

    def _on_step(self) -> bool:
        keep_going = True
        for i, (info, reward) in enumerate(zip(self.locals["infos"], self.locals["rewards"], strict=True)):
            if "score" not in info:
                continue
            record = {k: v for k, v in info.items() if k not in _DROPPED_INFO}
            record.update(reward=float(reward), env_index=i, num_timesteps=self.num_timesteps)
            if self.on_eval(record) is False:
                keep_going = False
        return keep_going


class EvaluationBudget(BaseCallback):
    """Stops training once `evaluations` env steps were taken in this `learn` call (overshoot < n_envs)."""

    def __init__(self, evaluations: int) -> None:
        super().__init__()
        self.evaluations = evaluations
        self._start = 0

    def _on_training_start(self) -> None:
        self._start = self.num_timesteps

    def _on_step(self) -> bool:
        return self.num_timesteps - self._start < self.evaluations


def make_ppo(
    env: gym.Env | VecEnv,
    seed: int = 0,
    n_steps: int = 32,
    batch_size: int = 32,
    n_epochs: int = 10,
    learning_rate: float = 3e-4,
    device: str = "cpu",
    tensorboard_log: str | None = None,
    policy_kwargs: dict[str, Any] | None = None,
    **ppo_kwargs: Any,
) -> PPO:
    """PPO with `GATPolicy` on a `ChannelPruneEnv` (or a VecEnv of them).

    Defaults suit a costly, noisy reward: each step is one network evaluation, so rollouts are short (32
    evaluations per update), each is reused for up to 10 epochs of full-batch updates, and steps are small (Adam
    at 3e-4, epochs stopped once an update's KL passes 1.5 nats; why: the comment on `target_kl` below).

    Args:
        env: the environment, or a VecEnv of copies (parallel evaluations).
        seed: seeds PPO, the policy's initial weights and the env's first reset.
        n_steps: evaluations per env between updates.
        batch_size: minibatch size of the update (n_steps · n_envs should be a multiple of it).
        n_epochs: passes over each rollout.
        learning_rate: Adam step size.
        device: torch device; the GNN on small batches is usually fastest on "cpu".
        tensorboard_log: directory for SB3's TensorBoard logs (none when None).
        policy_kwargs: for `GATPolicy` (e.g. `init_keep_logit` from `warm_start`, `features_extractor_kwargs`).
        **ppo_kwargs: any other `PPO` argument (gamma, ent_coef, clip_range, ...).
    """
    # A keep-mask is hundreds of Bernoulli bits, so the ratio of a whole mask's probabilities moves fast: the
    # default clip range of 0.2 held a group's learned width to a fraction of a channel per update.
    ppo_kwargs.setdefault("clip_range", 0.5)
    # Clipping alone does not bound an update: on ResNet-20 the first updates moved the mask distribution by 95
    # and 1157 nats of KL and its entropy fell from 115 to 6 nats in 3 updates, leaving a near-deterministic
    # policy stuck on whatever mask the noise pointed at. An update's epochs stop once its KL passes
    # 1.5 · target_kl; the first epoch's step always runs, so the learning rate bounds that one.
    ppo_kwargs.setdefault("target_kl", 1.0)
    ppo_kwargs.setdefault("gamma", 0.99)
    ppo_kwargs.setdefault("gae_lambda", 0.95)
    ppo_kwargs.setdefault("verbose", 0)
    ppo = PPO(
        GATPolicy,
        env,
        learning_rate=learning_rate,
        n_steps=n_steps,
        batch_size=batch_size,
        n_epochs=n_epochs,
        seed=seed,
        device=device,
        tensorboard_log=tensorboard_log,
        policy_kwargs=policy_kwargs,
        **ppo_kwargs,
    )
    if tensorboard_log is None and not ppo.verbose:
        # Without a logger of its own, every `learn` call leaves an empty folder SB3-<time> in the temp dir.
        ppo.set_logger(Logger(folder=None, output_formats=[]))
    return ppo


def train(ppo: PPO, evaluations: int, callback: BaseCallback | EvalHook | None = None) -> PPO:
    """Train `ppo` for `evaluations` more env steps; a later call continues where this one stopped.

    Args:
        ppo: from `make_ppo`.
        evaluations: candidate evaluations to spend (env steps over all envs).
        callback: an SB3 callback, or a function taking each evaluation record (see `EvaluationCallback`).
    """
    if evaluations < 1:
        raise ValueError(f"evaluations must be at least 1, got {evaluations}")
    callbacks: list[BaseCallback] = [EvaluationBudget(evaluations)]
    if isinstance(callback, BaseCallback):
        callbacks.append(callback)
    elif callback is not None:
        callbacks.append(EvaluationCallback(callback))
    return ppo.learn(total_timesteps=evaluations, callback=CallbackList(callbacks), reset_num_timesteps=False)
