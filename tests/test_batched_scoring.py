"""Candidates scored together (one pass of the masked network, or worker threads) score as one at a time does,
racing included."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.batched_scoring import BatchedScorer
from autoprune.constraints import Constraints, project, smallest_mask
from autoprune.errors import AutopruneError
from autoprune.graph import build_channel_graph
from autoprune.models import build_model
from autoprune.problem import ProblemConfig, load_problem
from autoprune.scoring import PrefetchingScorer, SlicedScorer
from autoprune.threaded_scoring import ThreadedScorer


def labelled(model: nn.Module, n: int, batch: int, seed: int, shape=(3, 32, 32)):
    """Random inputs labelled by the unpruned model (logits centred per class, so every class occurs)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=gen)
    with torch.no_grad():
        logits = model(x)
    y = (logits - logits.mean(0)).argmax(1)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    graph = build_channel_graph(model, torch.zeros(1, 3, 32, 32), model_name="resnet20")
    val = labelled(model, 96, 32, seed=1)
    recal = [(x, y) for x, y in labelled(model, 64, 32, seed=2)]
    rng = np.random.default_rng(0)
    keeps = [
        graph.legalize((rng.random(graph.num_decisions) < rng.uniform(0.4, 0.95)).astype(np.int8)) for _ in range(5)
    ]
    return model, graph, val, recal, keeps


SCORERS = [BatchedScorer, ThreadedScorer]


@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("with_recalibration", [True, False])
def test_batched_scores_equal_one_at_a_time_scores(resnet, with_recalibration: bool, scorer) -> None:
    model, graph, val, recal, keeps = resnet
    recal = recal if with_recalibration else None
    one = SlicedScorer(model, graph, val, recal, race_samples=32, z=math.inf)
    many = scorer(model, graph, val, recal, race_samples=32, z=math.inf, candidates=3)  # 2 batches: 3 + 2
    expected = [one.score(k) for k in keeps]
    got = many.score_many(keeps)
    assert [r.score for r in got] == pytest.approx([r.score for r in expected], abs=1.5 / 96)  # ≤ 1 image
    assert len({r.score for r in expected}) > 1  # the masks differ, so agreement is not a coincidence
    assert [r.images for r in got] == [r.images for r in expected]
    assert many.images_forwarded == one.images_forwarded and many.evaluations == 5


@pytest.mark.parametrize("scorer", SCORERS)
def test_batched_racing_of_one_candidate_per_pass_is_the_sequential_racing(resnet, scorer) -> None:
    model, graph, val, recal, keeps = resnet
    one = SlicedScorer(model, graph, val, recal, z=0.5)
    many = scorer(model, graph, val, recal, z=0.5, candidates=1)
    sequence = [keeps[4], smallest_mask(graph), *keeps]
    expected = [one.score(k) for k in sequence]
    got = many.score_many(sequence)
    assert [r.full for r in got] == [r.full for r in expected]
    assert not all(r.full for r in expected)  # racing stopped some: the comparison covers both branches
    assert [r.score for r in got] == pytest.approx([r.score for r in expected], abs=1.5 / 96)


@pytest.mark.parametrize("scorer_class", SCORERS)
def test_racing_in_a_batch_never_drops_a_candidate_that_beats_the_incumbent(cache_dir, scorer_class) -> None:
    problem = load_problem(ProblemConfig(eval_samples=300))  # the trained digits CNN: accuracies far apart
    graph, base = problem.graph, problem.evaluator
    val = [(base.x[i : i + 100], base.y[i : i + 100]) for i in range(0, base.num_samples, 100)]
    reference = SlicedScorer(problem.model, graph, val, base.recalibration, z=math.inf)
    scorer = scorer_class(problem.model, graph, val, base.recalibration, z=2.0, candidates=4)
    middling = project(graph, graph.full_mask(), Constraints(flops=0.4))
    better = project(graph, graph.full_mask(), Constraints(flops=0.9))
    tiny = smallest_mask(graph)
    assert reference(better) > reference(middling) > reference(tiny) + 0.2
    scorer.score_many([middling])  # the incumbent
    got = scorer.score_many([tiny, better, tiny])
    assert [r.full for r in got] == [False, True, False]
    assert got[1].score == pytest.approx(reference(better), abs=1.5 / 300)
    assert got[0].score < got[1].score


@pytest.mark.parametrize("scorer_class", SCORERS)
def test_prefetched_masks_are_scored_once(resnet, scorer_class) -> None:
    model, graph, val, recal, keeps = resnet
    scorer = scorer_class(model, graph, val, recal, z=math.inf, candidates=8)
    scorer.prefetch(keeps[:3])
    spent = scorer.images_forwarded
    records = [scorer.score(k) for k in keeps[:3]]
    assert scorer.images_forwarded == spent and scorer.evaluations == 3
    assert all(r.full for r in records)
    scorer.score(keeps[3])  # not prefetched: scored now, alone on the sliced network
    assert scorer.images_forwarded > spent and scorer.evaluations == 4


@pytest.mark.parametrize("scorer", SCORERS)
def test_batched_probes_equal_one_at_a_time_probes(resnet, scorer) -> None:
    model, graph, val, recal, keeps = resnet
    one = SlicedScorer(model, graph, val, recal)
    many = scorer(model, graph, val, recal, candidates=2)
    expected = [one.probe(k).score for k in keeps]
    many.prefetch_probes(keeps)
    assert many.passes == [2, 2, 1]
    spent = many.images_forwarded
    assert [many.probe(k).score for k in keeps] == pytest.approx(expected, abs=1.5 / 64)
    assert many.images_forwarded == spent == one.images_forwarded


