"""Tests for autoprune.envs: the channel-pruning env's API, rewards, projection, multiplier and search state."""

from __future__ import annotations

import json
import math
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from torch import nn

from autoprune.constraints import Constraints
from autoprune.envs import ENV_ID, ChannelPruneEnv, dual_ascent, lagrangian_penalty, self_competition, sign_competition
from autoprune.envs.rewards import adaptive_tau
from autoprune.errors import AutopruneError
from autoprune.graph import ChannelGraph, build_channel_graph
from autoprune.graph.features import KEEP

HALF = Constraints(flops=0.5)

# SB3 recommends flat vectors; the (N, F) features and (2, E) edges are for our custom graph policy.
SB3_ALLOWED = [r"Your observation (x|edge_index) has an unconventional shape"]


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.BatchNorm2d(12),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 4),
    ).eval()


@pytest.fixture(scope="module")
def graph() -> ChannelGraph:
    return build_channel_graph(tiny_cnn(), torch.randn(1, 3, 8, 8))


class Score:
    """A synthetic score: the share of a hidden importance vector that the mask keeps; counts its calls."""

    def __init__(self, graph: ChannelGraph, seed: int = 0) -> None:
        self.importance = np.random.default_rng(seed).random(graph.num_decisions)
        self.calls: list[np.ndarray] = []

    def __call__(self, keep: np.ndarray) -> float:
        self.calls.append(keep.copy())
        return float(self.importance @ keep / self.importance.sum())


def make_env(graph: ChannelGraph, **kwargs) -> ChannelPruneEnv:
    return ChannelPruneEnv(graph, Score(graph), kwargs.pop("constraints", HALF), **kwargs)


# -- API checkers ------------------------------------------------------------------------------------------
def test_gymnasium_check_env_passes_without_warnings(graph):
    env = gymnasium.make(ENV_ID, graph=graph, score_fn=Score(graph), constraints=HALF)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env.unwrapped)


@pytest.mark.parametrize("steps_per_episode", [1, 3])
def test_sb3_check_env_passes_with_only_allowed_warnings(graph, steps_per_episode):
    env = make_env(graph, steps_per_episode=steps_per_episode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for message in SB3_ALLOWED:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        sb3_check_env(env)


def test_make_builds_registered_env(graph):
    env = gymnasium.make(ENV_ID, graph=graph, score_fn=Score(graph), constraints=HALF, steps_per_episode=2)
    assert env.spec.id == "autoprune/ChannelPrune-v1"
    assert isinstance(env.unwrapped, ChannelPruneEnv)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    _, _, terminated, truncated, info = env.step(env.action_space.sample())
    assert not terminated and not truncated and "score" in info


# -- rewards -----------------------------------------------------------------------------------------------
def test_self_competition_formula():
    assert self_competition(0.7, None, 0.01) == 0.0
    assert self_competition(0.72, 0.70, 0.01) == pytest.approx(math.tanh(2.0))
    assert self_competition(0.69, 0.70, 0.01) == pytest.approx(math.tanh(-1.0))
    assert self_competition(0.5, 0.5, 0.1) == 0.0
    with pytest.raises(ValueError):
        self_competition(0.5, 0.4, 0.0)


def test_adaptive_tau_follows_the_spread_of_recent_scores():
    assert adaptive_tau([], 0.01) == 0.01
    assert adaptive_tau([0.5], 0.01) == 0.01
    assert adaptive_tau([0.2, 0.6], 0.01) == pytest.approx(0.2)
    assert adaptive_tau([0.5, 0.5, 0.5], 0.01) == 0.01
    # Uniformly poor recent masks far below the best: the gap sets the temperature, so rewards still rank them.
    recent = [0.14, 0.15, 0.13, 0.14]
    tau = adaptive_tau(recent, 0.01, best=0.6)
    assert tau == pytest.approx(0.6 - 0.14)
    assert self_competition(0.13, 0.6, tau) < self_competition(0.15, 0.6, tau) < -0.5
    assert self_competition(0.15, 0.6, tau) - self_competition(0.13, 0.6, tau) > 0.005
    assert self_competition(0.15, 0.6, adaptive_tau(recent, 0.01)) == pytest.approx(-1.0)  # spread alone saturates


def test_reward_uses_the_adaptive_temperature(graph):
    env = make_env(graph, tau=1e-4, lagrange_lr=0.0)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    scores = []
    for _ in range(4):
        env.reset()
        _, reward, *_, info = env.step((rng.random(graph.num_decisions) < 0.5).astype(np.int8))
        if len(scores) >= 2:
            best = max(scores)
            expected = math.tanh((info["score"] - best) / adaptive_tau(scores, 1e-4, best))
            assert reward == pytest.approx(expected)
        scores.append(info["score"])
    assert env.get_state()["recent_scores"] == pytest.approx(scores)


def test_sign_competition_formula():
    assert sign_competition(0.7, None) == 0.0
    assert sign_competition(0.71, 0.70) == 1.0
    assert sign_competition(0.70, 0.70) == -1.0
    assert sign_competition(0.1, 0.70) == -1.0


def test_lagrangian_penalty_and_dual_ascent():
    assert lagrangian_penalty(0.2, 3.0) == pytest.approx(0.6)
    assert lagrangian_penalty(0.0, 3.0) == 0.0
    assert dual_ascent(0.0, 0.4, 0.05) == pytest.approx(0.02)
    assert dual_ascent(0.01, -0.4, 0.05) == 0.0  # never negative
    assert dual_ascent(1.0, -0.1, 0.5) == pytest.approx(0.95)


def test_step_reward_is_competition_minus_penalty(graph):
    env = make_env(graph, tau=0.05, lagrange_lr=0.5)
    env.reset(seed=0)
    ones = np.ones(graph.num_decisions, dtype=np.int8)
    _, first, *_, info = env.step(ones)
    assert first == 0.0  # first evaluation: no best yet, multiplier still 0
    lam, best = info["lagrange"], info["best_score"]
    assert lam > 0 and info["violation"] > 0
    env.reset()
    _, reward, *_, info = env.step(ones)
    expected = math.tanh((info["score"] - best) / 0.05) - lam * info["violation"]
    assert reward == pytest.approx(expected)


def test_sign_reward_env(graph):
    env = make_env(graph, reward="sign", lagrange_lr=0.0)
    env.reset(seed=0)
    rewards = []
    for _ in range(5):
        rewards.append(env.step(env.action_space.sample())[1])
        env.reset()
    assert rewards[0] == 0.0 and set(rewards[1:]) <= {-1.0, 1.0}


# -- constraints -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps_per_episode", [1, 3])
def test_every_scored_mask_is_feasible(graph, steps_per_episode):
    env = make_env(graph, steps_per_episode=steps_per_episode)
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(30):
        _, _, terminated, _, info = env.step(env.action_space.sample())
        assert info["flops_ratio"] <= HALF.flops + 1e-9
        assert HALF.feasible(graph, info["keep"])
        np.testing.assert_array_equal(env.score_fn.calls[-1], info["keep"])  # the projection is what was scored
        if terminated:
            env.reset()
    assert all(HALF.feasible(graph, k) for k in env.score_fn.calls)
    assert len(env.score_fn.calls) == env.evaluations == 30


def test_lagrange_rises_while_violating_and_decays_when_feasible(graph):
    env = make_env(graph, lagrange_lr=0.1)
    env.reset(seed=0)
    ones = np.ones(graph.num_decisions, dtype=np.int8)
    lams = []
    for _ in range(5):
        lams.append(env.step(ones)[-1]["lagrange"])
        env.reset()
    assert all(b > a for a, b in zip([0.0, *lams], lams, strict=False))
    # A proposal well under budget earns no penalty and lowers the multiplier.
    small = env.step(np.zeros(graph.num_decisions, dtype=np.int8))[-1]
    assert small["violation"] == 0.0 and small["lagrange"] < lams[-1]


def test_infeasible_target_is_refused(graph):
    with pytest.raises(AutopruneError, match="infeasible"):
        make_env(graph, constraints=Constraints(flops=0.001))


def test_bad_actions_and_finished_episodes_raise(graph):
    env = make_env(graph)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.ones(graph.num_decisions + 1))
    env.step(env.action_space.sample())
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())


