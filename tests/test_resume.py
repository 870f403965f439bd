"""Agent checkpoints hold data only: a crafted or corrupt checkpoint is refused in one line and never executed."""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from autoprune.agents.ppo import make_ppo
from autoprune.cli import cli
from autoprune.constraints import Constraints
from autoprune.envs.channel_prune import ChannelPruneEnv
from autoprune.graph import build_channel_graph
from autoprune.plan import Plan
from autoprune.search.checkpoint import load_agent, save_agent
from autoprune.search.config import SearchConfig
from autoprune.search.runner import run_search


class Marker:
    """Unpickling this touches a file: proof that a loader ran code from the checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mknod, (str(self.path),))


def cli_error(args: list[str]) -> str:
    """The one stderr line of a CLI call that must fail with exit code 2."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir) -> Path:
    """A finished 17-evaluation search: its agent checkpoint was written after the first PPO update."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    config = SearchConfig(evaluations=17, rollout=8, out=str(out))
    config.problem.eval_samples = 100
    run_search(config, progress=False)
    return out


def killed_copy(finished: Path, tmp_path: Path) -> Path:
    """A copy of the run as a SIGKILL after the checkpoint at evaluation 9 leaves it."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    scores = [float(r["score"]) for r in rows(run)[:9]]
    best, keep = max(scores), Plan.load(run / "plan.json").mask
    env = {"best_score": best, "best_keep": keep, "best_keep_score": best, "lagrange": 0.0, "evaluations": 9}
    state = {"evaluations": 9, "best_score": best, "best_keep": keep, "seconds": 1.0, "env": env}
    (run / "checkpoint" / "state.json").write_text(json.dumps({**state, "env": {**env, "recent_scores": scores}}))
    for name in ("plan.json", "pruned.pt", "summary.md"):
        (run / name).unlink()
    return run


def test_agent_checkpoint_is_data_and_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.Conv2d(6, 4, 3))
    graph = build_channel_graph(model, torch.zeros(1, 3, 8, 8))
    weights = np.random.default_rng(0).random(graph.num_decisions)

    def build():
        env = ChannelPruneEnv(graph, lambda k: float(weights @ k), Constraints(flops=0.5))
        return make_ppo(env, seed=1, n_steps=4, batch_size=4, n_epochs=2)

    trained = build()
    trained.learn(8)
    save_agent(trained, tmp_path)
    assert json.loads((tmp_path / "agent.json").read_text())["num_timesteps"] == 8
    tensors = torch.load(tmp_path / "agent.pt", weights_only=True)  # loads without unpickling any code
    assert tensors["optimizer"], "Adam's moments are saved"

    fresh = build()
    load_agent(fresh, tmp_path)
    assert (fresh.num_timesteps, fresh._n_updates) == (8, trained._n_updates)
    for a, b in zip(fresh.policy.state_dict().values(), trained.policy.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    ours, theirs = fresh.policy.optimizer.state_dict(), trained.policy.optimizer.state_dict()
    assert ours["param_groups"] == theirs["param_groups"]
    for index, state in theirs["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(ours["state"][index][name], value)


def test_resume_loads_the_data_checkpoint(finished, tmp_path) -> None:
    run = killed_copy(finished, tmp_path)
    result = CliRunner().invoke(cli, ["search", "--resume", str(run), "--quiet"])
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert [int(r["evaluation"]) for r in rows(run)] == list(range(1, 18))
    assert Plan.load(run / "plan.json").metrics["evaluations"] == 17


@pytest.mark.parametrize("legacy", [False, True], ids=["agent.pt", "agent.zip"])
def test_crafted_agent_pickle_does_not_run_on_resume(finished, tmp_path, legacy) -> None:
    run = killed_copy(finished, tmp_path)
    marker = tmp_path / "pwned"
    ckpt = run / "checkpoint"
    metrics = (run / "metrics.csv").read_bytes()
    if legacy:  # what SB3's PPO.load would have unpickled
        (ckpt / "agent.pt").unlink()
        (ckpt / "agent.zip").write_bytes(pickle.dumps(Marker(marker)))
        line = cli_error(["search", "--resume", str(run), "--quiet"])
        assert "older autoprune" in line
    else:
        torch.save({"policy": Marker(marker), "optimizer": {}}, ckpt / "agent.pt")
        line = cli_error(["search", "--resume", str(run), "--quiet"])
        assert "unreadable" in line
    assert not marker.exists()
    assert (run / "metrics.csv").read_bytes() == metrics, "refused before anything was evaluated or rewritten"


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda c: (c / "agent.pt").write_bytes((c / "agent.pt").read_bytes()[:300]), "unreadable"),
        (lambda c: (c / "agent.pt").unlink(), "missing"),
        (lambda c: (c / "agent.json").write_text('{"format": "autoprune-agent"'), "unreadable"),
        (lambda c: (c / "agent.json").write_text('{"format": "autoprune-agent", "num_timesteps": -1}'), "invalid"),
        (lambda c: torch.save({"policy": {"w": torch.zeros(2)}, "optimizer": {}}, c / "agent.pt"), "fit"),
        (
            lambda c: torch.save({"policy": {}, "optimizer": {0: {"exp_avg": torch.zeros(1, 2, 3)}}}, c / "agent.pt"),
            "fit",
        ),
    ],
    ids=["truncated", "missing", "bad-json", "bad-counter", "wrong-weights", "wrong-moments"],
)
def test_corrupt_agent_checkpoint_is_one_line(finished, tmp_path, damage, fragment) -> None:
    run = killed_copy(finished, tmp_path)
    damage(run / "checkpoint")
    assert fragment in cli_error(["search", "--resume", str(run), "--quiet"])


