"""One search for several budgets of one resource: a plan per target and the accuracy/cost front.

The agent's episodes take the targets in turn (the target ratio is a node feature, so one policy serves them
all); each target has its own incumbent, for the reward and for racing. Every mask scored in full goes into one
archive (`autoprune.front`), so a mask scored while searching one target also serves every looser one. Each
target's plan is the best mask of the archive within it, filled to the budget and recovered as a single search's
plan; they are written to `<out>/<resource>-<target>/`, and `<out>/summary.md`, `front.json` and `front.png`
show them with the front. Baselines run once per target with an equal share of the evaluations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from autoprune.atomic import atomic_write_text
from autoprune.constraints import RESOURCES, Constraints
from autoprune.errors import AutopruneError
from autoprune.front import Archive, Entry, plot_front, save_front
from autoprune.latency import LatencyTable
from autoprune.problem import Problem
from autoprune.recovery import Log
from autoprune.scoring import SlicedScorer
from autoprune.search.config import SearchConfig
from autoprune.search.report import Outcome, cost, finish


def target_constraints(config: SearchConfig, table: LatencyTable | None) -> list[Constraints]:
    """The budget of every target of `config.targets`, loosest last."""
    return [Constraints(**{config.target_resource: t}, latency_table=table) for t in sorted(config.targets)]


def target_dir(out: Path, resource: str, target: float) -> Path:
    """Where the plan of one target is written."""
    return out / f"{resource}-{target:g}"


def scorer_like(evaluator: SlicedScorer) -> SlicedScorer:
    """A scorer on the same images as `evaluator` with an incumbent of its own (racing per target)."""
    bs = evaluator.batch_size
    batches = [(evaluator.x[i : i + bs], evaluator.y[i : i + bs]) for i in range(0, evaluator.num_samples, bs)]
    return SlicedScorer(
        evaluator.model, evaluator.graph, batches, evaluator.recalibration or None, evaluator.race_samples, evaluator.z
    )


def archiving(archive: Archive, tracker) -> Any:
    """An evaluation hook that keeps every full, feasible score in `archive`, then records it in `tracker`."""

    def on_eval(record: dict[str, Any]) -> bool:
        if tracker.count >= tracker.total:
            return False
        if not record.get("probe") and record.get("full", True):  # scored masks are feasible (rescaled, projected)
            ratios = {k: float(record[f"{k}_ratio"]) for k in RESOURCES if f"{k}_ratio" in record}
            archive.add(record["score"], ratios, record["keep"], tracker.count + 1)
        return tracker(record)

    return on_eval


def recording_scorer(problem: Problem, constraints: Constraints, scorer: SlicedScorer, on_eval) -> Any:
    """Score a feasible mask with `scorer`, passing the record (with its cost ratios) to `on_eval`."""

    def score(keep: np.ndarray) -> float:
        record = scorer.score(keep)
        ratios = {f"{k}_ratio": v for k, v in constraints.ratios(problem.graph, keep).items()}
        on_eval(
            {"score": record.score, "keep": keep, "violation": 0.0, "images": record.images, "full": record.full,
             **ratios}
        )  # fmt: skip
        return record.score

    return score


def search_targets(config: SearchConfig, problem: Problem, targets: list[Constraints], tracker, archive: Archive):
    """Spend the evaluation budget on all targets at once (the agent) or one after another (a baseline)."""
    on_eval = archiving(archive, tracker)
    if config.method != "rl":
        from autoprune.agents.baselines import run_baseline

        share = config.evaluations // len(targets)
        for k, constraints in enumerate(targets):
            budget = share if k < len(targets) - 1 else config.evaluations - tracker.count
            scorer = recording_scorer(problem, constraints, scorer_like(problem.evaluator), on_eval)
            run_baseline(
                config.method, problem.graph, constraints, scorer, budget=max(1, budget), seed=config.seed,
                model=problem.model, example_input=problem.example_input(),
                batches=problem.bundle.batches("train", 64, limit=256, device=problem.device),
                probe_fn=_prober(problem, constraints, on_eval),
            )  # fmt: skip
        return
    _search_rl(config, problem, targets, tracker, on_eval)


def _prober(problem: Problem, constraints: Constraints, on_eval):
    def probe(keep: np.ndarray) -> float:
        record = problem.evaluator.probe(keep)
        ratios = {f"{k}_ratio": v for k, v in constraints.ratios(problem.graph, keep).items()}
        on_eval(
            {"score": record.score, "keep": keep, "probe": True, "images": record.images,
             "violation": constraints.violation(problem.graph, keep), **ratios}
        )  # fmt: skip
        return record.score

    return probe


def _search_rl(config: SearchConfig, problem: Problem, targets: list[Constraints], tracker, on_eval) -> None:
    from autoprune.agents.baselines import group_importance
    from autoprune.agents.baselines.sensitivity import measure_sensitivity, probes_needed
    from autoprune.agents.ppo import EvaluationCallback, make_ppo
    from autoprune.agents.warm_start import start_masks, warm_start
    from autoprune.envs.channel_prune import ChannelPruneEnv
    from autoprune.search.runner import SWEEP_SHARE

    graph = problem.graph
    sensitivity = None
    if config.evaluations >= SWEEP_SHARE * (probes_needed(graph) + 1):
        probe = _prober(problem, targets[-1], on_eval)
        sensitivity = measure_sensitivity(graph, probe, probe(graph.full_mask()))
    importance = group_importance(problem.model, problem.example_input(), graph, "magnitude")
    scorers = [scorer_like(problem.evaluator) for _ in targets]
    bests: list[float | None] = [None] * len(targets)
    middle, start = len(targets) // 2, None
    for k, constraints in enumerate(targets):  # the cheap plans at every target; the middle one's best starts
        scored = {}
        for name, keep in start_masks(graph, constraints, importance, sensitivity).items():
            if tracker.count >= config.evaluations - 1:
                break
            scored[name] = (recording_scorer(problem, constraints, scorers[k], on_eval)(keep), keep)
        if scored:
            name = max(scored, key=lambda n: scored[n][0])
            bests[k] = scored[name][0]
            if k == middle or start is None:
                start = warm_start(graph, scored[name][1], importance, sensitivity)
    if start is None:
        keep = start_masks(graph, targets[middle], importance, sensitivity)["structural"]
        start = warm_start(graph, keep, importance, sensitivity)
    env = ChannelPruneEnv(
        graph, [s.score for s in scorers], targets[0], steps_per_episode=config.steps_per_episode, tau=config.tau,
        priority=start.importance, sensitivity=None if sensitivity is None else sensitivity.at_half(), targets=targets,
    )  # fmt: skip
    ppo = make_ppo(
        env, seed=config.seed, n_steps=config.rollout, batch_size=config.rollout, learning_rate=config.learning_rate,
        policy_kwargs={"init_keep_logit": 0.0, "group_terms": start.group_terms},
    )  # fmt: skip
    known = [b for b in bests if b is not None]
    env.set_state({"best_score": known[0] if known else None, "recent_scores": known, "target_bests": bests})
    remaining = config.evaluations - tracker.count
    try:
        if remaining > 0:
            ppo.learn(total_timesteps=remaining, callback=[EvaluationCallback(on_eval)], reset_num_timesteps=False)
    finally:
        env.close()


def finish_targets(
    config: SearchConfig,
    problem: Problem,
    targets: list[Constraints],
    archive: Archive,
    out: Path,
    extra: dict[str, Any],
    log: Log,
) -> dict[str, Any]:
    """Recover and write the plan of every target, then the front (front.json, front.png) and summary.md."""
    resource = config.target_resource
    picks, outcomes = [], []
    for constraints in targets:
        target = constraints.budgets()[resource]
        entry = archive.best(resource, target)
        if entry is None:
            raise AutopruneError(f"no mask within {resource} ≤ {target:g} was scored; give more --evaluations")
        log(f"target {resource} ≤ {target:g}: best validation score {entry.score:.4f}")
        outcome = finish(
            problem, constraints, entry.keep, entry.score, target_dir(out, resource, target), method=config.method,
            finetune_epochs=config.finetune_epochs, reconstruct=config.reconstruct,
            seed=config.seed, extra={**extra, "target": target}, log=log,
        )  # fmt: skip
        outcomes.append(outcome)
        achieved = outcome.plan.achieved
        picks.append(
            {"target": target, "ratio": achieved[f"{resource}_ratio"], "score": entry.score,
             "evaluation": entry.evaluation, "test_acc": _last_test(outcome.metrics),
             "plan": str(target_dir(out, resource, target).relative_to(out) / "plan.json")}
        )  # fmt: skip
    front = archive.front(resource)
    save_front(out / "front.json", front, resource, picks)
    plot_front(out / "front.png", front, resource, picks, archive.entries)
    atomic_write_text(out / "summary.md", front_summary(problem, config, outcomes, picks, front, extra))
    return {
        "method": config.method,
        "target_resource": resource,
        **extra,
        "front_size": len(front),
        **{f"{resource}_{p['target']:g}_{k}": p[k] for p in picks for k in ("ratio", "score", "test_acc")},
    }


def _last_test(metrics: dict[str, Any]) -> float | None:
    from autoprune.search.report import stages

    found = [metrics[f"test_acc_{s}"] for s in stages(metrics) if f"test_acc_{s}" in metrics and s != "unpruned"]
    return found[-1] if found else None


def front_summary(
    problem: Problem,
    config: SearchConfig,
    outcomes: list[Outcome],
    picks: list[dict[str, Any]],
    front: list[Entry],
    extra: dict[str, Any],
) -> str:
    """summary.md of a multi-target run: a row per target's plan, the front as a table, and front.png."""
    from autoprune.recovery import stage_label
    from autoprune.search.report import stages

    resource = config.target_resource
    names = [r for r in RESOURCES if any(r in e.ratios for e in front)] or ["flops", "params"]
    first = outcomes[0].metrics
    stage_names = [s for s in stages(first) if f"test_acc_{s}" in first]
    lines = [
        f"# autoprune run: {problem.graph.model_name} ({config.method}), {len(picks)} {resource} targets",
        "",
        f"Search: {cost(extra)}, one search for all targets. Unpruned test accuracy "
        f"{_pct(first.get('test_acc_unpruned'))}.",
        "",
        "Plans (each in its folder with plan.json, pruned.pt and summary.md; accuracies are test accuracies after "
        "each stage; `val (search)` is the score the search chose it by):",
        "",
        "| target | plan | "
        + " | ".join(names)
        + " | val (search) | "
        + " | ".join(stage_label(s) for s in stage_names if s != "unpruned")
        + " |",
        "|---" * (3 + len(names) + len(stage_names) - ("unpruned" in stage_names)) + "|",
    ]
    for pick, outcome in zip(picks, outcomes, strict=True):
        a, m = outcome.plan.achieved, outcome.metrics
        costs = " | ".join(_pct(a.get(f"{r}_ratio"), 1) for r in names)
        accs = " | ".join(_pct(m.get(f"test_acc_{s}")) for s in stage_names if s != "unpruned")
        lines.append(
            f"| {resource} ≤ {pick['target']:.0%} | `{pick['plan']}` | {costs} | {_pct(pick['score'])} | {accs} |"
        )
    lines += [
        "",
        f"Front: the {len(front)} masks of all the search scored that no other beats on both {resource} (lower) and "
        "validation score (higher), before filling and recovery.",
        "",
        "![accuracy against cost](front.png)",
        "",
        "| evaluation | " + " | ".join(names) + " | val score |",
        "|---" * (2 + len(names)) + "|",
    ]
    for e in front:
        lines.append(
            f"| {e.evaluation} | " + " | ".join(_pct(e.ratios.get(r), 1) for r in names) + f" | {_pct(e.score)} |"
        )
    return "\n".join(lines) + "\n"


def _pct(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{float(value):.{digits}%}"
