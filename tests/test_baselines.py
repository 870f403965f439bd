"""Tests for autoprune.agents.baselines and the evaluation harness, on the digits CNN."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp

from autoprune.agents.baselines import (
    BASELINES,
    group_importance,
    keep_probabilities,
    l1_uniform,
    random_masks,
    run_baseline,
    uniform_mask,
)
from autoprune.agents.baselines.sensitivity import Sensitivity, allocate, probes_needed
from autoprune.agents.baselines.structural import structural_mask
from autoprune.agents.search_result import BudgetExhausted, Harness, SearchResult
from autoprune.constraints import Constraints
from autoprune.errors import AutopruneError
from autoprune.graph import ChannelGraph, build_channel_graph
from autoprune.masking import MaskedEvaluator
from autoprune.models import build_model
from autoprune.nn import CUSTOM_PRUNERS

HALF = Constraints(flops=0.5)
RANDOM = ("random-search", "random-masks")
DETERMINISTIC = ("structural", "l1-uniform", "global-magnitude", "global-taylor")


class Problem:
    """A random-init digits CNN, its graph, a few random labelled batches and a synthetic score."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = build_model("digits_cnn").eval()
        self.example_input = torch.randn(1, 1, 8, 8)
        self.graph: ChannelGraph = build_channel_graph(self.model, self.example_input)
        self.batches = [(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))) for _ in range(2)]
        self.weights = np.random.default_rng(0).random(self.graph.num_decisions)

    def score(self, keep: np.ndarray) -> float:
        """A score we control: the summed weight of the kept channels."""
        return float(self.weights @ keep)

    def run(
        self, name: str, constraints: Constraints = HALF, budget: int = 6, seed: int = 0, score_fn=None, **kw
    ) -> SearchResult:
        return run_baseline(
            name,
            self.graph,
            constraints,
            score_fn or self.score,
            budget=budget,
            seed=seed,
            model=self.model,
            example_input=self.example_input,
            batches=self.batches,
            **kw,
        )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models are tiny: intra-op threads only add overhead, and much of it on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def problem() -> Problem:
    return Problem()


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_feasible_and_within_budget(problem: Problem, name: str) -> None:
    seen = []
    graph = problem.graph
    budget = probes_needed(graph) + 4
    result = problem.run(name, budget=budget, on_eval=seen.append)
    assert result.method == name
    assert graph.flops(result.best_keep) / graph.base_flops <= 0.5 + 1e-9
    assert result.best_keep.dtype == np.int8 and result.best_keep.shape == (graph.num_decisions,)
    assert len(result.history) == (budget if name in RANDOM else 1)
    # Sensitivity probes (the unpruned network and every group at every width) count against the budget.
    assert result.evaluations == len(result.history) + (probes_needed(graph) + 1 if name == "sensitivity" else 0)
    assert seen == result.history
    assert [r["evaluation"] for r in result.history][-1] == result.evaluations
    assert all(r["flops_ratio"] <= 0.5 + 1e-9 for r in result.history)
    assert result.best_score == max(r["score"] for r in result.history) == result.history[-1]["best_score"]
    assert result.best_score == problem.score(result.best_keep)
    assert json.loads(json.dumps(result.to_dict()))["best_keep"] == result.best_keep.tolist()


@pytest.mark.parametrize("name", RANDOM)
def test_random_baselines_are_seeded(problem: Problem, name: str) -> None:
    first, again, other = (problem.run(name, budget=5, seed=s) for s in (1, 1, 2))
    assert np.array_equal(first.best_keep, again.best_keep)
    assert [r["score"] for r in first.history] == [r["score"] for r in again.history]
    assert [r["score"] for r in first.history] != [r["score"] for r in other.history]


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_baselines_repeat(problem: Problem, name: str) -> None:
    assert np.array_equal(problem.run(name, seed=1).best_keep, problem.run(name, seed=2).best_keep)


def test_l1_uniform_keeps_the_largest_uniform_width(problem: Problem) -> None:
    graph = problem.graph
    keep = l1_uniform(graph, HALF, problem.score, budget=3).best_keep
    l1 = graph.channel_stats[:, 0]
    sizes = np.array([g.size for g in graph.prunable_groups])
    counts = np.array([int(keep[g.offset : g.offset + g.size].sum()) for g in graph.prunable_groups])
    for g in graph.prunable_groups:
        part, weight = keep[g.offset : g.offset + g.size], l1[g.offset : g.offset + g.size]
        assert weight[part == 1].min() >= weight[part == 0].max()
    # One ratio r for every group: the counts are ceil(r * size) ...
    ratio = min(counts / sizes)
    assert np.array_equal(keep, uniform_mask(graph, ratio, l1))
    # ... and the next wider uniform network breaks the budget.
    wider = min((np.floor(ratio * sizes + 1e-9) + 1) / sizes)
    assert not HALF.feasible(graph, uniform_mask(graph, wider, l1))


