"""Property-based fuzzing of what users hand autoprune: plan files, run directories and CLI numbers.

Every case ends either in exit code 0 with a valid result, or in exit code 2 with exactly one line on stderr and
no traceback, and writes nothing outside its target. The cases run in-process (click's `CliRunner` on
`autoprune.cli.cli`, or the library functions a resume calls) so that the suite's cases, at least `MIN_CASES`
in all, take well under two minutes on two cores. Hypothesis runs derandomized: CI sees the same cases each time.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoprune.cli import cli
from autoprune.constraints import Constraints
from autoprune.envs.channel_prune import ChannelPruneEnv
from autoprune.errors import AutopruneError
from autoprune.export import load_pruned
from autoprune.plan import Plan
from autoprune.problem import load_problem
from autoprune.search.checkpoint import read_agent
from autoprune.search.config import SearchConfig
from autoprune.search.rundir import RunDir
from autoprune.search.state import check_masks, check_state

MIN_CASES = 500
CASES: dict[str, int] = {}
"""Cases run per test, checked by the last test."""


def fuzz(examples: int):
    """Hypothesis settings for a fuzz test of `examples` cases."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,  # no .hypothesis folder: the suite writes nothing outside its temporary folders
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def count(name: str) -> None:
    CASES[name] = CASES.get(name, 0) + 1


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def invoke(args: list[str], sandbox: Path, target: Path | None = None):
    """Run the CLI in a fresh working folder; assert exit 0, or exit 2 with one line, and no write but `target`."""
    before = files_under(sandbox)
    home = os.getcwd()
    with tempfile.TemporaryDirectory(dir=sandbox.parent) as cwd:
        os.chdir(cwd)
        try:
            result = CliRunner().invoke(cli, args)
        finally:
            os.chdir(home)
        assert os.listdir(cwd) == [], f"{args} wrote into the working folder"
    written = {f for f in files_under(sandbox) - before if target is None or not (sandbox / f).is_relative_to(target)}
    assert not written, f"{args} wrote outside its target: {sorted(written)[:3]}"
    if result.exit_code != 0:
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2, (args, result.exception, result.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("autoprune: error: "), (args, result.stderr[-2000:])
    return result


def library_error(call) -> bool:
    """True if `call()` returned; False if it raised a one-line AutopruneError (anything else fails the test)."""
    try:
        call()
    except AutopruneError as exc:
        assert "\n" not in str(exc) and str(exc), repr(exc)
        return False
    return True


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def slots(doc) -> list[tuple[object, object]]:
    """Every (container, key) of a JSON document, for picking what to mutate."""
    found, stack = [], [doc]
    while stack:
        value = stack.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, child in items:
            found.append((value, key))
            stack.append(child)
    return found


@st.composite
def mutated(draw, base, max_mutations: int = 3):
    """`base` (a JSON document) with one to three values replaced, deleted, or lists shortened or extended."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, max_mutations))):
        places = slots(doc)
        if not places:
            return draw(json_values)
        container, key = places[draw(st.integers(0, len(places) - 1))]
        action = draw(st.sampled_from(["replace", "delete", "small-int", "list"]))
        if action == "delete":
            del container[key]
        elif action == "small-int":
            container[key] = draw(st.sampled_from([-1, 0, 1, 2, 10**30, 2**31, 0.5, math.nan, True, None, "0"]))
        elif action == "list" and isinstance(container[key], list):
            items = container[key]
            container[key] = draw(st.sampled_from([items[:-1], items[1:], [*items, *items[:1]], [], items * 2]))
        else:
            container[key] = draw(json_values)
    return doc


# --- plans ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plan_case(tmp_path_factory):
    """A folder with the (untrained) digits CNN's weights and a plan for it as a JSON document."""
    from autoprune.constraints import project
    from autoprune.graph import build_channel_graph
    from autoprune.models import build_model

    folder = tmp_path_factory.mktemp("fuzz-plan") / "sandbox"
    folder.mkdir()
    torch.manual_seed(0)
    model = build_model("digits_cnn").eval()
    torch.save(model.state_dict(), folder / "w.pt")
    graph = build_channel_graph(model, torch.zeros(1, 1, 8, 8), model_name="digits_cnn")
    plan = Plan.from_mask(model, graph, project(graph, graph.full_mask(), Constraints(flops=0.5)))
    return folder, plan.to_dict()


def plan_documents(base):
    """Mutated plans, with index lists, module names and shapes drawn more often than arbitrary places."""
    names = list(base["modules"])

    @st.composite
    def targeted(draw):
        doc = copy.deepcopy(base)
        name = draw(st.sampled_from(names))
        side = draw(st.sampled_from(["out", "in"]))
        kind = draw(st.sampled_from(["indices", "rename", "shape"]))
        if kind == "indices":
            doc["modules"][name][side] = draw(
                st.lists(st.integers(-3, 80) | st.sampled_from([10**30, 2**31, 2**63]), min_size=0, max_size=70)
            )
        elif kind == "rename":
            new = draw(st.sampled_from(["__class__", "features", "features.0.weight", "linear.bias", "", "x" * 300]))
            doc["modules"][new] = doc["modules"].pop(name)
        else:
            doc["model"]["input_shape"] = draw(st.lists(st.integers(-1, 2**25), min_size=0, max_size=4))
        return doc

    return targeted() | mutated(base)


def test_fuzz_plans_through_apply(plan_case) -> None:
    folder, base = plan_case
    out = folder / "out"

    @fuzz(260)
    @given(doc=plan_documents(base))
    def case(doc) -> None:
        count("plans")
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        (out / "plan.json").write_text(json.dumps(doc))
        args = ["apply", "--plan", str(out / "plan.json"), "--model", "digits_cnn", "--weights", str(folder / "w.pt")]
        result = invoke([*args, "--out", str(out / "x.pt")], folder, target=out)
        if result.exit_code == 0:
            pruned = load_pruned(out / "x.pt")
            assert pruned(torch.zeros(2, 1, 8, 8)).shape == (2, 10)

    case()


# --- run directories --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_case(tmp_path_factory, cache_dir):
    """A finished 10-evaluation search (agent checkpoint after its first update), and its problem."""
    folder = tmp_path_factory.mktemp("fuzz-run") / "sandbox"
    run = folder / "run"
    args = ["search", "--evaluations", "10", "--rollout", "4", "--eval-samples", "100", "--recalibrate-batches", "1"]
    result = CliRunner().invoke(cli, [*args, "--quiet", "--out", str(run)])
    assert result.exit_code == 0, result.stderr
    config = SearchConfig.load(run / "config.json")
    problem = load_problem(config.problem)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    env = ChannelPruneEnv(problem.graph, problem.score, Constraints(flops=0.5)).get_state()
    keep = state["best_keep"]
    mid_run = {**state, "evaluations": 5, "env": {**env, "best_keep": keep, "best_score": 0.9, "evaluations": 5}}
    return folder, run, problem, mid_run


def test_fuzz_state_json(run_case) -> None:
    _, _, problem, mid_run = run_case
    constraints = Constraints(flops=0.5)

    @fuzz(150)
    @given(state=mutated(mid_run))
    def case(state) -> None:
        count("state")

        def resume_checks() -> None:
            check_state(state, 10, needs_env=True)
            check_masks(state, problem.graph, constraints)

        if library_error(resume_checks):  # accepted: the env and tracker take it as they are
            ChannelPruneEnv(problem.graph, problem.score, constraints).set_state(state["env"])
            assert constraints.feasible(problem.graph, np.asarray(state["best_keep"]))

    case()


def test_fuzz_config_json(run_case, tmp_path_factory) -> None:
    _, run, _, _ = run_case
    base = json.loads((run / "config.json").read_text())
    path = tmp_path_factory.mktemp("fuzz-config") / "config.json"

    @fuzz(100)
    @given(doc=mutated(base), cut=st.none() | st.integers(0, 800))
    def case(doc, cut) -> None:
        count("config")
        text = json.dumps(doc)
        path.write_text(text if cut is None else text[:cut])
        if library_error(lambda: SearchConfig.load(path)):
            SearchConfig.load(path).validate()

    case()


def test_fuzz_metrics_csv(run_case, tmp_path_factory) -> None:
    _, run, _, _ = run_case
    lines = (run / "metrics.csv").read_text().splitlines(keepends=True)
    copy_dir = tmp_path_factory.mktemp("fuzz-metrics")

    @fuzz(80)
    @given(
        drop=st.lists(st.integers(0, len(lines) - 1), max_size=2),
        junk=st.binary(max_size=40) | st.text(max_size=40).map(str.encode),
        at=st.integers(0, 2000),
        rows=st.integers(0, 10),
    )
    def case(drop, junk, at, rows) -> None:
        count("metrics")
        data = "".join(line for i, line in enumerate(lines) if i not in drop).encode()
        (copy_dir / "metrics.csv").write_bytes(data[:at] + junk + data[at:])
        read = []
        if library_error(lambda: read.append(RunDir(copy_dir).read_metrics(rows))):
            assert [int(r[0]) for r in read[0]] == list(range(1, rows + 1))

    case()


def test_fuzz_agent_checkpoint(run_case, tmp_path_factory) -> None:
    _, run, _, _ = run_case
    ckpt = run / "checkpoint"
    weights, meta = (ckpt / "agent.pt").read_bytes(), json.loads((ckpt / "agent.json").read_text())
    copy_dir = tmp_path_factory.mktemp("fuzz-agent")

    @fuzz(70)
    @given(
        doc=mutated(meta, max_mutations=2),
        flips=st.lists(st.tuples(st.integers(0, len(weights) - 1), st.integers(1, 255)), max_size=3),
        cut=st.none() | st.integers(0, len(weights)),
    )
    def case(doc, flips, cut) -> None:
        count("agent")
        data = bytearray(weights[:cut] if cut is not None else weights)
        for index, xor in flips:
            if index < len(data):
                data[index] ^= xor
        (copy_dir / "agent.pt").write_bytes(bytes(data))
        (copy_dir / "agent.json").write_text(json.dumps(doc))
        library_error(lambda: read_agent(copy_dir))

    case()


def test_fuzz_resume_of_a_damaged_run(run_case) -> None:
    """End to end: `search --resume` of a finished run with one file damaged."""
    folder, run, _, _ = run_case
    pristine = folder.parent / "pristine"
    if not pristine.exists():
        shutil.copytree(run, pristine)
    files = {
        "config.json": json.loads((run / "config.json").read_text()),
        "checkpoint/state.json": json.loads((run / "checkpoint" / "state.json").read_text()),
    }

    @fuzz(16)
    @given(name=st.sampled_from(sorted(files)), data=st.data())
    def case(name, data) -> None:
        count("resume")
        shutil.rmtree(run)
        shutil.copytree(pristine, run)
        (run / name).write_text(json.dumps(data.draw(mutated(files[name]))))
        (run / "summary.md").unlink()  # unfinished, so the resume reads the damaged file (a finished run returns)
        result = invoke(["search", "--resume", str(run), "--quiet"], folder, target=run)
        if result.exit_code == 0:
            plan = Plan.load(run / "plan.json")
            assert plan.achieved["flops_ratio"] <= plan.constraint["flops"] + 1e-9

    case()


# --- CLI numbers ------------------------------------------------------------------------------------------------

NUMERIC = {
    "--target-flops": float,
    "--target-params": float,
    "--evaluations": int,
    "--seed": int,
    "--eval-samples": int,
    "--recalibrate-batches": int,
    "--min-channels": int,
    "--round-to": int,
    "--finetune-epochs": float,
    "--workers": int,
    "--gpus-per-worker": float,
    "--steps-per-episode": int,
    "--rollout": int,
    "--learning-rate": float,
    "--tau": float,
}
numbers = (
    st.integers(-(2**70), 2**70).map(str)
    | st.floats(allow_nan=True, allow_infinity=True).map(str)
    | st.sampled_from(["0", "-0", "1", "-1", "nan", "inf", "-inf", "1e309", "4294967296", "0.5", "", "abc", "1_0"])
)


def test_fuzz_search_numbers_are_validated(run_case) -> None:
    """Any value of any numeric option: refused in one line, or accepted up to the existing run at --out."""
    folder, run, _, _ = run_case

    @fuzz(200)
    @given(option=st.sampled_from(sorted(NUMERIC)), value=numbers)
    def case(option, value) -> None:
        count("numbers")
        result = invoke(["search", "--quiet", option, value, "--out", str(run)], folder)
        line = result.stderr.strip()
        assert result.exit_code == 2
        named = option.removeprefix("--").split("-")[0]
        assert named in line or "already holds a run" in line or "Invalid value" in line, line

    case()


def test_fuzz_small_valid_searches(run_case) -> None:
    """Searches with small drawn settings run to a feasible plan, or give one line (e.g. an infeasible target)."""
    folder, _, _, _ = run_case
    out = folder / "small"

    @fuzz(4)
    @given(
        method=st.sampled_from(["rl", "random-masks", "global-magnitude"]),
        target=st.floats(0.2, 1.0),
        options=st.fixed_dictionaries(
            {
                "--seed": st.integers(0, 2**32 - 1),
                "--evaluations": st.integers(1, 3),
                "--eval-samples": st.integers(1, 300),
                "--recalibrate-batches": st.integers(0, 2),
                "--min-channels": st.integers(1, 4),
                "--round-to": st.integers(1, 4),
            }
        ),
        agent=st.fixed_dictionaries(
            {"--learning-rate": st.floats(1e-6, 1.0), "--tau": st.floats(1e-4, 10.0), "--rollout": st.integers(2, 4096)}
        ),
    )
    def case(method, target, options, agent) -> None:
        count("searches")
        shutil.rmtree(out, ignore_errors=True)
        common = [f"--target-flops={target}", *(f"{k}={v}" for k, v in options.items()), "--quiet", f"--out={out}"]
        if method == "rl":
            args = ["search", *(f"{k}={v}" for k, v in agent.items()), *common]
        else:
            args = ["baseline", "--method", method, *common]
        result = invoke(args, folder, target=out)
        if result.exit_code == 0:
            plan = Plan.load(out / "plan.json")
            assert plan.achieved["flops_ratio"] <= target + 1e-9
            assert 1 <= plan.metrics["evaluations"] <= options["--evaluations"]  # rankings need one evaluation
        else:
            assert not out.exists(), "a refused search leaves no run directory"

    case()


def test_fuzz_num_classes(run_case) -> None:
    folder, _, _, _ = run_case

    @fuzz(30)
    @given(value=numbers)
    def case(value) -> None:
        count("num-classes")
        result = invoke(["info", "--model", "digits_cnn", "--num-classes", value, "--json"], folder)
        if result.exit_code == 0:
            assert json.loads(result.stdout)["decisions"] > 0

    case()


def test_fuzz_ran_enough_cases() -> None:
    if len(CASES) < 9:
        pytest.skip("runs only after the whole fuzz suite")
    print(f"fuzz cases: {sum(CASES.values())} {CASES}")
    assert sum(CASES.values()) >= MIN_CASES, CASES