@pytest.mark.parametrize("scorer", SCORERS)
def test_prefetched_probes_leave_the_whole_network_to_its_base_pass(resnet, scorer) -> None:
    model, graph, val, recal, keeps = resnet
    many = scorer(model, graph, val, recal, candidates=2)
    cut = next(k for k in keeps if not k.all())
    many.prefetch_probes([graph.full_mask(), cut])
    assert many.passes == [1]  # only the cut network was forwarded beside the base pass
    spent = many.images_forwarded
    whole = many.probe(graph.full_mask())
    assert whole.score == many.base()[0] and whole.images == 0 and many.images_forwarded == spent


def test_networks_whose_masking_is_not_a_product_are_refused_in_one_line() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 4)).eval()
    graph = build_channel_graph(model, torch.zeros(1, 8))
    with pytest.raises(AutopruneError, match="candidate-batch 1") as info:
        BatchedScorer(model, graph, labelled(model, 8, 8, seed=0, shape=(8,)))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("method", ["rl", "random-search", "sensitivity"])
def test_searches_hand_over_their_candidates_in_batches(method: str, tmp_path, cache_dir) -> None:
    from autoprune.search.config import SearchConfig
    from autoprune.search.runner import search_constraints, search_problem

    config = SearchConfig(
        problem=ProblemConfig(eval_samples=200, candidate_batch=4), method=method, target_flops=0.5,
        evaluations=40, rollout=8, reconstruct=False, out=str(tmp_path / method),
    )  # fmt: skip
    problem = load_problem(config.problem)
    assert isinstance(problem.evaluator, ThreadedScorer)  # on a CPU: 4 worker threads
    metrics = search_problem(config, problem, search_constraints(config, problem), progress=False).metrics
    assert metrics["evaluations"] == (40 if method != "sensitivity" else problem.evaluator.evaluations)
    assert 4 in problem.evaluator.passes  # the agent's envs, random search's draws or the probes, 4 per pass
    assert problem.evaluator.evaluations >= metrics["evaluations"]


def test_threaded_scores_of_reconstructed_candidates_equal_one_at_a_time_scores(resnet) -> None:
    model, graph, val, recal, keeps = resnet
    one = SlicedScorer(model, graph, val, recal, z=math.inf, reconstruction=True)
    many = ThreadedScorer(model, graph, val, recal, z=math.inf, reconstruction=True, candidates=2)
    expected = [one.score(k) for k in keeps]
    got = many.score_many(keeps)
    assert [r.score for r in got] == pytest.approx([r.score for r in expected], abs=1.5 / 96)
    assert [r.images for r in got] == [r.images for r in expected]
    assert many.images_forwarded == one.images_forwarded


def test_worker_threads_leave_the_callers_torch_threads_as_they_were(resnet) -> None:
    model, graph, val, recal, keeps = resnet
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        scorer = ThreadedScorer(model, graph, val, recal, candidates=2)
        assert scorer.threads == 1  # the caller's 2 threads shared out
        scorer.score_many(keeps[:2])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("threads", "expected"), [(1, SlicedScorer), (2, ThreadedScorer)])
def test_by_default_a_cpu_scores_as_many_candidates_at_once_as_torch_has_threads(threads, expected, cache_dir) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        evaluator = load_problem(ProblemConfig(eval_samples=100)).evaluator
    finally:
        torch.set_num_threads(before)
    assert type(evaluator) is expected
    assert getattr(evaluator, "candidates", 1) == threads
    assert isinstance(evaluator, PrefetchingScorer) == (threads > 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batched_scores_on_the_gpu_equal_cpu_scores(resnet) -> None:
    model, graph, val, recal, keeps = resnet
    cpu = SlicedScorer(model, graph, val, recal, z=math.inf)
    gpu_model = copy.deepcopy(model).cuda()
    to_gpu = [(x.cuda(), y.cuda()) for x, y in val], [(x.cuda(), y.cuda()) for x, y in recal]
    gpu = BatchedScorer(gpu_model, graph, *to_gpu, z=math.inf, candidates=len(keeps))
    expected = [cpu.score(k).score for k in keeps]
    assert [r.score for r in gpu.score_many(keeps)] == pytest.approx(expected, abs=1.5 / 96)


@pytest.mark.parametrize("scorer_class", [SlicedScorer, *SCORERS])
def test_racing_stops_a_clearly_worse_candidate_after_a_validation_batch(cache_dir, scorer_class) -> None:
    problem = load_problem(ProblemConfig(eval_samples=300))  # the trained digits CNN: accuracies far apart
    graph, base = problem.graph, problem.evaluator
    val = [(base.x[i : i + 100], base.y[i : i + 100]) for i in range(0, base.num_samples, 100)]
    reference = SlicedScorer(problem.model, graph, val, z=math.inf)
    extra = {} if scorer_class is SlicedScorer else {"candidates": 2}
    scorer = scorer_class(problem.model, graph, val, race_samples=0, z=2.0, **extra)  # no first stage: validation races
    better, tiny = project(graph, graph.full_mask(), Constraints(flops=0.9)), smallest_mask(graph)
    assert reference(better) > reference(tiny) + 0.2
    records = [scorer.score(better), scorer.score(tiny), scorer.score(better)]
    assert [r.full for r in records] == [True, False, True]  # an equal candidate goes on to every image
    n = base.num_samples  # more than one batch of 100
    assert n > 100 and [r.images for r in records] == [n, 100, n]  # the worse one stopped after the first batch
    assert records[1].score == pytest.approx(reference(tiny), abs=0.15)  # the paired estimate on those 100 images
