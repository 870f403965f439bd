"""The `autoprune` command line: parses options and calls library functions.

Errors a user can cause (`AutopruneError`) print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import click
from click.core import ParameterSource

from autoprune.distributed.commands import submit, sweep, tune_command
from autoprune.errors import AutopruneError
from autoprune.outputs import check_output_file, writing


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AutopruneError as exc:
            click.echo(f"autoprune: error: {exc}", err=True)
            sys.exit(2)
        except click.UsageError as exc:  # a subcommand's option that does not parse: one line too, not usage text
            click.echo(f"autoprune: error: {' '.join(exc.format_message().split())} (see --help)", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("autoprune: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="autoprune")
def cli() -> None:
    """Search which channels of a trained network to remove under a FLOPs/params budget."""
    warnings.filterwarnings("ignore", category=UserWarning, module="torch_pruning")


def model_options(func):
    """Options naming the model and its weights (shared by every command)."""
    options = [
        click.option("--model", default="digits_cnn", show_default=True, help="built-in name or pkg.module:factory"),
        click.option("--weights", type=click.Path(), default=None, help="trained weights (state dict/checkpoint)"),
        click.option("--trust-pickle", is_flag=True, help="allow weights that need full unpickling (trusted only)"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _input_shape(model: str, input_shape: str | None) -> tuple[int, ...]:
    from autoprune.models import model_spec

    if input_shape:
        try:
            return tuple(int(s) for s in input_shape.split(","))
        except ValueError:
            raise AutopruneError(f"--input-shape must look like 3,32,32, got {input_shape!r}") from None
    spec = model_spec(model)
    if spec is None:
        raise AutopruneError(f"--input-shape C,H,W is needed for model {model!r}")
    return spec.input_shape


@cli.command()
@model_options
@click.option("--input-shape", default=None, help="C,H,W of one input (default: the built-in model's)")
@click.option("--num-classes", default=10, show_default=True)
@click.option("--ignore", multiple=True, help="module whose output channels must not be pruned (repeatable)")
@click.option("--graph-out", type=click.Path(), default=None, help="write the channel graph as GraphML")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def info(model, weights, trust_pickle, input_shape, num_classes, ignore, graph_out, as_json) -> None:
    """Summarise a model's channel graph: groups, prunable channels, FLOPs/params, what is not pruned and why."""
    import time

    import networkx as nx
    import torch

    from autoprune.graph import build_channel_graph
    from autoprune.graph.features import to_networkx
    from autoprune.models import build_model, load_weights

    if graph_out:
        check_output_file(graph_out, "--graph-out")
    net = build_model(model, num_classes=num_classes)
    if weights:
        load_weights(net, weights, trust_pickle=trust_pickle)
    shape = _input_shape(model, input_shape)
    start = time.perf_counter()
    graph = build_channel_graph(net.eval(), torch.zeros(1, *shape), model_name=model, ignore=ignore)
    seconds = time.perf_counter() - start
    if graph_out:
        with writing(graph_out, "--graph-out"):
            nx.write_graphml(to_networkx(graph), graph_out)
    if as_json:
        groups = [
            {"root": g.root, "size": g.size, "prunable": g.prunable, "reason": g.reason, "modules": g.modules}
            for g in graph.groups
        ]
        doc = {
            "model": model,
            "decisions": graph.num_decisions,
            "flops": graph.base_flops,
            "params": graph.base_params,
            "groups": groups,
            "seconds": seconds,
        }
        click.echo(json.dumps(doc, indent=1))
        return
    click.echo(graph.summary())
    click.echo("groups (root: channels, modules touched):")
    for g in graph.groups:
        mark = "" if g.prunable else "  [not pruned]"
        click.echo(f"  {g.root or g.index}: {g.size} ch, {len(g.modules)} modules{mark}")
    click.echo(f"converted in {seconds:.2f} s")


