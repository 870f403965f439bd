"""Tests for autoprune.agents.gat and autoprune.agents.policy: shapes, batching, action head size, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from torch import nn
from torch_geometric.data import Batch

from autoprune.agents import GATEncoder, GATPolicy, make_ppo
from autoprune.agents.policy import DecisionLogits, batch_graphs
from autoprune.constraints import Constraints
from autoprune.envs import ChannelPruneEnv
from autoprune.graph import ChannelGraph, build_channel_graph
from autoprune.graph.features import FEATURES, GraphFeatures

HALF = Constraints(flops=0.5)
SMALL = {"hidden_dim": 32, "heads": 2, "num_layers": 2}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny graphs run fastest on one thread, and far slower with two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_cnn(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, 4),
    ).eval()


def toy_graph(width: int) -> ChannelGraph:
    return build_channel_graph(toy_cnn(width), torch.randn(1, 3, 8, 8))


@pytest.fixture(scope="module")
def graph() -> ChannelGraph:
    return toy_graph(6)


def make_env(graph: ChannelGraph, steps_per_episode: int = 1) -> ChannelPruneEnv:
    weights = np.random.default_rng(0).random(graph.num_decisions)
    return ChannelPruneEnv(graph, lambda k: float(weights @ k), HALF, steps_per_episode=steps_per_episode)


def make_policy(env: ChannelPruneEnv, seed: int = 0, **kwargs) -> GATPolicy:
    torch.manual_seed(seed)
    kwargs.setdefault("features_extractor_kwargs", SMALL)
    return GATPolicy(env.observation_space, env.action_space, lambda _: 1e-3, **kwargs)


def observations(env: ChannelPruneEnv, count: int) -> list[dict[str, np.ndarray]]:
    """`count` observations of different masks."""
    env.reset(seed=0)
    env.action_space.seed(0)
    obs = [env.reset()[0]]
    while len(obs) < count:
        obs.append(env.step(env.action_space.sample())[0])
    return obs


def stack(policy: GATPolicy, obs: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    batched = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
    return policy.obs_to_tensor(batched)[0]


def test_encoder_batches_different_graphs_like_separate_runs():
    torch.manual_seed(0)
    encoder = GATEncoder(len(FEATURES), hidden_channels=16, num_layers=2, heads=2)
    datas = [GraphFeatures(toy_graph(w)).to_pyg() for w in (4, 7)]
    nodes, graphs = encoder(*(lambda b: (b.x, b.edge_index, b.batch))(Batch.from_data_list(datas)))
    assert nodes.shape == (sum(d.num_nodes for d in datas), 16)
    assert graphs.shape == (2, 16)
    start = 0
    for i, d in enumerate(datas):
        alone_nodes, alone_graph = encoder(d.x, d.edge_index)
        torch.testing.assert_close(nodes[start : start + d.num_nodes], alone_nodes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(graphs[i : i + 1], alone_graph, atol=1e-5, rtol=1e-5)
        start += d.num_nodes


def test_encoder_rejects_heads_that_do_not_divide_hidden():
    with pytest.raises(ValueError, match="multiple of heads"):
        GATEncoder(8, hidden_channels=30, heads=4)


def test_batch_graphs_matches_pyg_from_data_list(graph):
    env = make_env(graph, steps_per_episode=3)
    policy = make_policy(env)
    obs = observations(env, 3)
    batched, decisions = batch_graphs(stack(policy, obs))
    reference = Batch.from_data_list(
        [GraphFeatures(graph).to_pyg()] * 3  # same topology; features differ, so compare structure only
    )
    torch.testing.assert_close(batched.edge_index, reference.edge_index)
    torch.testing.assert_close(batched.batch, reference.batch)
    torch.testing.assert_close(batched.x, torch.as_tensor(np.concatenate([o["x"] for o in obs])))
    offsets = torch.arange(3).view(3, 1) * env.features.num_nodes
    torch.testing.assert_close(decisions, torch.as_tensor(env.features.decision_nodes).view(1, -1) + offsets)


def test_forward_shapes_and_logits_per_decision(graph):
    env = make_env(graph, steps_per_episode=3)
    policy = make_policy(env)
    d = graph.num_decisions
    obs = stack(policy, observations(env, 4))
    actions, values, log_prob = policy(obs)
    assert actions.shape == (4, d) and set(actions.unique().tolist()) <= {0.0, 1.0}
    assert values.shape == (4, 1) and log_prob.shape == (4,)
    assert policy.keep_logits(obs).shape == (4, d)
    values, log_prob, entropy = policy.evaluate_actions(obs, actions)
    assert values.shape == (4, 1) and log_prob.shape == (4,) and entropy.shape == (4,)
    single, _ = policy.predict(observations(env, 1)[0])
    assert single.shape == (d,)


def test_batched_logits_equal_single_graph_logits(graph):
    env = make_env(graph, steps_per_episode=3)
    policy = make_policy(env)
    obs = observations(env, 4)
    with torch.no_grad():
        together = policy.keep_logits(stack(policy, obs))
        alone = torch.cat([policy.keep_logits(stack(policy, [o])) for o in obs])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together[0], together[1])  # the mask in the features changes the logits


def test_copies_of_one_observation_are_encoded_once_with_the_same_outputs_and_gradients(graph):
    env = make_env(graph)
    policy = make_policy(env)
    extractor = policy.features_extractor
    obs = stack(policy, [env.reset(seed=0)[0]] * 5)
    calls = []
    hook = extractor.encoder.register_forward_hook(lambda _, args, __: calls.append(args[0].shape[0]))
    shared = extractor(obs)
    hook.remove()
    assert calls == [obs["x"].shape[1]]  # one graph's nodes, once
    separate = extractor._encode(obs)  # the general path: every copy encoded
    torch.testing.assert_close(shared, separate, atol=1e-6, rtol=1e-5)
    weights = torch.randn_like(separate)
    grads = [torch.autograd.grad((out * weights).sum(), list(extractor.parameters())) for out in (shared, separate)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_initial_keep_probability_follows_init_logit(graph):
    env = make_env(graph)
    for init in (1.5, -0.5):
        policy = make_policy(env, init_keep_logit=init)
        with torch.no_grad():
            p = torch.sigmoid(policy.keep_logits(stack(policy, observations(env, 1))))
        assert abs(p.mean().item() - 1 / (1 + math.exp(-init))) < 0.02


def test_no_dense_decision_by_decision_layer():
    shapes, counts = [], {}
    for g in (toy_graph(4), toy_graph(24)):
        policy = make_policy(make_env(g))
        shapes.append({name: p.shape for name, p in policy.named_parameters()})
        counts[g.num_decisions] = sum(p.numel() for p in policy.parameters())
    (d1, p1), (d2, p2) = sorted(counts.items())
    assert d2 >= 5 * d1
    # Only the per-decision bias depends on D: parameters grow by exactly D, not D².
    assert [n for n in shapes[0] if shapes[0][n] != shapes[1][n]] == ["action_net.bias"]
    assert p2 - p1 == d2 - d1


def test_same_seed_same_policy_and_actions(graph):
    env = make_env(graph)
    obs = observations(env, 1)[0]
    first, second, other = make_policy(env, seed=3), make_policy(env, seed=3), make_policy(env, seed=4)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert any(
        not torch.equal(a, b) for a, b in zip(first.state_dict().values(), other.state_dict().values(), strict=True)
    )
    torch.manual_seed(0)
    acts_1 = [first.predict(obs)[0] for _ in range(3)]
    torch.manual_seed(0)
    acts_2 = [second.predict(obs)[0] for _ in range(3)]
    np.testing.assert_array_equal(np.stack(acts_1), np.stack(acts_2))


def test_saved_ppo_reloads_the_same_policy(graph, tmp_path):
    env = make_env(graph)
    ppo = make_ppo(env, seed=0, policy_kwargs={"init_keep_logit": 0.7, "features_extractor_kwargs": SMALL})
    ppo.save(tmp_path / "ppo.zip")
    loaded = PPO.load(tmp_path / "ppo.zip", env=make_env(graph), device="cpu")
    assert isinstance(loaded.policy, GATPolicy) and loaded.policy.init_keep_logit == 0.7
    obs = stack(ppo.policy, observations(env, 1))
    with torch.no_grad():
        torch.testing.assert_close(ppo.policy.keep_logits(obs), loaded.policy.keep_logits(obs))


def test_policy_refuses_non_binary_actions(graph):
    from gymnasium import spaces

    env = make_env(graph)
    with pytest.raises(ValueError, match="MultiBinary"):
        GATPolicy(env.observation_space, spaces.Discrete(3), lambda _: 1e-3)


def test_warm_start_policy_has_the_global_ranking_as_its_mode():
    from autoprune.agents import ranking_warm_start
    from autoprune.agents.baselines import drop_lowest, group_importance
    from autoprune.constraints import Constraints
    from autoprune.graph import build_channel_graph
    from autoprune.models import build_model

    model = build_model("digits_cnn").eval()
    example = torch.zeros(1, 1, 8, 8)
    graph = build_channel_graph(model, example)
    constraints = Constraints(flops=0.5)
    start = ranking_warm_start(model, example, graph, constraints)
    importance = group_importance(model, example, graph)
    np.testing.assert_array_equal(start.keep, drop_lowest(graph, constraints, importance))
    assert constraints.feasible(graph, start.keep)
    logits = np.asarray(start.logits)
    assert logits.shape == (graph.num_decisions,)
    np.testing.assert_array_equal(logits > 0, start.keep.astype(bool))  # the mode is the ranking's mask
    # Samples differ from the mode in a few channels next to the cut, and cost what the mode costs on average.
    p = 1 / (1 + np.exp(-logits))
    flips = np.where(start.keep == 1, 1 - p, p)
    assert 4 < flips.sum() < 12
    order = np.argsort(importance, kind="stable")
    cut = np.flatnonzero(start.keep[order] == 0).max()
    assert flips[order[max(0, cut - 2) : cut + 3]].min() > flips[order[[0, -1]]].max()
    assert graph.flops(p) / graph.base_flops == pytest.approx(graph.flops(start.keep) / graph.base_flops, abs=0.03)
    head = DecisionLogits(latent_dim=4, num_decisions=graph.num_decisions, init_logit=start.logits)
    assert torch.allclose(head.bias, torch.as_tensor(logits, dtype=torch.float32))
    with pytest.raises(ValueError, match="one value per decision"):
        DecisionLogits(latent_dim=4, num_decisions=3, init_logit=[0.0, 1.0])


def test_training_leaves_no_logger_folder_in_the_temp_dir(graph, tmp_path, monkeypatch):
    import tempfile

    from autoprune.agents.ppo import train

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ppo = make_ppo(make_env(graph), seed=0, n_steps=4, batch_size=4, policy_kwargs={"features_extractor_kwargs": SMALL})
    train(ppo, 4)
    assert not list(tmp_path.glob("SB3-*"))  # SB3's default logger would make one per `learn`
