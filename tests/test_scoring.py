"""The fast scorer: physically sliced scores equal masked scores; racing stops only clearly worse candidates."""

from __future__ import annotations

import math

import numpy as np
import torch

from autoprune.constraints import Constraints, project, smallest_mask
from autoprune.graph import build_channel_graph
from autoprune.masking import MaskedEvaluator
from autoprune.models import build_model
from autoprune.problem import ProblemConfig, load_problem
from autoprune.scoring import SlicedScorer, clearly_worse


def labelled_batches(model, n: int, batch: int, seed: int):
    """Random inputs labelled by the unpruned model itself (logits centred per class, so that every class
    occurs): the unpruned model scores 100%, pruned ones less."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=gen)
    with torch.no_grad():
        logits = model(x)
        y = (logits - logits.mean(0)).argmax(1)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def resnet20_problem():
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    graph = build_channel_graph(model, torch.zeros(1, 3, 32, 32), model_name="resnet20")
    return model, graph


def test_sliced_scores_equal_masked_scores() -> None:
    model, graph = resnet20_problem()
    val = labelled_batches(model, 96, 32, seed=1)
    recal = [(x, torch.zeros(len(x), dtype=torch.long)) for x, _ in labelled_batches(model, 64, 32, seed=2)]
    masked = MaskedEvaluator(model, graph, val, recal)
    sliced = SlicedScorer(model, graph, val, recal, z=math.inf)
    rng = np.random.default_rng(0)
    scores = []
    for _ in range(6):
        keep = graph.legalize((rng.random(graph.num_decisions) < rng.uniform(0.4, 0.95)).astype(np.int8))
        expected = masked(keep)
        assert sliced(keep) == expected
        scores.append(expected)
    assert len(set(scores)) > 1  # the masks differ in accuracy, so equality is not a coincidence
    assert sliced(None) == masked(None)
    assert sliced.images_forwarded == 6 * (64 + 96) + 96
    masked.close()


def test_racing_test_on_constructed_cases() -> None:
    incumbent = torch.tensor([1, 0] * 100, dtype=torch.bool)  # 50% on the first stage
    better_overall = incumbent.clone()
    better_overall[:4] = False  # 2 points behind on the first stage, within noise: must go on
    assert not clearly_worse(better_overall, incumbent, z=2.0)[0]
    far_behind = torch.zeros(200, dtype=torch.bool)
    stop, d = clearly_worse(far_behind, incumbent, z=2.0)
    assert stop and d == -0.5
    assert not clearly_worse(far_behind, incumbent, z=float("inf"))[0]
    assert not clearly_worse(incumbent, incumbent, z=2.0)[0]  # a tie never stops


def test_racing_stops_clearly_worse_candidates_and_keeps_full_scores_for_the_best(cache_dir) -> None:
    problem = load_problem(ProblemConfig(eval_samples=300))
    graph, scorer = problem.graph, problem.evaluator
    full_scorer = SlicedScorer(problem.model, graph, scorer.batches(), scorer.recalibration, z=math.inf)
    near = project(graph, graph.full_mask(), Constraints(flops=0.8))
    tiny = smallest_mask(graph)
    recal = sum(len(x) for x, _ in scorer.recalibration)

    first = scorer.score(near)
    assert first.full and first.score == full_scorer(near) and first.images == recal + scorer.num_samples
    again = scorer.score(near)  # identical to the incumbent on every image: never stopped
    assert again.full and again.score == first.score
    worse = scorer.score(tiny)
    assert not worse.full and worse.images == recal // 2  # stopped halfway through the recalibration pass
    truth = full_scorer(tiny)
    assert worse.score < first.score and truth < first.score
    assert abs(worse.score - truth) < 0.1  # the paired estimate is close to the true score
    assert scorer.full_evaluations == 2  # `near` twice


def test_scoring_with_reconstruction_scores_the_refitted_network() -> None:
    """As the delivered model: re-fitted on the recalibration images, the unpruned BN statistics kept."""
    from autoprune.pruning import prune_model
    from autoprune.reconstruct import reconstruct
    from autoprune.training import evaluate

    model, graph = resnet20_problem()
    val = labelled_batches(model, 64, 32, seed=1)
    recal = labelled_batches(model, 64, 32, seed=2)
    scorer = SlicedScorer(model, graph, val, recal, z=math.inf, reconstruction=True)
    rng = np.random.default_rng(1)
    masks = [graph.legalize((rng.random(graph.num_decisions) < 0.5).astype(np.int8)) for _ in range(2)]
    for i, keep in enumerate(masks):
        expected = prune_model(model, graph, keep)
        reconstruct(model, expected, graph.kept_channels(keep), recal)
        assert scorer(keep) == evaluate(expected, val)
        # the unpruned pass once, then per candidate its own pass and validation (no recalibration)
        assert scorer.images_forwarded == 64 + (i + 1) * (64 + 64)
    plain = SlicedScorer(model, graph, val, recal, z=math.inf)
    assert [plain(k) for k in masks] != [scorer.score(k).score for k in masks]


def test_probing_the_whole_network_reuses_its_base_pass() -> None:
    model, graph = resnet20_problem()
    val = labelled_batches(model, 64, 32, seed=1)
    recal = labelled_batches(model, 64, 32, seed=2)
    scorer = SlicedScorer(model, graph, val, recal, z=math.inf)
    record = scorer.probe(graph.full_mask())
    base_score, _ = scorer.base()
    assert record.score == base_score
    assert record.images == 64 + 64  # the base pass (recalibration + validation), forwarded once
    again = SlicedScorer(model, graph, val, recal, z=math.inf)
    keep = graph.full_mask()
    keep[0] = 0
    cut = again.probe(graph.legalize(keep))
    assert cut.images == 64 + 64 + 64  # a cut network pays its own recalibration pass on top


def test_batches_are_the_validation_images_in_the_scorers_batches() -> None:
    model, graph = resnet20_problem()
    val = labelled_batches(model, 80, 32, seed=1)  # 32 + 32 + 16
    scorer = SlicedScorer(model, graph, val, None, z=math.inf)
    got = scorer.batches()
    assert [len(y) for _, y in got] == [32, 32, 16]
    assert all(torch.equal(x, vx) and torch.equal(y, vy) for (x, y), (vx, vy) in zip(got, val, strict=True))
