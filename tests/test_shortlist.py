"""The shortlist: a search's plan is the mask the quick re-fit makes most accurate on the validation split."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import resume_finished_copy, run_cli

from autoprune.agents.baselines import drop_lowest, group_importance
from autoprune.constraints import Constraints, fill
from autoprune.plan import Plan
from autoprune.problem import ProblemConfig, load_problem
from autoprune.pruning import apply_kept_channels
from autoprune.reconstruct import reconstruct
from autoprune.recovery import calibration_batches
from autoprune.search.finalists import Finalists
from autoprune.search.shortlist import IMAGES, TOP, candidates, choose
from autoprune.training import evaluate

HALF = Constraints(flops=0.5)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def problem(cache_dir):
    return load_problem(ProblemConfig(eval_samples=64))


def test_candidates_put_the_search_plan_first_then_its_leaders_then_named_plans() -> None:
    a, b, c = (np.array(bits, dtype=np.int8) for bits in ([1, 0, 1], [1, 1, 0], [0, 1, 1]))
    leaders = Finalists(TOP)
    leaders.offer(0.9, a)
    leaders.offer(0.8, b)
    names = [name for name, _ in candidates(a, leaders, {"structural": c})]
    assert names == ["search's plan", "search #1", "search #2", "structural"]


def refit_accuracy(problem, keep: np.ndarray, seed: int = 0) -> float:
    """Validation accuracy of `keep` re-fitted from the unpruned network on the shortlist's calibration images."""
    plan = Plan.from_mask(problem.model, problem.graph, keep, HALF)
    net = apply_kept_channels(copy.deepcopy(problem.model).eval(), plan.modules)
    reconstruct(problem.model, net, plan.modules, calibration_batches(problem.bundle, IMAGES, seed, problem.device))
    return evaluate(net, problem.bundle.batches("val", 500), problem.device)


def test_choose_takes_the_most_accurate_plan_after_the_refit_not_the_search_best(problem) -> None:
    graph = problem.graph
    importance = group_importance(problem.model, problem.example_input(), graph, "magnitude")
    good = fill(graph, drop_lowest(graph, HALF, importance), HALF)
    bad = fill(graph, drop_lowest(graph, HALF, -importance), HALF)  # keeps the least important channels
    accuracy = {"good": refit_accuracy(problem, good), "bad": refit_accuracy(problem, bad)}
    assert accuracy["good"] > accuracy["bad"]
    result = choose(problem, HALF, [("search's plan", bad), ("structural", good), ("again", bad.copy())])
    assert result is not None and np.array_equal(result.keep, good)
    assert [r["name"] for r in result.rows] == ["search's plan", "structural"]  # a repeated mask is re-fitted once
    assert [r["val_acc_refit"] for r in result.rows] == pytest.approx([accuracy["bad"], accuracy["good"]])
    assert result.chosen["name"] == "structural" and result.metrics()["shortlist_chosen"] == "structural"
    val = len(problem.bundle.split("val").labels)
    assert result.images == IMAGES * 3 + 2 * val  # the unpruned pass once, one pass per re-fit, validation


def test_choose_needs_two_distinct_masks_after_filling(problem) -> None:
    graph = problem.graph
    importance = group_importance(problem.model, problem.example_input(), graph, "magnitude")
    keep = drop_lowest(graph, HALF, importance)
    assert choose(problem, HALF, [("search's plan", keep), ("structural", fill(graph, keep, HALF))]) is None


@pytest.fixture(scope="module")
def searched(tmp_path_factory, cache_dir) -> Path:
    run = tmp_path_factory.mktemp("shortlist") / "run"
    args = ["--evaluations", "40", "--rollout", "8", "--eval-samples", "64", "--quiet", "--out", str(run)]
    result = run_cli("search", "--target-flops", "0.5", *args)
    assert result.returncode == 0, result.stderr
    return run


def test_search_plan_is_the_shortlist_choice(searched: Path) -> None:
    rows = read_csv(searched / "shortlist.csv")
    plan = Plan.load(searched / "plan.json")
    assert rows[0]["name"] == "search's plan" and len(rows) >= 2
    assert {"sensitivity", "structural", "global-magnitude"} & {r["name"] for r in rows}  # the agent's start plans
    (chosen,) = [r for r in rows if r["chosen"] == "1"]
    assert float(chosen["val_acc_refit"]) == max(float(r["val_acc_refit"]) for r in rows)
    assert plan.metrics["shortlist_chosen"] == chosen["name"] and plan.metrics["shortlist"] == len(rows)
    assert plan.achieved["flops_ratio"] == pytest.approx(float(chosen["flops_ratio"]))
    assert "shortlisted masks by validation accuracy after a quick re-fit" in (searched / "summary.md").read_text()


def test_resume_after_the_search_shortlists_the_same_masks(searched: Path, tmp_path: Path) -> None:
    run = resume_finished_copy(searched, tmp_path / "run", ("plan.json", "pruned.pt", "summary.md", "shortlist.csv"))
    assert read_csv(run / "shortlist.csv") == read_csv(searched / "shortlist.csv")
    assert Plan.load(run / "plan.json").mask == Plan.load(searched / "plan.json").mask


def test_no_shortlist_without_the_refit(tmp_path: Path, cache_dir) -> None:
    args = ["--evaluations", "20", "--eval-samples", "64", "--no-reconstruct", "--quiet", "--out", str(tmp_path / "r")]
    result = run_cli("baseline", "--method", "random-search", *args)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "r" / "shortlist.csv").exists()
    assert "shortlist" not in Plan.load(tmp_path / "r" / "plan.json").metrics


def test_the_summary_says_how_much_of_the_search_time_the_shortlist_took() -> None:
    from autoprune.search.report import cost

    said = cost({"evaluations": 300, "search_seconds": 696.24, "shortlist_seconds": 95.5, "finalize_seconds": 224.9})
    assert "696.2 s searching (95.5 s of it re-fitting the shortlist), 224.9 s pruning" in said
    assert "shortlist" not in cost({"evaluations": 3, "search_seconds": 1.0})