def test_global_magnitude_ranks_by_torch_pruning_importance(problem: Problem) -> None:
    graph, model = problem.graph, problem.model
    scores = group_importance(model, problem.example_input, graph, "magnitude")
    dg = tp.DependencyGraph().build_dependency(
        model, example_inputs=problem.example_input, customized_pruners=dict(CUSTOM_PRUNERS)
    )
    group = dg.get_pruning_group(model.features[0], tp.prune_conv_out_channels, idxs=list(range(16)))
    expected = tp.importance.GroupMagnitudeImportance()(group).numpy()
    (first,) = (g for g in graph.prunable_groups if g.root == "features.0")
    np.testing.assert_allclose(scores[first.offset : first.offset + first.size], expected, rtol=1e-6)

    keep = problem.run("global-magnitude").best_keep
    partly_pruned = 0
    for g in graph.prunable_groups:
        part, imp = keep[g.offset : g.offset + g.size], scores[g.offset : g.offset + g.size]
        assert imp.mean() == pytest.approx(1.0)  # torch-pruning's "mean" normaliser
        if 0 < part.sum() < g.size:
            partly_pruned += 1
            assert imp[part == 1].min() >= imp[part == 0].max()
    assert partly_pruned >= 2
    # Ranked across groups: a kept channel below the most important dropped one is its group's last channel.
    below = np.flatnonzero((keep == 1) & (scores < scores[keep == 0].max()))
    group_of = {g.index: g for g in graph.prunable_groups}
    for i in below:
        g = group_of[graph.decision_group[i]]
        assert keep[g.offset : g.offset + g.size].sum() == graph.min_channels


def test_taylor_importance_leaves_the_model_as_it_was(problem: Problem) -> None:
    model = problem.model
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    model.features[1].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        scores = group_importance(model, problem.example_input, problem.graph, "taylor", problem.batches)
        assert not model.training
        assert not model.features[1].weight.requires_grad
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        assert all(p.grad is not None and bool((p.grad == 3.0).all()) for p in model.parameters())
    finally:
        model.features[1].weight.requires_grad_(True)
        model.zero_grad(set_to_none=True)
    magnitude = group_importance(model, problem.example_input, problem.graph, "magnitude")
    assert np.isfinite(scores).all() and not np.allclose(scores, magnitude)
    for g in problem.graph.prunable_groups:
        assert scores[g.offset : g.offset + g.size].mean() == pytest.approx(1.0)


def test_keep_probabilities_meet_the_budget_in_expectation(problem: Problem) -> None:
    graph = problem.graph
    p = keep_probabilities(graph, HALF)
    assert graph.flops(p) / graph.base_flops == pytest.approx(0.5, abs=1e-6)
    order = np.argsort(graph.channel_stats[:, 0])
    assert np.all(np.diff(p[order]) >= 0)  # heavier channels are likelier kept
    rng = np.random.default_rng(0)
    sampled = [graph.flops((rng.random(len(p)) < p).astype(np.int8)) / graph.base_flops for _ in range(300)]
    assert np.mean(sampled) == pytest.approx(0.5, abs=0.02)


def test_random_masks_improve_with_budget(problem: Problem) -> None:
    small = random_masks(problem.graph, HALF, problem.score, budget=3, seed=4)
    large = random_masks(problem.graph, HALF, problem.score, budget=20, seed=4)
    assert large.history[:3] == small.history  # the same candidates come first
    assert large.best_score >= small.best_score
    sharp = random_masks(problem.graph, HALF, problem.score, budget=3, seed=4, temperature=0.05)
    assert not np.array_equal(sharp.best_keep, small.best_keep)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_infeasible_target_is_a_clear_error(problem: Problem, name: str) -> None:
    with pytest.raises(AutopruneError, match=r"infeasible target.*raise the target"):
        problem.run(name, constraints=Constraints(flops=0.001))


def test_bad_arguments(problem: Problem) -> None:
    with pytest.raises(AutopruneError, match="unknown baseline 'nope'; choose one of structural"):
        problem.run("nope")
    with pytest.raises(AutopruneError, match="needs a few labelled training batches"):
        group_importance(problem.model, problem.example_input, problem.graph, "taylor")
    with pytest.raises(AutopruneError, match="needs the model"):
        run_baseline("global-magnitude", problem.graph, HALF, problem.score, budget=1)
    with pytest.raises(AutopruneError, match="budget must be at least 1"):
        problem.run("random-search", budget=0)


def test_harness_counts_and_refuses(problem: Problem) -> None:
    graph = problem.graph
    harness = Harness(graph, HALF, problem.score, budget=1)
    with pytest.raises(ValueError, match="project it"):
        harness(graph.full_mask())
    assert harness.evaluations == 0
    keep = uniform_mask(graph, 0.3, graph.channel_stats[:, 0])
    assert harness(keep) == problem.score(keep)
    assert harness.remaining == 0
    with pytest.raises(BudgetExhausted):
        harness(keep)
    result = harness.result("manual")
    assert result.evaluations == 1 and np.array_equal(result.best_keep, keep)


