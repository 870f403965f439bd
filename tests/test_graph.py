"""The channel graph: coupling, the option-A trap, ignored layers, edges, features, costs, legalize."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoprune.constraints import Constraints, check_feasible, fill, project
from autoprune.errors import AutopruneError
from autoprune.graph import build_channel_graph
from autoprune.graph.features import FEATURES, GraphFeatures, to_networkx
from autoprune.masking import ChannelMasker
from autoprune.models import build_model
from autoprune.pruning import prune_model


@pytest.fixture(scope="module")
def resnet20_graph():
    model = build_model("resnet20").eval()
    return model, build_channel_graph(model, torch.zeros(1, 3, 32, 32), model_name="resnet20")


class PadLambda(nn.Module):
    """The published option-A shortcut: a lambda around F.pad, opaque to torch-pruning."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.planes = planes

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.planes // 4, self.planes // 4), "constant", 0)


def test_option_a_streams_are_separate_groups(resnet20_graph) -> None:
    _, graph = resnet20_graph
    streams = {g.root: g for g in graph.groups if any(m.module.endswith("bn2") for m in g.members)}
    # One residual stream per stage: 16, 32 and 64 channels, none spanning two stages.
    assert sorted(g.size for g in streams.values()) == [16, 32, 64]
    for g in streams.values():
        stages = {m.module.split(".")[0] for m in g.members if m.module.startswith("layer") and m.side == "out"}
        assert len(stages) == 1, (g.root, stages)


def test_trap_with_fpad_shortcut_is_frozen_not_pruned_wrongly() -> None:
    model = build_model("resnet20").eval()
    for layer in (model.layer2, model.layer3):
        layer[0].shortcut = PadLambda(layer[0].conv1.out_channels)
    graph = build_channel_graph(model, torch.zeros(1, 3, 32, 32))
    frozen = [g for g in graph.groups if not g.prunable and "ignored" not in g.reason]
    assert frozen, "the mis-coupled stream group must be frozen"
    assert all("pruning it" in g.reason for g in frozen)
    assert "not pruned" in graph.summary()
    rng = np.random.default_rng(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), ChannelMasker(model, graph) as masker:
        for _ in range(5):
            keep = graph.legalize((rng.random(graph.num_decisions) < 0.5).astype(np.int8))
            masker.set_mask(keep)
            masked = model(x)
            masker.set_mask(None)
            assert (prune_model(model, graph, keep)(x) - masked).abs().max() < 1e-4


def test_output_layer_and_ignore_list_are_marked(resnet20_graph) -> None:
    _, graph = resnet20_graph
    linear = [g for g in graph.groups if g.root == "linear"]
    assert len(linear) == 1 and not linear[0].prunable and "ignored" in linear[0].reason
    model = build_model("resnet20").eval()
    ignored = build_channel_graph(model, torch.zeros(1, 3, 32, 32), ignore=["layer1.0.conv1"])
    group = next(g for g in ignored.groups if g.root == "layer1.0.conv1")
    assert not group.prunable and "layer1.0.conv1" in group.reason
    assert ignored.num_decisions == graph.num_decisions - 16
    with pytest.raises(AutopruneError, match="no module"):
        build_channel_graph(model, torch.zeros(1, 3, 32, 32), ignore=["nope"])


def test_resnet56_graph_has_linear_edges() -> None:
    """(Conversion time is a benchmark, bench/generality.py, not a timed test.)"""
    model = build_model("resnet56").eval()
    graph = build_channel_graph(model, torch.zeros(1, 3, 32, 32))
    feats = GraphFeatures(graph)
    channels = sum(layer.out_channels for layer in graph.layers.values())
    # Edges grow with (channel, module) incidences: a small constant times the channels, never all-to-all.
    assert feats.edge_index.shape[1] <= 8 * channels
    small = GraphFeatures(build_channel_graph(build_model("resnet20").eval(), torch.zeros(1, 3, 32, 32)))
    per_decision = feats.edge_index.shape[1] / graph.num_decisions
    assert per_decision < 1.5 * small.edge_index.shape[1] / small.graph.num_decisions


def test_features_and_pyg_and_networkx(resnet20_graph) -> None:
    _, graph = resnet20_graph
    feats = GraphFeatures(graph)
    keep = graph.full_mask()
    keep[:5] = 0
    x = feats.node_features(keep, target=0.5)
    assert x.shape == (feats.num_nodes, len(FEATURES))
    assert np.isfinite(x).all()
    keep_col = FEATURES.index("keep")
    assert (x[feats.decision_nodes[:5], keep_col] == 0).all() and (x[feats.decision_nodes[5:], keep_col] == 1).all()
    assert x[0, FEATURES.index("target")] == 0.5
    data = feats.to_pyg(keep, 0.5)
    assert data.x.shape[0] == data.edge_index.max().item() + 1 or data.edge_index.max() < data.x.shape[0]
    assert data.decision_index.shape == (graph.num_decisions,)
    g = to_networkx(graph)
    channels = [n for n, d in g.nodes(data=True) if d["type"] == "channel"]
    assert len(channels) == graph.num_decisions
    assert nx.is_weakly_connected(g)


