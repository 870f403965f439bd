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
    warnings.showwarning = _one_line_warning


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr, without the source line Python shows by default."""
    click.echo(f"autoprune: warning: {' '.join(str(message).split())}", err=True)


def model_options(func):
    """Options naming the model and its weights (shared by every command)."""
    options = [
        click.option(
            "--model",
            default="digits_cnn",
            show_default=True,
            callback=_vouch_for_file,
            help="built-in name, pkg.module:factory or path/to/file.py:factory",
        ),
        click.option("--weights", type=click.Path(), default=None, help="trained weights (state dict/checkpoint)"),
        click.option("--trust-pickle", is_flag=True, help="allow weights that need full unpickling (trusted only)"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _vouch_for_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A `file.py:factory` typed on the command line may run (never one read from a run directory or plan)."""
    from autoprune.factory import trust_file

    if value and ctx.get_parameter_source(param.name) == ParameterSource.COMMANDLINE:
        trust_file(value)
    return value


def _input_shape(model: str, input_shape: str | None, dataset_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    from autoprune.models import model_spec

    if input_shape:
        try:
            return tuple(int(s) for s in input_shape.split(","))
        except ValueError:
            raise AutopruneError(f"--input-shape must look like 3,32,32, got {input_shape!r}") from None
    if dataset_shape:
        return tuple(dataset_shape)
    spec = model_spec(model)
    if spec is None:
        raise AutopruneError(f"--input-shape C,H,W (or --dataset) is needed for model {model!r}")
    return spec.input_shape


@cli.command()
@model_options
@click.option("--input-shape", default=None, help="C,H,W of one input (default: the dataset's or built-in model's)")
@click.option("--dataset", default=None, callback=_vouch_for_file, help="take input shape and classes from it")
@click.option("--data-dir", type=click.Path(), default=None, help="dataset files (e.g. cifar10 .tar.gz)")
@click.option("--num-classes", default=10, show_default=True, help="classifier outputs (default: the dataset's)")
@click.option("--ignore", multiple=True, help="module whose output channels must not be pruned (repeatable)")
@click.option("--graph-out", type=click.Path(), default=None, help="write the channel graph as GraphML")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def info(model, weights, trust_pickle, input_shape, dataset, data_dir, num_classes, ignore, graph_out, as_json) -> None:
    """Summarise a model's channel graph: groups, prunable channels, FLOPs/params, what is not pruned and why.

    The input shape comes from --input-shape, else from --dataset, else from the built-in model; a model of your own
    (pkg.module:factory, file.py:factory, torchvision:<name>) needs one of the first two.
    """
    import time

    import networkx as nx
    import torch

    from autoprune.graph import build_channel_graph
    from autoprune.graph.features import to_networkx
    from autoprune.models import build_model, load_weights

    if graph_out:
        check_output_file(graph_out, "--graph-out")
    dataset_shape = None
    if dataset:
        from autoprune.data import load_dataset

        bundle = load_dataset(dataset, data_dir=data_dir)
        dataset_shape = bundle.input_shape
        if click.get_current_context().get_parameter_source("num_classes") != ParameterSource.COMMANDLINE:
            num_classes = bundle.num_classes
    net = build_model(model, num_classes=num_classes)
    if weights:
        load_weights(net, weights, trust_pickle=trust_pickle)
    shape = _input_shape(model, input_shape, dataset_shape)
    start = time.perf_counter()
    graph = build_channel_graph(net.eval(), torch.zeros(1, *shape), model_name=model, ignore=ignore)
    seconds = time.perf_counter() - start
    if graph_out:
        with writing(graph_out, "--graph-out"):
            nx.write_graphml(to_networkx(graph), graph_out)
    if as_json:
        blocked = graph.frozen_flops()
        groups = [
            {"root": g.root, "size": g.size, "prunable": g.prunable, "reason": g.reason, "modules": g.modules}
            | ({} if g.prunable else {"blocked_flops_share": blocked[g.index]})
            for g in graph.groups
        ]
        doc = {
            "model": model,
            "input_shape": list(shape),
            "decisions": graph.num_decisions,
            "flops": graph.base_flops,
            "params": graph.base_params,
            "prunable_flops_share": graph.prunable_share(),
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
@click.option("--random-init", is_flag=True, help="without --weights, prune a freshly initialised model")
@click.option("--num-classes", default=10, show_default=True, help="classes, where no --dataset says")
@click.option("--dataset", default=None, help="recover and measure on this dataset (name or pkg.module:factory)")
@click.option("--data-dir", type=click.Path(), default=None, help="dataset files (e.g. cifar10 .tar.gz)")
@click.option("--recalibrate/--no-recalibrate", default=True, show_default=True,
              help="re-estimate BN statistics on training batches (with --dataset)")  # fmt: skip
@click.option("--reconstruct/--no-reconstruct", default=True, show_default=True,
              help="re-fit the conv and linear layers by least squares (with --dataset)")  # fmt: skip
@click.option("--finetune-epochs", type=float, default=0.0, show_default=True,
              help="fine-tune on the training split (with --dataset; use --device cuda for long runs)")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="seeds recalibration batches and fine-tuning")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto")
@click.option("--out", required=True, type=click.Path(), help="where to write the pruned model (.pt)")
@click.option("--onnx", "onnx_path", type=click.Path(), default=None, help="also export ONNX (after recovery)")
@click.option("--quiet", is_flag=True, help="no progress messages")
def apply(plan_path, model, weights, trust_pickle, random_init, num_classes, dataset, data_dir, recalibrate,
          reconstruct, finetune_epochs, seed, device, out, onnx_path, quiet) -> None:  # fmt: skip
    """Apply a plan to a model and write the physically smaller model (and ONNX where asked).

    The plan is applied to the trained weights it was searched on (--weights; the default digits model has its
    own). With --dataset the pruned model is recovered before it is written: BN statistics re-estimated on
    training batches (as a search does; --no-recalibrate skips it), the conv and linear layers re-fitted
    by least squares (--no-reconstruct skips it) and --finetune-epochs of fine-tuning.
    """
    from autoprune.deploy import ApplyConfig, apply_plan
    from autoprune.recovery import quiet as no_log
    from autoprune.recovery import stderr_log

    config = ApplyConfig(
        plan=plan_path, out=out, model=model, weights=weights, random_init=random_init, trust_pickle=trust_pickle,
        num_classes=num_classes, dataset=dataset, data_dir=data_dir, recalibrate=recalibrate,
        reconstruct=reconstruct, finetune_epochs=finetune_epochs, seed=seed, device=device, onnx=onnx_path,
        progress=not quiet,
    )  # fmt: skip
    done = apply_plan(config, log=no_log if quiet else stderr_log)
    achieved = done.plan.achieved
    click.echo(f"wrote {out}: {achieved['flops_ratio']:.1%} FLOPs, {achieved['params_ratio']:.1%} params")
    if done.metrics:
        click.echo(_accuracies(done.metrics))
    elif not dataset:
        click.echo("not recovered: BN statistics are the unpruned model's (give --dataset to recalibrate them)")
    if onnx_path:
        click.echo(f"wrote {onnx_path}")


@cli.command()
@click.option("--plan", "plan_path", required=True, type=click.Path(), help="plan.json written by a search")
@click.option("--model", default="digits_cnn", show_default=True, help="built-in name or pkg.module:factory")
@click.option("--num-classes", default=10, show_default=True)
@click.option("--to", "target", required=True, type=click.Choice(["torch-pruning", "csv"]),
              help="torch-pruning: a pruning_history; csv: channels per module before and after")  # fmt: skip
@click.option("--out", required=True, type=click.Path(), help="file to write (.pth or .json history; .csv)")
def export(plan_path, model, num_classes, target, out) -> None:
    """Write a plan in other tools' terms: a Torch-Pruning pruning_history, or a per-module width table.

    Torch-Pruning replays the history on the unpruned model:
    `DG = tp.DependencyGraph().build_dependency(model, example_inputs,
    customized_pruners=autoprune.nn.CUSTOM_PRUNERS); DG.load_pruning_history(torch.load(path))`.
    """
    from autoprune.interop import save_history, save_width_table, torch_pruning_history, width_table
    from autoprune.models import build_model
    from autoprune.plan import Plan

    plan = Plan.load(plan_path)
    check_output_file(out, "--out")
    net = build_model(model, num_classes=num_classes).eval()  # the channels of the structure; weights not needed
    with writing(out, "--out"):
        if target == "torch-pruning":
            history = torch_pruning_history(plan, net)
            save_history(history, out)
            click.echo(f"wrote {out}: a torch-pruning pruning_history of {len(history)} groups")
        else:
            rows = width_table(plan, net)
            save_width_table(rows, out)
            click.echo(f"wrote {out}: {len(rows)} modules")


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", type=click.Path(), default=None, help="folder for the PNGs and report.html (default RUN_DIR)")
def report(run_dir, out) -> None:
    """Draw a finished run or a sweep: PNG figures and a self-contained report.html.

    A run: best score so far per evaluation, accuracy at each stage, kept channels per layer. A sweep: every
    method's best score so far per evaluation (mean over seeds, with their range) and the comparison table.
    """
    from autoprune.html_report import write_report

    page = write_report(run_dir, out)
    click.echo(f"wrote {page} (and its PNG figures beside it)")


def search_options(func):
    """Options of `search` and `baseline`, mapped onto `SearchConfig` and `ProblemConfig`."""
    from autoprune.search.config import SearchConfig

    d = SearchConfig()
    p = d.problem
    options = [
        click.option(
            "--dataset",
            default=None,
            callback=_vouch_for_file,
            help="digits, cifar10, fashion-mnist, pkg.module:factory or file.py:factory",
        ),
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
            "--target-latency",
            type=float,
            default=None,
            help="keep at most this fraction of the unpruned model's latency, measured on --device (replaces the "
            "default FLOPs budget)",
        ),
        click.option(
            "--latency-batch", type=int, default=d.latency_batch, show_default=True, help="batch the latency is for"
        ),
        click.option(
            "--targets",
            default=None,
            help="several budgets at once, e.g. 0.3,0.5,0.7: a plan per target and the accuracy/cost front",
        ),
        click.option(
            "--target-resource",
            type=click.Choice(["flops", "params", "latency"]),
            default=d.target_resource,
            show_default=True,
            help="what --targets budgets",
        ),
        click.option(
            "--evaluations", type=int, default=d.evaluations, show_default=True, help="candidate evaluations to spend"
        ),
        click.option(
            "--finalists",
            type=int,
            default=d.finalists,
            show_default=True,
            help="best masks re-scored on fresh validation images to choose the plan (0: the best score is the plan)",
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
        click.option(
            "--score-with-reconstruction",
            is_flag=True,
            help="re-fit each candidate's layers by least squares before scoring it (about 2x the cost)",
        ),
        click.option(
            "--candidate-batch",
            type=int,
            default=p.candidate_batch,
            show_default=True,
            help="candidates scored together: side by side on the CPU's threads, or in one pass on a GPU (0: one per "
            "torch thread on a CPU, one on a GPU)",
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
            "--reconstruct/--no-reconstruct",
            default=d.reconstruct,
            show_default=True,
            help="re-fit the final plan's conv and linear layers by least squares (after BN recalibration), and choose "
            "the plan among the search's best and its start plans by validation accuracy after a quick re-fit",
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
        score_with_reconstruction=opts["score_with_reconstruction"], candidate_batch=opts["candidate_batch"],
    )  # fmt: skip
    out = opts["out"] or f"runs/{method}-{time.strftime('%Y%m%d-%H%M%S')}"
    extra = {k: opts[k] for k in ("steps_per_episode", "rollout", "learning_rate", "tau") if k in opts}
    ctx = click.get_current_context()
    flops_given = ctx.get_parameter_source("target_flops") == ParameterSource.COMMANDLINE
    target_flops = opts["target_flops"] if flops_given or opts["target_latency"] is None else None
    targets = _ratios(opts["targets"]) if opts["targets"] else ()
    if targets:
        if flops_given or opts["target_params"] is not None or opts["target_latency"] is not None:
            raise AutopruneError("give --targets (with --target-resource) or --target-flops/-params/-latency, not both")
        target_flops = None
    return SearchConfig(
        problem=problem, target_flops=target_flops, target_params=opts["target_params"],
        target_latency=opts["target_latency"], latency_batch=opts["latency_batch"], targets=targets,
        target_resource=opts["target_resource"], method=method,
        evaluations=opts["evaluations"], finalists=opts["finalists"], seed=opts["seed"],
        finetune_epochs=opts["finetune_epochs"], reconstruct=opts["reconstruct"],
        workers=opts["workers"], address=opts["address"], gpus_per_worker=opts["gpus_per_worker"], out=out, **extra,
    )  # fmt: skip


def _ratios(text: str) -> tuple[float, ...]:
    """`0.3,0.5,0.7` as ratios; AutopruneError for anything else."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise AutopruneError(f"--targets must be comma-separated ratios such as 0.3,0.5,0.7, got {text!r}") from None


def _accuracies(metrics: dict) -> str:
    """One line: test accuracy at every stage the metrics hold (unpruned, pruned, recalibrated...)."""
    from autoprune.recovery import stage_label
    from autoprune.search.report import stages

    parts = [f"{stage_label(s)} {metrics[f'test_acc_{s}']:.2%}" for s in stages(metrics) if f"test_acc_{s}" in metrics]
    return "test accuracy: " + ", ".join(parts)


def _report(metrics: dict, out: str) -> None:
    if "target_resource" in metrics:  # a multi-target run
        resource = metrics["target_resource"]
        for key in metrics:
            if key.startswith(f"{resource}_") and key.endswith("_ratio"):
                target = key[len(resource) + 1 : -len("_ratio")]
                test = metrics.get(f"{resource}_{target}_test_acc")
                click.echo(
                    f"{resource} ≤ {target}: plan at {metrics[key]:.1%}, test accuracy "
                    + ("–" if test is None else f"{test:.2%}")
                )
        click.echo(f"results in {out} (summary.md, front.png, front.json, a folder per target)")
        return
    click.echo(_accuracies(metrics))
    click.echo(f"results in {out} (plan.json, pruned.pt, summary.md, metrics.csv, tb/; autoprune report {out})")


def agent_options(func):
    """Options of the `rl` agent in `search`, with `SearchConfig`'s defaults."""
    from autoprune.search.config import SearchConfig

    d = SearchConfig()
    options = [
        click.option("--steps-per-episode", type=int, default=d.steps_per_episode, show_default=True,
                     help="1: one-shot masks; more: refine the last mask"),
        click.option("--rollout", type=int, default=d.rollout, show_default=True, help="evaluations per PPO update"),
        click.option("--learning-rate", type=float, default=d.learning_rate, show_default=True),
        click.option("--tau", type=float, default=d.tau, show_default=True, help="self-competition reward temperature"),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


@cli.command()
@search_options
@agent_options
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