def test_trained_model_scores_are_accuracies() -> None:
    from autoprune.data import load_dataset

    data = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("digits_cnn")
    train = data.batches("train", 64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for x, y in train[:20]:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval().zero_grad(set_to_none=True)
    example = torch.zeros(1, *data.input_shape)
    graph = build_channel_graph(model, example)
    evaluate = MaskedEvaluator(model, graph, data.batches("val", 144), recalibration=data.batches("train", 128, 256))
    for name in sorted(BASELINES):
        result = run_baseline(
            name,
            graph,
            HALF,
            evaluate,
            budget=probes_needed(graph) + 2,
            seed=0,
            model=model,
            example_input=example,
            batches=train[:2],
        )
        assert result.best_score == evaluate(result.best_keep)
        assert result.best_score > 0.4, name  # chance is 0.1
    assert math.isfinite(result.wall_time) and result.wall_time > 0


def test_structural_rule_keeps_merged_groups_whole_while_the_budget_allows() -> None:
    model = build_model("resnet20").eval()
    graph = build_channel_graph(model, torch.zeros(1, 3, 32, 32))
    merged = [graph.crosses_merge(g) for g in graph.prunable_groups]
    assert sum(merged) == 3  # the three residual streams, found from the graph alone
    for target, streams_whole in ((0.5, True), (0.03, False)):
        keep = structural_mask(graph, Constraints(flops=target))
        assert graph.flops(keep) / graph.base_flops <= target + 1e-9
        widths = [keep[g.offset : g.offset + g.size].mean() for g in graph.prunable_groups]
        stream_widths = [w for w, m in zip(widths, merged, strict=True) if m]
        inner_widths = [w for w, m in zip(widths, merged, strict=True) if not m]
        assert all(w == 1.0 for w in stream_widths) == streams_whole
        if streams_whole:
            assert max(inner_widths) - min(inner_widths) < 0.1  # one uniform ratio for the rest
        else:
            assert max(inner_widths) < 0.1  # the inner groups at their floor, the streams cut


def test_sensitivity_allocation_spares_the_group_that_costs_accuracy(problem: Problem) -> None:
    graph = problem.graph
    fragile = max(range(len(graph.prunable_groups)), key=lambda i: graph.prunable_groups[i].size)
    g = graph.prunable_groups[fragile]

    def score(keep: np.ndarray) -> float:  # cutting `fragile` costs 10 per channel, any other channel 0.1
        lost = 1 - keep
        return -10 * lost[g.offset : g.offset + g.size].sum() - 0.1 * lost.sum()

    result = problem.run("sensitivity", budget=probes_needed(graph) + 2, score_fn=score)
    assert result.best_keep[g.offset : g.offset + g.size].all()
    assert graph.flops(result.best_keep) / graph.base_flops <= 0.5 + 1e-9
    with pytest.raises(AutopruneError, match="needs at least"):
        problem.run("sensitivity", budget=probes_needed(graph) + 1, score_fn=score)


def test_allocation_cuts_by_drop_per_cost() -> None:
    model = build_model("resnet20").eval()
    graph = build_channel_graph(model, torch.zeros(1, 3, 32, 32))
    n = len(graph.prunable_groups)
    drops = np.full((n, 3), 0.01)
    drops[0] = [0.9, 0.6, 0.3]  # the first group (a stream) is fragile, the rest are cheap to cut
    keep = allocate(graph, HALF, Sensitivity(np.array([0.25, 0.5, 0.75]), drops))
    first = graph.prunable_groups[0]
    assert keep[first.offset : first.offset + first.size].all()
    assert graph.flops(keep) / graph.base_flops <= 0.5 + 1e-9


@pytest.mark.parametrize("criterion", ["magnitude", "taylor"])
def test_group_importance_of_folded_groups(criterion) -> None:
    """Grouped convs and attention heads fold into blocks (one decision per position in a block): torch-pruning's
    group of size × blocks channels gives one score per decision, so the global ranking runs on them."""
    from test_blocks import SHAPE, TinyResNeXt, TinyViT, randomize

    from autoprune.agents.baselines.common import group_importance

    for cls in (TinyResNeXt, TinyViT):
        torch.manual_seed(0)
        model = randomize(cls()).eval()
        graph = build_channel_graph(model, torch.zeros(1, *SHAPE))
        assert any(g.blocks > 1 for g in graph.prunable_groups)
        x = torch.randn(8, *SHAPE)
        batches = [(x, torch.randint(0, 10, (8,)))]
        scores = group_importance(model, torch.zeros(1, *SHAPE), graph, criterion, batches)
        assert scores.shape == (graph.num_decisions,) and np.isfinite(scores).all()
        folded = next(g for g in graph.prunable_groups if g.blocks > 1)
        assert len(set(scores[folded.offset : folded.offset + folded.size].round(9))) > 1
