"""PPO with the GAT policy learns: on the digits CNN's channel graph with a synthetic score it beats random masks.

The score is the share of a hidden importance vector that a mask keeps. Importance is per channel and random,
scaled per layer (some layers matter far more than others), so what is worth keeping is known, the best mask is
far better than what projection by weight magnitude keeps, and a policy that learns layer sensitivity finds it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

from autoprune.agents import make_ppo, train, warm_start
from autoprune.agents.baselines import drop_lowest
from autoprune.constraints import Constraints, project
from autoprune.envs import ChannelPruneEnv
from autoprune.graph import ChannelGraph, build_channel_graph
from autoprune.models import build_model

HALF = Constraints(flops=0.5)
SMALL = {"features_extractor_kwargs": {"hidden_dim": 32, "heads": 2, "num_layers": 2}}
BUDGET = 640


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny graphs run fastest on one thread, and far slower with two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def graph() -> ChannelGraph:
    torch.manual_seed(0)
    return build_channel_graph(build_model("digits_cnn"), torch.randn(1, 1, 8, 8))


class HiddenImportance:
    """score(keep) = importance · keep / importance.sum(), importance = layer scale × U(0, 1) per channel."""

    def __init__(self, graph: ChannelGraph, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        scales = [8.0, 1.0, 4.0, 0.25]
        self.importance = np.concatenate(
            [s * rng.random(g.size) for s, g in zip(scales, graph.prunable_groups, strict=True)]
        )

    def __call__(self, keep: np.ndarray) -> float:
        return float(self.importance @ keep / self.importance.sum())


def random_masks_best(graph: ChannelGraph, score, budget: int, seed: int) -> float:
    """Best of `budget` magnitude-weighted random masks, each projected onto the budget."""
    rng = np.random.default_rng(seed)
    weight = graph.channel_stats[:, 0] / graph.channel_stats[:, 0].mean()
    best = -np.inf
    for _ in range(budget):
        p = np.clip(rng.uniform(0.3, 1.0) * weight, 0, 1)
        best = max(best, score(project(graph, (rng.random(graph.num_decisions) < p).astype(np.int8), HALF)))
    return best


def run(graph: ChannelGraph, evaluations: int, seed: int = 0, **ppo_kwargs) -> tuple[ChannelPruneEnv, list[dict]]:
    env = ChannelPruneEnv(graph, HiddenImportance(graph), HALF, tau=0.2)
    ppo_kwargs.setdefault("policy_kwargs", SMALL)
    ppo = make_ppo(env, seed=seed, **ppo_kwargs)
    records: list[dict] = []
    train(ppo, evaluations, callback=records.append)
    return env, records


def test_ppo_beats_random_masks_on_hidden_importance(graph):
    score = HiddenImportance(graph)
    random_best = max(random_masks_best(graph, score, BUDGET, seed) for seed in range(2))
    env, records = run(graph, BUDGET)
    assert len(records) == env.evaluations == BUDGET
    assert all(r["flops_ratio"] <= HALF.flops + 1e-9 for r in records)
    # Measured (learning rate 3e-4, KL cap 1.0, 640 evaluations): PPO 0.87-0.97 (seeds 0-2), random 0.78-0.80.
    assert env.best_score > random_best + 0.05
    late, early = np.mean([r["score"] for r in records[-64:]]), np.mean([r["score"] for r in records[:32]])
    assert late > early + 0.05  # the policy itself improved, not just a lucky draw


def test_seeded_runs_repeat_the_same_scores(graph):
    kwargs = {"n_steps": 16, "batch_size": 16, "n_epochs": 2}
    first = [r["score"] for r in run(graph, 40, seed=5, **kwargs)[1]]
    second = [r["score"] for r in run(graph, 40, seed=5, **kwargs)[1]]
    other = [r["score"] for r in run(graph, 40, seed=6, **kwargs)[1]]
    assert first == second
    assert first != other


def test_budget_is_exact_and_training_continues(graph):
    env = ChannelPruneEnv(graph, HiddenImportance(graph), HALF)
    ppo = make_ppo(env, seed=0, n_steps=16, batch_size=16, n_epochs=1, policy_kwargs=SMALL)
    train(ppo, 20)
    assert env.evaluations == ppo.num_timesteps == 20
    train(ppo, 12)
    assert env.evaluations == ppo.num_timesteps == 32


def test_evaluation_callback_forwards_records_and_stops(graph):
    env = ChannelPruneEnv(graph, HiddenImportance(graph), HALF)
    ppo = make_ppo(env, seed=0, n_steps=16, batch_size=16, n_epochs=1, policy_kwargs=SMALL)
    records: list[dict] = []

    def on_eval(record: dict) -> bool:
        records.append(record)
        return len(records) < 7

    train(ppo, 100, callback=on_eval)
    assert len(records) == env.evaluations == 7
    assert {"score", "flops_ratio", "keep", "lagrange", "reward", "num_timesteps"} <= set(records[0])
    assert "terminal_observation" not in records[0]
    assert [r["evaluations"] for r in records] == list(range(1, 8))


def test_agent_learns_a_group_level_choice_that_sampling_never_finds(graph):
    """The right answer is a group-level choice: keep the coupled group (channels summed from two layers) whole.

    score = kept share of all channels − (cut share of the coupled group). The agent starts from the global
    magnitude ranking, which cuts a quarter of that group; PPO must move the group's whole width, and the
    frozen policy (learning rate 0, the `rl-frozen` ablation) only samples a few channels around the start.
    """
    coupled = next(g for g in graph.prunable_groups if graph.crosses_merge(g))
    part = slice(coupled.offset, coupled.offset + coupled.size)

    def score(keep: np.ndarray) -> float:
        return float(keep.mean() - (1 - keep[part].mean()))

    importance = graph.channel_stats[:, 0].astype(float)
    start = drop_lowest(graph, HALF, importance)
    assert start[part].mean() < 0.8
    kept = {}
    for lr in (3e-3, 0.0):
        env = ChannelPruneEnv(graph, score, HALF, priority=importance)
        env.set_state({"best_score": score(start), "best_keep": start.tolist(), "best_keep_score": score(start)})
        terms = warm_start(graph, start, importance).group_terms
        ppo = make_ppo(env, seed=0, n_steps=16, batch_size=16, learning_rate=lr,
                       policy_kwargs={**SMALL, "init_keep_logit": 0.0, "group_terms": terms})  # fmt: skip
        records: list[dict] = []
        train(ppo, 160, callback=records.append)
        kept[lr] = (env.best_keep[part].mean(), np.mean([r["keep"][part].mean() for r in records[-16:]]))
    # Measured: PPO keeps the whole group (best and the last 16 samples) in seeds 0-2; frozen stays at 0.73-0.77.
    assert kept[3e-3][0] == 1.0 and kept[3e-3][1] > 0.95
    assert kept[0.0][0] < 0.85


class RecordEntropy(BaseCallback):
    """Records the policy's mask entropy (nats) on `observation` before every rollout."""

    def __init__(self, observation: dict) -> None:
        super().__init__()
        self.observation = observation
        self.entropies: list[float] = []

    def _on_rollout_start(self) -> None:
        with torch.no_grad():
            obs, _ = self.model.policy.obs_to_tensor(self.observation)
            self.entropies.append(float(self.model.policy.get_distribution(obs).entropy().sum()))

    def _on_step(self) -> bool:
        return True