# -- episodes and state ------------------------------------------------------------------------------------
def test_iterative_episode_observes_the_last_projected_mask(graph):
    env = make_env(graph, steps_per_episode=3)
    obs, _ = env.reset(seed=0)
    decisions = obs["decision_index"].astype(int)
    assert (obs["x"][decisions, KEEP] == 1).all()  # starts unpruned
    for t in range(3):
        obs, _, terminated, _, info = env.step(env.action_space.sample())
        np.testing.assert_array_equal(obs["x"][decisions, KEEP], info["keep"])
        assert terminated == (t == 2)


def test_state_round_trips_and_survives_seeded_reset(graph):
    env = make_env(graph, lagrange_lr=0.2)
    env.reset(seed=0)
    env.action_space.seed(1)
    for _ in range(6):
        env.step(np.ones(graph.num_decisions) if _ % 2 else env.action_space.sample())
        env.reset()
    state = json.loads(json.dumps(env.get_state()))  # JSON-ready
    assert state["evaluations"] == 6 and state["lagrange"] > 0 and state["best_score"] > 0

    resumed = make_env(graph, lagrange_lr=0.2)
    resumed.set_state(state)
    assert resumed.get_state() == state
    resumed.reset(seed=123)  # a learner's first, seeded reset keeps the loaded state
    assert resumed.get_state() == state
    np.testing.assert_array_equal(resumed.best_keep, env.best_keep)

    action = np.ones(graph.num_decisions)
    a, b = env.step(action), resumed.step(action)
    assert a[1] == b[1] and a[-1]["lagrange"] == b[-1]["lagrange"] and a[-1]["evaluations"] == 7


def test_seeded_reset_restarts_a_fresh_search(graph):
    env = make_env(graph)
    env.reset(seed=0)
    env.step(np.ones(graph.num_decisions))
    env.reset(seed=0)
    assert env.get_state() == ChannelPruneEnv._fresh_state()


def test_set_best_syncs_a_higher_global_best(graph):
    env = make_env(graph, lagrange_lr=0.0, tau=0.05)
    env.reset(seed=0)
    info = env.step(env.action_space.sample())[-1]
    env.set_best(info["score"] - 0.5)  # lower: ignored
    assert env.best_score == info["score"]
    env.set_best(2.0)
    assert env.best_score == 2.0
    env.reset()
    _, reward, *_, info = env.step(env.action_space.sample())
    assert reward == pytest.approx(math.tanh((info["score"] - 2.0) / 0.05))
    assert info["best_score"] == 2.0
