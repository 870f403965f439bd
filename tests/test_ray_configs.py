"""The files in ray_configs/: launcher YAMLs pass Ray's schema, Tune/sweep YAMLs load, the RayJob runs our entry."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest
import yaml

from autoprune.distributed.job import run_dir
from autoprune.distributed.sweep import SweepSpec
from autoprune.distributed.tune import TuneSpec, parse_space
from autoprune.errors import AutopruneError

CONFIGS = Path(__file__).resolve().parents[1] / "ray_configs"


@pytest.mark.parametrize("name", ["cluster_local.yaml", "cluster_aws.yaml"])
def test_launcher_config_passes_rays_schema(name: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CONFIGS / name).read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    assert any("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"])
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    assert any("torch==2.13.0" in c for c in config["setup_commands"])
    assert any("autoprune" in c for c in config["setup_commands"])


@pytest.mark.parametrize("name", ["tune_random_search.yaml", "tune_random_masks.yaml"])
def test_tune_configs_load_into_search_spaces(name: str) -> None:
    from ray.tune.search.sample import Domain

    spec = TuneSpec.load(CONFIGS / name)
    space = parse_space(spec.param_space)
    assert isinstance(space["seed"], dict) and "grid_search" in space["seed"]
    assert any(isinstance(v, Domain) for v in space.values())


def test_sweep_config_loads() -> None:
    spec = SweepSpec.load(CONFIGS / "sweep.yaml")
    assert "rl" in spec.methods and spec.targets == [0.5, 0.3]


def test_bad_settings_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: random-masks\nparam_space: {low: {uniform: [0, 1]}}\n")
    with pytest.raises(AutopruneError, match="random-masks has no parameter low"):
        TuneSpec.load(bad)
    bad.write_text("methods: [rl]\nexec: rm -rf /\n")
    with pytest.raises(AutopruneError, match="unknown setting"):
        SweepSpec.load(bad)
    with pytest.raises(AutopruneError, match="uniform needs a list"):
        parse_space({"low": {"uniform": 0.5}})


def test_rayjob_runs_the_job_entry_with_token_auth() -> None:
    job = yaml.safe_load((CONFIGS / "kuberay_rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "autoprune.distributed.job"]
    command = words[words.index("--") + 1 :]
    assert command[0] == "search"
    _, out = run_dir(command, "x")
    assert out == Path("/tmp/autoprune-run")
    assert "torch==2.13.0" in yaml.safe_load(job["spec"]["runtimeEnvYAML"])["pip"]