def test_cost_model_marginal_and_legalize(resnet20_graph) -> None:
    _, graph = resnet20_graph
    full = graph.full_mask()
    marginal = graph.flops_cost.marginal(full)
    for d in (0, 17, graph.num_decisions - 1):
        keep = full.copy()
        keep[d] = 0
        assert graph.flops(full) - graph.flops(keep) == pytest.approx(marginal[d])
    empty = graph.legalize(np.zeros(graph.num_decisions, dtype=np.int8))
    for g in graph.prunable_groups:
        assert empty[g.offset : g.offset + g.size].sum() == graph.min_channels


def test_projection_meets_budget_and_infeasible_target_is_an_error(resnet20_graph) -> None:
    _, graph = resnet20_graph
    for target in (0.7, 0.5, 0.3):
        keep = project(graph, graph.full_mask(), Constraints(flops=target))
        assert graph.flops(keep) / graph.base_flops <= target + 1e-9
        assert graph.flops(keep) / graph.base_flops > target - 0.02  # drops no more than needed
    with pytest.raises(AutopruneError, match="infeasible"):
        check_feasible(graph, Constraints(flops=0.001))
    with pytest.raises(AutopruneError, match="ratio"):
        Constraints(flops=1.5)


def test_projection_with_rounded_widths_still_meets_the_budget() -> None:
    model = build_model("resnet20").eval()
    graph = build_channel_graph(model, torch.zeros(1, 3, 32, 32), round_to=8)
    for target in (0.7, 0.5, 0.3):
        keep = project(graph, graph.full_mask(), Constraints(flops=target))
        assert graph.flops(keep) / graph.base_flops <= target + 1e-9
        assert all(int(keep[g.offset : g.offset + g.size].sum()) % 8 == 0 for g in graph.prunable_groups)


def test_untraceable_model_gives_clear_error() -> None:
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).detach().sum()

    with pytest.raises(AutopruneError):
        build_channel_graph(Bad(), torch.zeros(1, 2, 8, 8))


@pytest.mark.parametrize("round_to", [1, 8])
def test_fill_uses_the_budget_a_mask_leaves_and_keeps_what_it_kept(round_to: int) -> None:
    graph = build_channel_graph(build_model("resnet20").eval(), torch.zeros(1, 3, 32, 32), round_to=round_to)
    rng = np.random.default_rng(0)
    for target in (0.5, 0.3):
        budget = Constraints(flops=target)
        for _ in range(5):
            sparse = project(graph, (rng.random(graph.num_decisions) < 0.3).astype(np.int8), budget)
            filled = fill(graph, sparse, budget)
            assert budget.feasible(graph, filled)
            assert np.all(filled >= sparse)
            assert np.array_equal(graph.legalize(filled), filled)
            assert graph.flops(filled) > graph.flops(sparse)
            for channel in np.flatnonzero(filled == 0):  # maximal: no channel left out still fits
                more = filled.copy()
                more[channel] = 1
                assert not budget.feasible(graph, graph.legalize(more))
        full_at_budget = project(graph, graph.full_mask(), budget)
        assert budget.feasible(graph, fill(graph, full_at_budget, budget))
    with pytest.raises(AutopruneError, match="feasible"):
        fill(graph, graph.full_mask(), Constraints(flops=0.5))


@pytest.mark.parametrize(
    ("in_shape", "out_shape", "channels", "kind"),
    [
        ((2, 8, 4, 4), (2, 8, 16), 8, "keep"),  # ViT's patch flatten
        ((2, 12, 12, 8), (2, 4, 3, 4, 3, 8), 8, "keep"),  # a window partition of channels-last (B, H, W, C)
        ((2, 8, 4, 4), (2, 128), 8, "flatten"),  # before a linear layer
        ((2, 8, 1, 1), (2, 8), 8, "keep"),
        ((2, 8, 4, 4), (2, 2, 4, 4, 4), 8, "opaque"),  # a channel shuffle's first view
        ((2, 4, 2, 4, 4), (2, 8, 4, 4), 8, "opaque"),  # and its second
        ((2, 9, 24), (2, 9, 3, 2, 4), 24, "opaque"),  # qkv split into heads
    ],
)
def test_reshapes_are_classified_by_their_shapes(in_shape, out_shape, channels, kind) -> None:
    from autoprune.graph.depgraph import classify_reshape

    assert classify_reshape(in_shape, out_shape, channels) == kind
