"""Finalists: the search's best masks re-scored on fresh validation images choose the plan, inside the budget."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import resume_finished_copy, run_cli

from autoprune.constraints import Constraints, fill, project, smallest_mask
from autoprune.plan import Plan
from autoprune.problem import ProblemConfig, load_problem
from autoprune.search.finalists import Finalists, confirm, reserved

SAMPLES = 64
"""Search images per candidate: the digits validation split (144 images) leaves as many fresh ones."""


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_finalists_keep_the_best_distinct_masks() -> None:
    finalists = Finalists(2)
    a, b, c = (np.array(bits, dtype=np.int8) for bits in ([1, 0, 1], [1, 1, 0], [0, 1, 1]))
    finalists.offer(0.5, a)
    finalists.offer(0.7, b)
    finalists.offer(0.9, b)  # the same mask again: not a second finalist
    finalists.offer(0.6, c)
    finalists.offer(0.4, c)
    assert [(s, k.tolist()) for s, k in finalists.entries] == [(0.7, b.tolist()), (0.6, c.tolist())]
    restored = Finalists.from_state(1, finalists.state())
    assert [(s, k.tolist()) for s, k in restored.entries] == [(0.7, b.tolist())]
    joined = Finalists.from_state(3, finalists.state() + finalists.state())  # e.g. an older run's two lists
    assert [(s, k.tolist()) for s, k in joined.entries] == [(0.7, b.tolist()), (0.6, c.tolist())]
    assert Finalists(0).entries == [] and (Finalists(0).offer(1.0, a) is None and not Finalists(0).entries)


def test_reserved_evaluations_stay_a_small_share_of_the_budget() -> None:
    assert reserved(300, 8) == 8
    assert reserved(100, 8) == 4
    assert reserved(49, 8) == 0  # one finalist would choose nothing
    assert reserved(300, 0) == 0 and reserved(300, 1) == 0


@pytest.fixture(scope="module")
def problem(cache_dir):
    return load_problem(ProblemConfig(eval_samples=SAMPLES))


def test_fresh_images_are_as_many_and_none_of_the_searchs(problem) -> None:
    fresh = problem.fresh_scorer
    assert fresh is not None and fresh.num_samples == SAMPLES == problem.evaluator.num_samples
    search_images = {x.numpy().tobytes() for x in problem.evaluator.x}
    assert not any(x.numpy().tobytes() in search_images for x in fresh.x)
    pairs = zip(fresh.recalibration, problem.evaluator.recalibration, strict=True)
    assert all(a is b for pair in pairs for a, b in zip(*pair, strict=True))  # recalibrated as the search's were
    assert load_problem(ProblemConfig(eval_samples=100)).fresh_scorer is None  # 144 images cannot give 2 × 100


def test_confirm_chooses_the_best_accuracy_over_both_image_sets(problem) -> None:
    graph = problem.graph
    good = project(graph, graph.full_mask(), Constraints(flops=0.8))
    bad = smallest_mask(graph)
    fresh = problem.fresh_scorer
    good_fresh, bad_fresh = fresh.score(good).score, fresh.score(bad).score
    assert good_fresh > bad_fresh + 0.1
    finalists = Finalists(2)
    finalists.offer(0.95, bad)  # the search's best, by a margin the fresh images overturn
    finalists.offer(0.93, good)
    result = confirm(finalists, problem.fresh_scorer, SAMPLES)
    assert np.array_equal(result.keep, good)
    assert [r["rank"] for r in result.rows if r["chosen"]] == [2]
    assert [r["fresh"] for r in result.rows] == [bad_fresh, good_fresh]
    assert result.rows[1]["pooled"] == pytest.approx((0.93 + good_fresh) / 2)
    recal = sum(len(y) for _, y in problem.evaluator.recalibration)
    assert result.images == 2 * (recal + SAMPLES)
    assert result.metrics()["finalist_chosen_rank"] == 2


@pytest.fixture(scope="module")
def confirmed_run(tmp_path_factory, cache_dir) -> Path:
    run = tmp_path_factory.mktemp("finalists") / "run"
    args = ["--evaluations", "50", "--rollout", "8", "--eval-samples", str(SAMPLES), "--finalists", "8"]
    args += ["--no-reconstruct"]  # no shortlist (tests/test_shortlist.py): the plan is the confirmed finalist
    result = run_cli("search", "--target-flops", "0.5", *args, "--quiet", "--out", str(run))
    assert result.returncode == 0, result.stderr
    return run


def chosen_keep(run: Path) -> np.ndarray:
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    (chosen,) = [int(r["rank"]) for r in read_csv(run / "finalists.csv") if r["chosen"] == "1"]
    return np.asarray(state["leaders"][chosen - 1]["keep"], dtype=np.int8)


def test_search_confirms_its_finalists_within_the_budget(confirmed_run: Path, problem) -> None:
    rows = read_csv(confirmed_run / "metrics.csv")
    plan = Plan.load(confirmed_run / "plan.json")
    finalists = read_csv(confirmed_run / "finalists.csv")
    assert len(rows) == 48 and len(finalists) == 2  # 50 // 25 evaluations were left for the finalists
    assert plan.metrics["evaluations"] == 50 and plan.metrics["finalists"] == 2
    assert "finalists re-scored on fresh validation images" in (confirmed_run / "summary.md").read_text()
    recal = sum(len(y) for _, y in problem.evaluator.recalibration)
    assert plan.metrics["images_forwarded"] == sum(int(r["images"]) for r in rows) + 2 * (recal + SAMPLES)
    searched = sorted((float(r["score"]) for r in rows if r["probe"] == "0"), reverse=True)
    assert float(finalists[0]["search"]) == searched[0]
    expected = fill(problem.graph, chosen_keep(confirmed_run), Constraints(flops=0.5))
    assert plan.mask == expected.tolist()


def test_resume_after_the_search_confirms_the_same_finalists(confirmed_run: Path, tmp_path: Path) -> None:
    outputs = ("plan.json", "pruned.pt", "summary.md", "finalists.csv")
    run = resume_finished_copy(confirmed_run, tmp_path / "run", outputs)
    assert read_csv(run / "finalists.csv") == read_csv(confirmed_run / "finalists.csv")
    assert Plan.load(run / "plan.json").mask == Plan.load(confirmed_run / "plan.json").mask
    assert len(read_csv(run / "metrics.csv")) == 48  # nothing searched again


def test_finalists_off_by_default_and_in_baselines(tmp_path: Path, cache_dir) -> None:
    common = ["--evaluations", "50", "--eval-samples", str(SAMPLES), "--quiet"]
    off = tmp_path / "off"
    result = run_cli("baseline", "--method", "random-search", *common, "--out", str(off))
    assert result.returncode == 0, result.stderr
    assert len(read_csv(off / "metrics.csv")) == 50 and not (off / "finalists.csv").exists()
    on = tmp_path / "on"
    result = run_cli("baseline", "--method", "random-search", *common, "--finalists", "8", "--out", str(on))
    assert result.returncode == 0, result.stderr
    assert len(read_csv(on / "metrics.csv")) == 48 and len(read_csv(on / "finalists.csv")) == 2
    bad = ["--finalists", "-1", "--out", str(tmp_path / "x")]
    result = run_cli("baseline", "--method", "random-search", *common, *bad)
    assert result.returncode != 0 and "--finalists must be at least 0" in result.stderr
