"""Masked network == physically pruned network, and counted FLOPs/params == torch-pruning's counter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_pruning as tp

from autoprune.graph import build_channel_graph
from autoprune.masking import ChannelMasker
from autoprune.models import MODELS, build_model
from autoprune.plan import Plan
from autoprune.pruning import prune_model

MASKS_PER_MODEL = 20


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics, so that a wrongly masked channel shows in the logits."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) * 0.4 + 0.3)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.6 - 0.3)


def random_masks(graph, count: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        density = rng.uniform(0.2, 0.95)
        yield graph.legalize((rng.random(graph.num_decisions) < density).astype(np.int8))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_masked_equals_pruned_and_flops_match(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    randomize_bn(model)
    shape = MODELS[name].input_shape
    example = torch.zeros(1, *shape)
    graph = build_channel_graph(model, example, model_name=name)
    assert graph.num_decisions > 0
    assert all(g.prunable for g in graph.groups if "ignored" not in g.reason), graph.summary()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    masker = ChannelMasker(model, graph)
    with torch.no_grad():
        for keep in random_masks(graph, MASKS_PER_MODEL, seed=len(name)):
            masker.set_mask(keep)
            masked = model(x)
            masker.set_mask(None)
            pruned = prune_model(model, graph, keep)
            assert (pruned(x) - masked).abs().max().item() <= 1e-4
            flops, params = tp.utils.count_ops_and_params(pruned, example)
            assert graph.flops(keep) == pytest.approx(flops, rel=5e-3)
            assert graph.params(keep) == pytest.approx(params, rel=5e-3)
    masker.remove()


def test_plan_apply_matches_masked_network() -> None:
    model = build_model("resnet20").eval()
    randomize_bn(model)
    graph = build_channel_graph(model, torch.zeros(1, 3, 32, 32), model_name="resnet20")
    keep = next(random_masks(graph, 1, seed=3))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), ChannelMasker(model, graph) as masker:
        masker.set_mask(keep)
        expected = model(x)
    plan = Plan.from_dict(Plan.from_mask(model, graph, keep).to_dict())  # through JSON form
    fresh = build_model("resnet20").eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (plan.apply(fresh)(x) - expected).abs().max().item() <= 1e-4
