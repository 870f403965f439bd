"""The Ray commands of the `autoprune` CLI: `sweep`, `tune` and `submit` (registered in `autoprune.cli`).

Thin: each parses its options into the typed configs and calls `run_sweep`, `tune_baseline` or `JobClient`.
Nothing here imports Ray at module level, so `autoprune --help` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from autoprune.errors import AutopruneError


def _floats(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise AutopruneError(f"expected comma-separated numbers like 0.5,0.3, got {text!r}") from None


def _ints(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise AutopruneError(f"expected comma-separated integers like 0,1,2, got {text!r}") from None


def problem_options(func):
    """Options for the problem and the per-run search settings shared by every trial."""
    options = [
        click.option("--model", default="digits_cnn", show_default=True, help="built-in name or pkg.module:factory"),
        click.option("--weights", type=click.Path(), default=None, help="trained weights (state dict/checkpoint)"),
        click.option("--trust-pickle", is_flag=True, help="allow weights that need full unpickling (trusted only)"),
        click.option("--dataset", default=None, help="digits, cifar10, fashion-mnist or pkg.module:factory"),
        click.option("--data-dir", type=click.Path(), default=None, help="dataset files (e.g. cifar10 .tar.gz)"),
        click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto"),
        click.option("--eval-samples", type=int, default=1000, show_default=True, help="validation samples/candidate"),
        click.option("--recalibrate-batches", type=int, default=4, show_default=True),
        click.option("--target-params", type=float, default=None, help="also keep at most this fraction of params"),
        click.option("--rollout", type=int, default=16, show_default=True, help="evaluations per PPO update (rl)"),
        click.option("--finetune-epochs", type=float, default=0.0, show_default=True),
        click.option("--address", default=None, help="Ray cluster to join (auto, host:port, ray://host:10001)"),
        click.option("--num-cpus", type=float, default=None, help="CPUs of the local Ray started when no --address"),
        click.option("--verbose", type=click.IntRange(0, 3), default=1, show_default=True, help="Tune's verbosity"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _base_config(opts: dict[str, Any], out: str, target_flops: float | None = 0.5):
    from autoprune.problem import ProblemConfig
    from autoprune.search.config import SearchConfig

    problem = ProblemConfig(
        model=opts["model"], weights=opts["weights"], trust_pickle=opts["trust_pickle"], dataset=opts["dataset"],
        data_dir=opts["data_dir"], device=opts["device"], eval_samples=opts["eval_samples"],
        recalibrate_batches=opts["recalibrate_batches"],
    )  # fmt: skip
    return SearchConfig(
        problem=problem, target_flops=target_flops, target_params=opts["target_params"], rollout=opts["rollout"],
        finetune_epochs=opts["finetune_epochs"], address=opts["address"], out=out,
    )  # fmt: skip


@click.command()
@click.option("--methods", default=None, help="comma-separated methods, e.g. rl,random-masks [rl,random-masks]")
@click.option("--seeds", default=None, help="comma-separated seeds [0,1,2]")
@click.option("--targets", default=None, help="comma-separated FLOPs targets [0.5]")
@click.option("--evaluations", type=int, default=None, help="candidate evaluations per trial [200]")
@click.option("--config", "config_path", type=click.Path(), default=None, help="YAML grid (ray_configs/sweep.yaml)")
@click.option("--max-concurrent", type=int, default=None, help="trials at once (default: as CPUs allow)")
@click.option("--cpus-per-trial", type=float, default=None, help="CPUs each trial reserves [1]")
@click.option("--out", type=click.Path(), default=None, help="sweep directory (default runs/sweep-<time>)")
@click.option("--resume", "resume_dir", type=click.Path(), default=None, help="continue an interrupted sweep")
@problem_options
def sweep(methods, seeds, targets, evaluations, config_path, max_concurrent, cpus_per_trial, out, resume_dir, **opts):
    """Run every method x target x seed as a Ray Tune trial and write one comparison table (Markdown + CSV)."""
    import dataclasses
    import time

    from autoprune.distributed.sweep import SweepSpec, resume_sweep, run_sweep

    if resume_dir:
        rows = resume_sweep(resume_dir, num_cpus=opts["num_cpus"], verbose=opts["verbose"])
        _sweep_done(rows, resume_dir)
        return
    spec = SweepSpec.load(config_path) if config_path else SweepSpec()
    given = {
        "methods": [m.strip() for m in methods.split(",") if m.strip()] if methods else None,
        "seeds": _ints(seeds),
        "targets": _floats(targets),
        "evaluations": evaluations,
        "max_concurrent_trials": max_concurrent,
        "cpus_per_trial": cpus_per_trial,
    }
    spec = dataclasses.replace(spec, **{k: v for k, v in given.items() if v is not None})
    out = out or f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    rows = run_sweep(_base_config(opts, out), spec, num_cpus=opts["num_cpus"], verbose=opts["verbose"])
    _sweep_done(rows, out)


def _sweep_done(rows: list[dict], out: str) -> None:
    click.echo(
        f"{len(rows)} runs compared in {out}/comparison.md (and comparison.csv, comparison_summary.csv, "
        "comparison.png; autoprune report draws more)"
    )


@click.command(name="tune")
@click.option("--config", "config_path", type=click.Path(), default=None, help="YAML experiment (ray_configs/)")
@click.option("--method", type=click.Choice(["random-search", "random-masks"]), default=None)
@click.option("--evaluations", type=int, default=None, help="candidate evaluations per trial")
@click.option("--target-flops", type=float, default=0.5, show_default=True)
@click.option("--out", type=click.Path(), default=None, help="run directory (default runs/tune-<time>)")
@click.option("--resume", "resume_dir", type=click.Path(), default=None, help="continue an interrupted experiment")
@problem_options
def tune_command(config_path, method, evaluations, target_flops, out, resume_dir, **opts):
    """Tune a random baseline's seed and knob with Ray Tune; the best mask found becomes the run's plan."""
    import dataclasses
    import time

    from autoprune.distributed.tune import TuneSpec, resume_tune_baseline, tune_baseline

    if resume_dir:
        metrics = resume_tune_baseline(resume_dir, num_cpus=opts["num_cpus"], verbose=opts["verbose"])
        out = resume_dir
    else:
        spec = TuneSpec.load(config_path) if config_path else TuneSpec()
        given = {"method": method, "evaluations": evaluations}
        spec = dataclasses.replace(spec, **{k: v for k, v in given.items() if v is not None})
        out = out or f"runs/tune-{time.strftime('%Y%m%d-%H%M%S')}"
        base = _base_config(opts, out, target_flops=target_flops)
        metrics = tune_baseline(base, spec, num_cpus=opts["num_cpus"], verbose=opts["verbose"])
    click.echo(
        f"best of {metrics['trials']} trials ({metrics['best_config']}): test accuracy "
        f"{metrics['test_acc_recalibrated']:.2%} after BN recalibration; results in {out} (plan.json, trials.csv)"
    )


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--address",
    default=lambda: os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"),
    show_default="$RAY_API_SERVER_ADDRESS or http://127.0.0.1:8265",
    help="the cluster's Jobs API (dashboard) address",
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="follow the log and fetch the results")
@click.option("--logs", "job_id", default=None, help="follow an earlier job's log (and fetch its results)")
@click.option("--download", type=click.Path(), default=None, help="where results go (default runs/<job id>)")
@click.option("--token-file", type=click.Path(), default=None, help="auth token file (else $RAY_AUTH_TOKEN, ...)")
@click.option("--python", default="python", show_default=True, help="the cluster's Python with autoprune installed")
@click.option("--pip", multiple=True, help="runtime_env pip requirement for the job (repeatable)")
@click.option("--env", "env_vars", multiple=True, help="KEY=VALUE environment variable for the job (repeatable)")
@click.option("--force", is_flag=True, help="overwrite result files already in --download")
@click.option("--insecure-token", is_flag=True, help="send the auth token over plain HTTP to another machine")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def submit(address, wait, job_id, download, token_file, python, pip, env_vars, force, insecure_token, command) -> None:
    """Run `autoprune COMMAND...` on a Ray cluster as a Ray Job: submit -- search --target-flops 0.5 ...

    Follows the job's log and, when it ends, fetches plan.json, summary.md, metrics.csv and pruned.pt of its run
    directory through the log itself (no shared filesystem needed). The auth token comes from --token-file,
    $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, and goes only to 127.0.0.1/localhost or an
    https:// address unless --insecure-token is given.
    """
    from autoprune.distributed.results import check_destination
    from autoprune.distributed.submit import JobClient

    token = None
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise AutopruneError(f"cannot read --token-file {token_file}: {exc.strerror}") from None
    if download and (wait or job_id):
        check_destination(Path(download), force)  # before the job runs: its results would have nowhere to go
    client = JobClient(address, token, insecure_token=insecure_token)
    if job_id is None:
        runtime_env: dict[str, Any] = {}
        if pip:
            runtime_env["pip"] = list(pip)
        if env_vars:
            bad = [e for e in env_vars if "=" not in e]
            if bad:
                raise AutopruneError(f"--env takes KEY=VALUE, got {bad[0]!r}")
            runtime_env["env_vars"] = dict(e.split("=", 1) for e in env_vars)
        job_id = client.submit(list(command), python=python, runtime_env=runtime_env or None)
        click.echo(f"submitted job {job_id} to {address}")
        if not wait:
            click.echo(f"follow it with: autoprune submit --address {address} --logs {job_id}")
            return
    elif command:
        raise AutopruneError("--logs follows an existing job; give no command with it")
    status = client.follow(job_id, echo=click.echo)
    if status != "SUCCEEDED":
        raise client.failure(job_id, status)
    dest = Path(download or Path("runs") / job_id)
    files = client.fetch_results(job_id, dest, force=force)
    if files is None:
        click.echo(f"job {job_id} succeeded (its command writes no run directory: nothing to fetch)")
    else:
        click.echo(f"job {job_id} succeeded; fetched {', '.join(f.name for f in files)} into {dest}")