def test_non_finite_agent_weights_are_refused(finished, tmp_path) -> None:
    run = killed_copy(finished, tmp_path)
    path = run / "checkpoint" / "agent.pt"
    tensors = torch.load(path, weights_only=True)
    name = next(iter(tensors["policy"]))
    tensors["policy"][name] = torch.full_like(tensors["policy"][name], float("nan"))
    torch.save(tensors, path)
    assert "not finite" in cli_error(["search", "--resume", str(run), "--quiet"])


def edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(change(doc)))


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda s: [s], "is a JSON list"),
        (lambda s: {k: v for k, v in s.items() if k != "best_keep"}, "lacks best_keep"),
        (lambda s: {**s, "evaluations": "9"}, "evaluations must be an integer"),
        (lambda s: {**s, "evaluations": 10**6}, "evaluations must be an integer in [0, 17]"),
        (lambda s: {**s, "seconds": -1}, "seconds must be a finite number >= 0"),
        (lambda s: {**s, "best_keep": [2] * len(s["best_keep"])}, "list of 0/1"),
        (lambda s: {k: v for k, v in s.items() if k != "env"}, "env must be"),
        (lambda s: {**s, "env": {**s["env"], "lagrange": "x"}}, "env lagrange"),
        (lambda s: {**s, "env": {**s["env"], "recent_scores": None}}, "recent_scores"),
        (lambda s: {**s, "finalists": 5}, "finalists must be a list"),
        (lambda s: {**s, "finalists": [{"score": 0.5, "keep": [2]}]}, "finalists keep"),
        (lambda s: {**s, "leaders": [{"score": "x", "keep": [1]}]}, "leaders score"),
        (lambda s: {**s, "named": [1, 0]}, "named must be an object"),
        (lambda s: {**s, "named": {"structural": []}}, "named plan 'structural'"),
    ],
    ids=["list", "missing-key", "string-count", "over-budget", "negative-seconds", "not-bits", "no-env",
         "env-type", "env-scores", "finalists-type", "finalist-bits", "leader-score", "named-type", "named-bits"],
)  # fmt: skip
def test_bad_state_json_is_refused_before_any_work(finished, tmp_path, damage, fragment) -> None:
    run = killed_copy(finished, tmp_path)
    edit_json(run / "checkpoint" / "state.json", damage)
    metrics = (run / "metrics.csv").read_bytes()
    line = cli_error(["search", "--resume", str(run), "--quiet"])
    assert "state.json" in line and fragment in line
    assert (run / "metrics.csv").read_bytes() == metrics


@pytest.mark.parametrize("where", ["best_keep", "env", "finalists", "named"])
def test_mask_of_the_wrong_length_is_refused_before_any_evaluation(finished, tmp_path, where) -> None:
    run = killed_copy(finished, tmp_path)

    def shorten(state):
        if where == "finalists":
            state["finalists"] = [{"score": 0.5, "keep": state["best_keep"][:-1]}]
            return state
        if where == "named":
            state["named"] = {"structural": state["best_keep"][:-1]}
            return state
        target = state if where == "best_keep" else state["env"]
        target["best_keep"] = target["best_keep"][:-1]
        return state

    edit_json(run / "checkpoint" / "state.json", shorten)
    metrics = (run / "metrics.csv").read_bytes()
    assert "this model has" in cli_error(["search", "--resume", str(run), "--quiet"])
    assert (run / "metrics.csv").read_bytes() == metrics


