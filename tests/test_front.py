"""One search for several targets: the archive, the front, the env's target cycle and the CLI's outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli
from torch import nn

from autoprune.constraints import Constraints
from autoprune.envs.channel_prune import ChannelPruneEnv
from autoprune.front import Archive, non_dominated
from autoprune.graph import build_channel_graph
from autoprune.graph.features import TARGET
from autoprune.plan import Plan


@pytest.fixture(scope="module")
def tiny_graph():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval()  # fmt: skip
    return build_channel_graph(model, torch.zeros(1, 3, 8, 8))


def test_front_keeps_only_non_dominated_entries_and_targets_take_the_best_within():
    archive = Archive()
    points = [(0.3, 0.80), (0.3, 0.82), (0.45, 0.81), (0.5, 0.90), (0.7, 0.89), (0.7, 0.95), (0.2, 0.5)]
    for cost, score in points:
        archive.add(score, {"flops": cost}, np.ones(3))
    front = archive.front("flops")
    assert [(e.ratios["flops"], e.score) for e in front] == [(0.2, 0.5), (0.3, 0.82), (0.5, 0.90), (0.7, 0.95)]
    assert archive.best("flops", 0.49).score == 0.82 and archive.best("flops", 0.1) is None
    assert non_dominated([], "flops") == []


def test_env_cycles_its_target_and_competes_per_target(tiny_graph):
    graph = tiny_graph
    targets = [Constraints(flops=0.3), Constraints(flops=0.7)]
    scores = [lambda keep: 0.1, lambda keep: 0.9]
    env = ChannelPruneEnv(graph, scores, targets[0], targets=targets)
    seen = []
    for _ in range(4):
        obs, _ = env.reset()
        _, _, _, _, info = env.step(np.ones(graph.num_decisions))
        seen.append((float(obs["x"][0, TARGET]), info["target"], info["score"], info["flops_ratio"]))
    assert [s[1] for s in seen] == [0.3, 0.7, 0.3, 0.7]
    assert all(abs(s[0] - s[1]) < 1e-6 for s in seen)  # the target is the observation's feature
    assert all(s[3] <= s[1] + 1e-9 for s in seen)  # each proposal is rescaled onto its episode's target
    assert env.get_state()["target_bests"] == [0.1, 0.9]


def test_multi_target_run_writes_a_plan_per_target_and_a_non_dominated_front(tmp_path, cache_dir):
    out = tmp_path / "front"
    result = run_cli(
        "search", "--targets", "0.3,0.6", "--evaluations", "16", "--eval-samples", "100", "--quiet", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads((out / "front.json").read_text())
    for target in (0.3, 0.6):
        plan = Plan.load(out / f"flops-{target:g}" / "plan.json")  # schema-valid
        assert plan.constraint["flops"] == target and plan.achieved["flops_ratio"] <= target + 1e-9
        assert (out / f"flops-{target:g}" / "pruned.pt").is_file()
    assert [p["target"] for p in doc["targets"]] == [0.3, 0.6]
    front = [(r["flops_ratio"], r["score"]) for r in doc["front"]]
    assert front and all(not (c2 <= c1 and s2 >= s1 and (c2, s2) != (c1, s1)) for c1, s1 in front for c2, s2 in front)
    summary = (out / "summary.md").read_text()
    assert "flops ≤ 30%" in summary and "front.png" in summary and (out / "front.png").stat().st_size > 1000
    assert "flops ≤ 0.3: plan at" in result.stdout


def test_targets_with_a_single_budget_is_one_line(tmp_path):
    result = run_cli("search", "--targets", "0.3,0.5", "--target-flops", "0.5", "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not both" in result.stderr
    result = run_cli("search", "--targets", "0.3,x", "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "comma-separated" in result.stderr
