"""Numbers a search is given: refused by the typed configs in one line (CLI exit code 2) before any work."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from autoprune.cli import cli
from autoprune.errors import AutopruneError
from autoprune.problem import ProblemConfig
from autoprune.search.config import SearchConfig

BAD_SEARCH = [
    ("--learning-rate", "nan"),
    ("--learning-rate", "inf"),
    ("--learning-rate", "-1e-3"),
    ("--tau", "0"),
    ("--tau", "nan"),
    ("--seed", "-1"),
    ("--seed", str(2**32)),
    ("--evaluations", "0"),
    ("--eval-samples", "0"),
    ("--recalibrate-batches", "-1"),
    ("--finetune-epochs", "-1"),
    ("--finetune-epochs", "nan"),
    ("--finetune-epochs", "inf"),
    ("--target-flops", "nan"),
    ("--target-flops", "0"),
    ("--min-channels", "0"),
    ("--round-to", "0"),
    ("--gpus-per-worker", "-1"),
    ("--workers", "0"),
    ("--rollout", "1"),
    ("--rollout", str(10**9)),
]


@pytest.mark.parametrize(("option", "value"), BAD_SEARCH, ids=[f"{o}={v}" for o, v in BAD_SEARCH])
def test_bad_search_numbers(option, value, tmp_path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["search", "--quiet", option, value, "--out", str(out)])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert option.removeprefix("--").split("-")[0] in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-3", str(10**9)])
def test_bad_num_classes(value) -> None:
    result = CliRunner().invoke(cli, ["info", "--num-classes", value])
    assert result.exit_code == 2, (result.output, result.exception)
    line = result.stderr.strip()
    assert "\n" not in line and "--num-classes must be an integer in [1, 100000]" in line, line


def test_configs_check_their_types() -> None:
    with pytest.raises(AutopruneError, match="evaluations must be of type int"):
        SearchConfig(evaluations=2.5).validate()  # type: ignore[arg-type]
    with pytest.raises(AutopruneError, match="trust_pickle must be of type bool"):
        ProblemConfig(trust_pickle="yes").validate()  # type: ignore[arg-type]
    with pytest.raises(AutopruneError, match="ignore must be of type"):
        ProblemConfig(ignore=("a", 1)).validate()  # type: ignore[arg-type]
    with pytest.raises(AutopruneError, match="val_size"):
        ProblemConfig(val_size=1.5).validate()
    SearchConfig(target_params=0.5, learning_rate=1).validate()  # ints where floats go are fine
    SearchConfig(learning_rate=0.0).validate()  # a frozen policy: the rl-frozen ablation
