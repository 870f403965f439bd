"""Projections onto the budget: `rescale` keeps a proposal's allocation across groups and uses the budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoprune.constraints import Constraints, project, rescale
from autoprune.graph import build_channel_graph
from autoprune.models import build_model


@pytest.fixture(scope="module")
def graph():
    return build_channel_graph(build_model("resnet20").eval(), torch.zeros(1, 3, 32, 32))


def widths(graph, keep: np.ndarray) -> np.ndarray:
    return np.array([keep[g.offset : g.offset + g.size].sum() for g in graph.prunable_groups])


@pytest.mark.parametrize("density", [0.3, 0.7, 1.0])
def test_rescale_scales_every_group_by_one_factor_and_uses_the_budget(graph, density: float) -> None:
    half = Constraints(flops=0.5)
    rng = np.random.default_rng(int(density * 10))
    proposal = (rng.random(graph.num_decisions) < density).astype(np.int8)
    proposal[: graph.prunable_groups[0].size] = 1  # the first stream whole in the proposal
    keep = rescale(graph, proposal, half)
    ratio = graph.flops(keep) / graph.base_flops
    assert ratio <= 0.5 + 1e-9
    assert ratio > 0.47  # grown or shrunk to the budget, up to whole channels
    before, after = widths(graph, graph.legalize(proposal)), widths(graph, keep)
    factor = after / before
    sizes = np.array([g.size for g in graph.prunable_groups])
    free = after < sizes  # groups not capped at their full width
    # One common factor, up to whole channels; the budget that leaves is filled, which may widen a group or two.
    assert np.mean(np.abs(factor[free] - np.median(factor[free])) < 0.35) >= 0.8
    if density == 1.0:  # over budget: kept channels go least important first, none come back
        assert not (keep & (1 - proposal)).any()


def test_rescale_keeps_a_whole_group_whole_where_project_cuts_it(graph) -> None:
    half = Constraints(flops=0.5)
    stream = graph.prunable_groups[0]
    proposal = np.zeros(graph.num_decisions, dtype=np.int8)
    for g in graph.prunable_groups:
        proposal[g.offset : g.offset + (g.size if g is stream else int(0.85 * g.size))] = 1
    proposal[: stream.size] = 1
    scaled = rescale(graph, proposal, half)
    assert widths(graph, scaled)[0] >= 0.8 * stream.size
    assert graph.flops(scaled) / graph.base_flops <= 0.5 + 1e-9
    projected = project(graph, proposal, half)
    assert widths(graph, projected)[0] < widths(graph, scaled)[0]  # the global cut takes from the stream


def plain_fill(graph, keep: np.ndarray, constraints: Constraints, priority: np.ndarray) -> np.ndarray:
    """`fill` without its shortcut: every dropped channel is tried, in the same order."""
    from autoprune.constraints import _value_per_cost

    keep = graph.legalize(keep, priority)
    dropped = np.flatnonzero(keep == 0)
    value = _value_per_cost(graph, keep, constraints, priority)
    for channel in dropped[np.argsort(-value[dropped], kind="stable")]:
        trial = keep.copy()
        trial[channel] = 1
        trial = graph.legalize(trial, priority)
        if constraints.feasible(graph, trial):
            keep = trial
    return keep


@pytest.mark.parametrize("budget", [{"flops": 0.5}, {"flops": 0.3, "params": 0.4}, {"params": 0.6}])
def test_fill_skips_only_channels_that_cannot_fit(graph, budget) -> None:
    from autoprune.constraints import fill

    constraints = Constraints(**budget)
    rng = np.random.default_rng(0)
    priority = rng.random(graph.num_decisions)
    for density in (0.2, 0.5):
        keep = project(graph, (rng.random(graph.num_decisions) < density).astype(np.int8), constraints, priority)
        expected = plain_fill(graph, keep, constraints, priority)
        assert (expected != keep).any()  # the fill adds channels: the comparison is not empty
        np.testing.assert_array_equal(fill(graph, keep, constraints, priority), expected)