@cli.command()
@click.option("--plan", "plan_path", required=True, type=click.Path(), help="plan.json written by a search")
@model_options
@click.option("--num-classes", default=10, show_default=True)
@click.option("--out", required=True, type=click.Path(), help="where to write the pruned model (.pt)")
@click.option("--onnx", "onnx_path", type=click.Path(), default=None, help="also export ONNX here")
def apply(plan_path, model, weights, trust_pickle, num_classes, out, onnx_path) -> None:
    """Apply a plan to a model and write the physically smaller model (and ONNX where asked).

    --weights is required: the plan is applied to the trained weights it was searched on, never to a freshly
    initialised model.
    """
    from autoprune.export import export_onnx, save_pruned
    from autoprune.models import build_model, load_weights
    from autoprune.plan import Plan

    plan = Plan.load(plan_path)
    if not weights:
        raise AutopruneError("apply needs --weights: the trained weights the plan was searched on")
    check_output_file(out, "--out")
    if onnx_path:
        check_output_file(onnx_path, "--onnx")
    net = build_model(model, num_classes=num_classes)
    plan.check_model(net)  # a plan for another model is the likelier mistake than weights that do not fit
    load_weights(net, weights, trust_pickle=trust_pickle)
    pruned = plan.apply(net.eval())
    with writing(out, "--out"):
        save_pruned(out, pruned, plan, num_classes)
    click.echo(f"wrote {out}: {plan.achieved['flops_ratio']:.1%} FLOPs, {plan.achieved['params_ratio']:.1%} params")
    if onnx_path:
        with writing(onnx_path, "--onnx"):
            export_onnx(pruned, plan.input_shape, onnx_path)
        click.echo(f"wrote {onnx_path}")


def search_options(func):
    """Options of `search` and `baseline`, mapped onto `SearchConfig` and `ProblemConfig`."""
    from autoprune.search.config import SearchConfig

    d = SearchConfig()
    p = d.problem
    options = [
        click.option("--dataset", default=None, help="digits, cifar10, fashion-mnist or pkg.module:factory"),
        click.option("--data-dir", type=click.Path(), default=None, help="dataset files (e.g. cifar10 .tar.gz)"),
        click.option(
            "--target-flops",
            type=float,
            default=d.target_flops,
            show_default=True,
            help="keep at most this fraction of FLOPs",
        ),
        click.option("--target-params", type=float, default=None, help="keep at most this fraction of params"),
        click.option(
            "--evaluations", type=int, default=d.evaluations, show_default=True, help="candidate evaluations to spend"
        ),
        click.option("--seed", type=int, default=d.seed, show_default=True),
        click.option("--device", default=p.device, show_default=True, help="cpu, cuda, cuda:N or auto"),
        click.option(
            "--eval-samples",
            type=int,
            default=p.eval_samples,
            show_default=True,
            help="validation samples scoring each candidate",
        ),
        click.option(
            "--recalibrate-batches",
            type=int,
            default=p.recalibrate_batches,
            show_default=True,
            help="BN recalibration batches before scoring each candidate",
        ),
        click.option(
            "--racing/--no-racing",
            default=p.racing,
            show_default=True,
            help="stop a candidate after BN recalibration when it is clearly worse than the best so far",
        ),
        click.option("--ignore", multiple=True, help="module whose output channels are kept (repeatable)"),
        click.option("--min-channels", type=int, default=p.min_channels, show_default=True),
        click.option(
            "--round-to",
            type=int,
            default=p.round_to,
            show_default=True,
            help="kept channels per group rounded up to a multiple of this",
        ),
        click.option(
            "--finetune-epochs",
            type=float,
            default=d.finetune_epochs,
            show_default=True,
            help="fine-tune the pruned model after the search",
        ),
        click.option(
            "--workers",
            type=int,
            default=d.workers,
            show_default=True,
            help="parallel evaluation workers (Ray actors when > 1)",
        ),
        click.option("--address", default=None, help="Ray cluster address (auto, ray://host:10001)"),
        click.option("--gpus-per-worker", type=float, default=d.gpus_per_worker, show_default=True),
        click.option("--out", type=click.Path(), default=None, help="run directory (default runs/<method>-<time>)"),
        click.option("--quiet", is_flag=True, help="no progress bar"),
    ]
    for option in reversed(options):
        func = option(func)
    return model_options(func)