def test_updates_on_pure_noise_do_not_collapse_the_policy(graph):
    """When scores carry no signal, PPO's updates must not make the policy deterministic.

    On ResNet-20 at 30% FLOPs, updates at the old learning rate 3e-3 without a KL cap cut the mask distribution's
    entropy from 115 to 6 nats in three updates; searches that collapsed so proposed (nearly) one poor mask for
    the rest of their budget. With those updates seed 1 here falls from 40 to 15 nats; with the KL cap alone all
    three seeds stayed above 38.
    """
    importance = graph.channel_stats[:, 0].astype(float)
    terms = warm_start(graph, drop_lowest(graph, HALF, importance), importance).group_terms
    observation, _ = ChannelPruneEnv(graph, lambda keep: 0.0, HALF).reset(seed=0)
    for seed in range(3):
        noise = np.random.default_rng(seed)
        env = ChannelPruneEnv(graph, lambda keep, rng=noise: float(rng.random()), HALF, priority=importance)
        ppo = make_ppo(env, seed=seed, n_steps=16, batch_size=16,
                       policy_kwargs={**SMALL, "init_keep_logit": 0.0, "group_terms": terms})  # fmt: skip
        record = RecordEntropy(observation)
        train(ppo, 160, callback=record)
        assert len(record.entropies) == 10
        assert min(record.entropies) > 0.8 * record.entropies[0], (seed, record.entropies)