@pytest.mark.parametrize("where", ["best_keep", "named"])
def test_mask_over_budget_is_refused(finished, tmp_path, where) -> None:
    run = killed_copy(finished, tmp_path)

    def unpruned(state):
        full = [1] * len(state["best_keep"])
        return {**state, "best_keep": full} if where == "best_keep" else {**state, "named": {"structural": full}}

    edit_json(run / "checkpoint" / "state.json", unpruned)
    assert "exceeds the run's budget" in cli_error(["search", "--resume", str(run), "--quiet"])


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (bytes(range(256)) * 8, "unreadable"),
        (b"evaluation,score\n1,2\n", "header"),
        (b"", "header"),
        ("{header}\n1,0.9,0.9,0.5,0.5,,0,,1\n", "has 1 rows"),
        ("{header}\n" + "".join(f"{i},x,1,1,1,,0,,1\n" for i in range(1, 10)), "row 1"),
        ("{header}\n" + "".join(f"{i + 1},1,1,1,1,,0,,1\n" for i in range(1, 10)), "row 1"),
    ],
    ids=["binary", "other-csv", "empty", "short", "not-numbers", "misnumbered"],
)
def test_bad_metrics_csv_is_refused(finished, tmp_path, content, fragment) -> None:
    run = killed_copy(finished, tmp_path)
    if isinstance(content, str):
        content = content.format(header=(run / "metrics.csv").read_text().splitlines()[0]).encode()
    (run / "metrics.csv").write_bytes(content)
    line = cli_error(["search", "--resume", str(run), "--quiet"])
    assert "metrics.csv" in line and fragment in line
    assert (run / "metrics.csv").read_bytes() == content


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda text: text[: len(text) // 2], "corrupt"),
        (lambda text: "\x00\xff" + text, "corrupt"),
        (lambda text: "[]", "JSON object"),
        (lambda text: text.replace('"learning_rate": 0.0003', '"learning_rate": NaN'), "--learning-rate"),
        (lambda text: text.replace('"evaluations": 17', '"evaluations": "17"'), "evaluations must be of type int"),
        (lambda text: text.replace('"model": "digits_cnn"', '"model": 7'), "model must be of type str"),
        (lambda text: text.replace('"eval_samples": 100', '"eval_samples": 0'), "--eval-samples"),
        (lambda text: text.replace('"seed": 0', '"seed": -1'), "--seed"),
        (lambda text: text.replace('"cache_dir": null', '"cache": null'), "unknown ProblemConfig field"),
    ],
    ids=["truncated", "binary", "not-object", "nan", "string-int", "int-str", "zero-samples", "seed", "unknown"],
)
def test_corrupt_config_json_is_refused(finished, tmp_path, damage, fragment) -> None:
    run = killed_copy(finished, tmp_path)
    path = run / "config.json"
    text = path.read_text()
    path.write_text(damage(text))
    assert damage(text) != text
    metrics = (run / "metrics.csv").read_bytes()
    line = cli_error(["search", "--resume", str(run), "--quiet"])
    assert "config.json" in line and fragment in line
    assert (run / "metrics.csv").read_bytes() == metrics


def test_resume_takes_permissions_from_the_command_line_only(tmp_path, cache_dir) -> None:
    """A config.json saying `trust_pickle: true` does not make resume unpickle the weights it names."""
    marker = tmp_path / "pwned"
    weights = tmp_path / "weights.pt"
    torch.save({"state_dict": Marker(marker)}, weights)
    run = tmp_path / "run"
    run.mkdir()
    config = SearchConfig(evaluations=4, out=str(run))
    config.problem.weights, config.problem.trust_pickle, config.problem.cache_dir = str(weights), True, "/elsewhere"
    config.save(run / "config.json")
    line = cli_error(["search", "--resume", str(run), "--quiet"])
    assert "--trust-pickle" in line
    assert not marker.exists() and not Path("/elsewhere").exists()
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.json"]


def test_resume_does_not_call_a_factory_only_config_json_names(tmp_path) -> None:
    """config.json naming `pkg.module:factory` is code: resume calls it only when the user names it again."""
    marker = tmp_path / "called"
    run = tmp_path / "run"
    run.mkdir()
    config = SearchConfig(evaluations=4, out=str(run))
    config.problem.model = "autoprune_evil_factory:build"
    config.save(run / "config.json")
    module = tmp_path / "autoprune_evil_factory.py"
    module.write_text(f"def build(**_):\n    open({str(marker)!r}, 'w').write('ran')\n    raise SystemExit(0)\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        line = cli_error(["search", "--resume", str(run), "--quiet"])
    finally:
        sys.path.remove(str(tmp_path))
    assert "--model autoprune_evil_factory:build" in line
    assert not marker.exists()


def test_resume_does_not_join_the_cluster_config_json_names(finished, tmp_path) -> None:
    """Results from a Ray cluster are unpickled: the address comes from --address, never from the run directory."""
    run = killed_copy(finished, tmp_path)
    edit_json(run / "config.json", lambda c: {**c, "address": "ray://192.0.2.1:10001"})  # TEST-NET: nobody there
    result = CliRunner().invoke(cli, ["search", "--resume", str(run), "--quiet"])
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert [int(r["evaluation"]) for r in rows(run)] == list(range(1, 18))