def _search_config(method: str, opts: dict):
    import time

    from autoprune.problem import ProblemConfig
    from autoprune.search.config import SearchConfig

    problem = ProblemConfig(
        model=opts["model"], weights=opts["weights"], trust_pickle=opts["trust_pickle"], dataset=opts["dataset"],
        data_dir=opts["data_dir"], device=opts["device"], eval_samples=opts["eval_samples"],
        recalibrate_batches=opts["recalibrate_batches"], racing=opts["racing"], ignore=tuple(opts["ignore"]),
        min_channels=opts["min_channels"], round_to=opts["round_to"],
    )  # fmt: skip
    out = opts["out"] or f"runs/{method}-{time.strftime('%Y%m%d-%H%M%S')}"
    extra = {k: opts[k] for k in ("steps_per_episode", "rollout", "learning_rate", "tau") if k in opts}
    return SearchConfig(
        problem=problem, target_flops=opts["target_flops"], target_params=opts["target_params"], method=method,
        evaluations=opts["evaluations"], seed=opts["seed"], finetune_epochs=opts["finetune_epochs"],
        workers=opts["workers"], address=opts["address"], gpus_per_worker=opts["gpus_per_worker"], out=out, **extra,
    )  # fmt: skip


def _report(metrics: dict, out: str) -> None:
    stages = [("pruned", "pruned"), ("recalibrated", "+ BN recalibration"), ("finetuned", "+ fine-tune")]
    parts = [f"{label} {metrics[f'test_acc_{key}']:.2%}" for key, label in stages if f"test_acc_{key}" in metrics]
    click.echo(f"test accuracy: unpruned {metrics['test_acc_unpruned']:.2%}, " + ", ".join(parts))
    click.echo(f"results in {out} (plan.json, pruned.pt, summary.md, metrics.csv, tb/)")


@cli.command()
@search_options
@click.option("--steps-per-episode", type=int, default=1, show_default=True,
              help="1: one-shot masks; more: refine the last mask")  # fmt: skip
@click.option("--rollout", type=int, default=16, show_default=True, help="evaluations per PPO update")
@click.option("--learning-rate", type=float, default=3e-3, show_default=True)
@click.option("--tau", type=float, default=0.01, show_default=True, help="self-competition reward temperature")
@click.option("--resume", "resume_dir", type=click.Path(), default=None, help="continue a killed run")
def search(resume_dir, quiet, **opts) -> None:
    """Search which channels to prune with the GAT policy and PPO (self-competition reward).

    With --resume, the run continues with its own config.json; of the options, only --trust-pickle and
    --address apply, and --model/--dataset naming the run's own pkg.module:factory (permissions and code are never
    taken from the run directory).
    """
    from autoprune.search.runner import resume_search

    if resume_dir:
        ctx = click.get_current_context()
        given = [opts[k] for k in ("model", "dataset") if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE]
        permissions = {"trust_pickle": opts["trust_pickle"], "address": opts["address"], "code": tuple(given)}
        metrics = resume_search(resume_dir, progress=not quiet, **permissions)
        _report(metrics, resume_dir)
        return
    config = _search_config("rl", opts)
    metrics = _run(config, quiet)
    _report(metrics, config.out)


@cli.command()
@click.option("--method", required=True, type=click.Choice(
    ["structural", "sensitivity", "l1-uniform", "global-magnitude", "global-taylor", "random-search",
     "random-masks"]))  # fmt: skip
@search_options
def baseline(method, quiet, **opts) -> None:
    """Run a baseline (same harness and evaluation budget as `search`)."""
    config = _search_config(method, opts)
    metrics = _run(config, quiet)
    _report(metrics, config.out)


def _run(config, quiet: bool) -> dict:
    from autoprune.search.runner import run_search

    return run_search(config, progress=not quiet)


cli.add_command(sweep)
cli.add_command(tune_command)
cli.add_command(submit)


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning")
    cli(prog_name="autoprune")


if __name__ == "__main__":
    main()
