"""Run a search end to end: set up, search with the agent or a baseline, checkpoint, resume, report."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from autoprune.constraints import Constraints, check_feasible
from autoprune.errors import AutopruneError
from autoprune.export import IN_MEMORY
from autoprune.plan import Plan
from autoprune.problem import Problem, load_problem
from autoprune.recovery import quiet, stderr_log
from autoprune.search.checkpoint import read_agent
from autoprune.search.config import SearchConfig
from autoprune.search.finalists import Finalists, confirm, reserved
from autoprune.search.report import Outcome, finish
from autoprune.search.rundir import RunDir
from autoprune.search.shortlist import TOP, candidates, choose
from autoprune.search.state import check_masks, check_state


class Tracker:
    """Numbers evaluations, keeps the best feasible mask, writes metrics and drives the progress bar."""

    def __init__(
        self,
        run: RunDir,
        total: int,
        done: int = 0,
        best: tuple[float, list] | None = None,
        progress: bool = True,
        leaders: Finalists | None = None,
    ) -> None:
        self.run = run
        self.total = total
        self.count = done
        self.best_score = best[0] if best else -np.inf
        self.best_keep = np.asarray(best[1], dtype=np.int8) if best else None
        self.start = time.perf_counter()
        self.elapsed_before = 0.0
        self.images = 0
        """Images forwarded by the scorer (BN recalibration and validation) over all evaluations."""
        self.leaders = leaders or Finalists(TOP)
        """The best masks scored on every validation image, for the shortlist (`autoprune.search.shortlist`) and
        the finalists (`autoprune.search.finalists`), who take the first of them."""
        self.named: dict[str, np.ndarray] = {}
        """Cheap plans the search scored, by name (the agent's start masks), for the shortlist."""
        self.bar = tqdm(total=total, initial=done, desc="search", unit="eval", disable=not progress, leave=True)

    def __call__(self, record: dict[str, Any]) -> bool:
        """Record one evaluation; returns False once the budget is spent.

        A record with a true `probe` (a mask outside the budget, e.g. a sensitivity measurement) counts against
        the budget but never becomes the best.
        """
        if self.count >= self.total:
            return False
        self.count += 1
        self.images += int(record.get("images") or 0)
        score = float(record["score"])
        probe = bool(record.get("probe"))
        if not probe and score > self.best_score:
            self.best_score, self.best_keep = score, np.asarray(record["keep"], dtype=np.int8).copy()
        if not probe and record.get("full", True):
            self.leaders.offer(score, np.asarray(record["keep"], dtype=np.int8))
        row = {
            **record,
            "evaluation": self.count,
            "best_score": self.best_score,
            "seconds": self.seconds,
            "probe": int(probe),
        }
        self.run.log(row)
        self.bar.update(1)
        feasible = "ok" if record.get("violation", 0) <= 1e-9 else "repaired"
        self.bar.set_postfix(best=f"{self.best_score:.4f}", flops=f"{record['flops_ratio']:.3f}", proposal=feasible)
        return self.count < self.total

    @property
    def seconds(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    def state(self) -> dict[str, Any]:
        return {
            "evaluations": self.count,
            "best_score": self.best_score if self.best_keep is not None else None,
            "best_keep": self.best_keep.tolist() if self.best_keep is not None else None,
            "seconds": self.seconds,
            "images": self.images,
            "leaders": self.leaders.state(),
            "named": {name: keep.tolist() for name, keep in self.named.items()},
        }

    def close(self) -> None:
        self.bar.close()


def run_search(config: SearchConfig, progress: bool = True) -> dict[str, Any]:
    """Start a new search in `config.out`; returns the final metrics.

    The run directory is created only once the problem is set up (a setup error leaves nothing behind), and
    this process holds its lock until the results are written.
    """
    config.validate()
    RunDir(config.out).check_new()
    problem, constraints = _setup(config)
    return search_problem(config, problem, constraints, progress).metrics


def search_problem(config: SearchConfig, problem: Problem, constraints: Constraints, progress: bool = True) -> Outcome:
    """Search `problem` (already set up, e.g. from an in-memory model) as a new run in `config.out`.

    Args:
        config: the search settings; `config.problem` is recorded in config.json but not loaded.
        problem: model, data, channel graph and scorer.
        constraints: the budget.
        progress: progress bar and a stderr line per step after the search.
    """
    run = RunDir(config.out)
    run.check_new()
    with run.locked():
        run.check_new()  # another search may have taken this --out during the setup
        config.save(run.config_path)
        return _execute(config, problem, constraints, run, state=None, rows=[], progress=progress)


def finished_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """The metrics of a run that has finished (its plan, pruned model and summary are written), else None."""
    path = Path(run_dir)
    if not all((path / name).is_file() for name in ("plan.json", "pruned.pt", "summary.md")):
        return None
    return Plan.load(path / "plan.json").metrics


def resume_search(
    run_dir: str | Path,
    progress: bool = True,
    trust_pickle: bool = False,
    cache_dir: str | None = None,
    address: str | None = None,
    code: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Continue a killed search from its last checkpoint; evaluations after it are redone, none duplicated.

    A finished run (plan.json, pruned.pt and summary.md written) returns the metrics its plan records, and
    nothing is redone.

    The run directory is data: its files are checked before any evaluation is spent, and permissions come from
    the caller, never from its config.json. That includes code: a model or dataset built by a user factory
    (`pkg.module:factory`) is imported and called only when the caller names the same factory in `code`.

    Args:
        run_dir: the run directory of `run_search`.
        progress: show a progress bar.
        trust_pickle: allow weights files that need full unpickling (`--trust-pickle`).
        cache_dir: cache for decoded data and the default model (default `$AUTOPRUNE_CACHE`).
        address: Ray cluster to join (`--address`; results from a cluster are unpickled, so never the file's);
            None starts a local Ray when the run has more than one worker.
        code: the `pkg.module:factory` names the caller vouches for (`--model`/`--dataset` given again).
    """
    run = RunDir(run_dir)
    if not run.config_path.is_file():
        raise AutopruneError(f"{run.path} is not a run directory (no config.json)")
    with run.locked():
        done = finished_metrics(run.path)
        if done is not None:  # nothing left to do: its results, not a second finalisation
            if progress:
                stderr_log(f"{run.path} is a finished run; its results are in {run.path / 'summary.md'}")
            return done
        config = SearchConfig.load(run.config_path)
        if config.targets:
            raise AutopruneError("a multi-target run (--targets) cannot be resumed yet; start a new one")
        _check_code(config, code)
        config.out = str(run.path)
        config.problem = dataclasses.replace(config.problem, trust_pickle=trust_pickle, cache_dir=cache_dir)
        config.address = address
        state = run.load_state() if config.method == "rl" else None  # baselines restart: their stream is seeded
        if state is not None:
            check_state(state, config.evaluations, needs_env=False)
            if state["evaluations"] < config.evaluations:
                read_agent(run.path / "checkpoint")  # refused now rather than after the setup
        rows = run.read_metrics(state["evaluations"] if state else 0)
        problem, constraints = _setup(config)
        if state is not None:  # the env is needed until the search part of the budget is spent
            vectorised = config.workers > 1 or bool(config.address) or _candidates(problem) > 1
            check_state(state, search_budget(config, problem), needs_env=True, vectorised=vectorised)
            check_masks(state, problem.graph, constraints)
        return _execute(config, problem, constraints, run, state=state, rows=rows, progress=progress).metrics


def _check_code(config: SearchConfig, code: tuple[str, ...]) -> None:
    """Refuse to import a factory that only the run directory names (config.json is data, not code)."""
    if config.problem.model == IN_MEMORY:
        raise AutopruneError(
            "this run searched a model given in memory (autoprune.prune): it cannot be resumed from its directory"
        )
    for option, name in (("--model", config.problem.model), ("--dataset", config.problem.dataset)):
        if name and ":" in name and not name.startswith("torchvision:") and name not in code:
            raise AutopruneError(
                f"this run is built by {name!r}, code named in its config.json: give {option} {name} again to resume it"
            )


def _setup(config: SearchConfig) -> tuple[Problem, Constraints]:
    problem = load_problem(config.problem)
    constraints = search_constraints(config, problem)
    check_feasible(problem.graph, constraints)
    return problem, constraints


def search_constraints(config: SearchConfig, problem: Problem, progress: bool = False) -> Constraints:
    """The budget of `config` on `problem`, with a latency table (measured, or read from the cache) where a
    latency budget needs one; with `targets`, the loosest target (every target is checked reachable)."""
    table = None
    if config.uses_latency():
        from autoprune.latency import fit_to_table, latency_table

        table = latency_table(
            problem.model, problem.graph, config.latency_batch, problem.device, cache_dir=config.problem.cache_dir
        )
        fit_to_table(problem.graph, table)
    if config.targets:
        from autoprune.search.multi import target_constraints

        targets = target_constraints(config, table)
        for target in targets:
            check_feasible(problem.graph, target)
        return targets[-1]
    budgets = config.budgets()
    return Constraints(
        flops=budgets.get("flops"), params=budgets.get("params"), latency=budgets.get("latency"), latency_table=table
    )


def _execute(
    config: SearchConfig,
    problem: Problem,
    constraints: Constraints,
    run: RunDir,
    state: dict[str, Any] | None,
    rows: list[list[str]],
    progress: bool,
) -> Outcome:
    done = int(state["evaluations"]) if state else 0
    best = (state["best_score"], state["best_keep"]) if state and state.get("best_keep") else None
    run.open_metrics(rows)
    budget = config.evaluations if config.targets else search_budget(config, problem)
    reserve = config.evaluations - budget
    saved = [*((state or {}).get("leaders") or []), *((state or {}).get("finalists") or [])]  # older runs: both
    leaders = Finalists.from_state(max(TOP, reserve), saved)
    tracker = Tracker(run, budget, done=done, best=best, progress=progress, leaders=leaders)
    tracker.elapsed_before = float(state["seconds"]) if state else 0.0
    tracker.images = int(state.get("images", 0)) if state else 0
    tracker.named = {k: np.asarray(v, dtype=np.int8) for k, v in ((state or {}).get("named") or {}).items()}
    if config.targets:
        return _execute_targets(config, problem, constraints, run, tracker, progress)
    try:
        if done < budget:
            if config.method == "rl":
                _search_rl(config, problem, constraints, run, tracker, state)
            else:
                _search_baseline(config, problem, constraints, tracker)
        run.save_state(tracker.state())
    finally:
        tracker.close()
        run.close()
    if tracker.best_keep is None:
        raise AutopruneError("the search made no evaluation")
    keep, score, confirmed = tracker.best_keep, tracker.best_score, {}
    finalists = Finalists(reserve, tracker.leaders.entries)
    if len(finalists.entries) >= 2:
        confirmation = confirm(finalists, problem.fresh_scorer, problem.evaluator.num_samples)
        confirmation.save(run.path / "finalists.csv")
        keep, confirmed = confirmation.keep, confirmation.metrics()
        tracker.images += confirmation.images
        tracker.count += len(confirmation.rows)
        if progress:
            chosen = confirmation.chosen
            stderr_log(
                f"re-scored the {len(confirmation.rows)} best masks on {problem.evaluator.num_samples} fresh "
                f"validation images: chose the search's #{chosen['rank']} (search {chosen['search']:.2%}, fresh "
                f"{chosen['fresh']:.2%}, both {chosen['pooled']:.2%}); finalists.csv"
            )
    if config.reconstruct:
        shortlist = choose(problem, constraints, candidates(keep, tracker.leaders, tracker.named), config.seed)
        if shortlist is not None:
            shortlist.save(run.path / "shortlist.csv")
            keep, confirmed = shortlist.keep, {**confirmed, **shortlist.metrics()}
            if progress:
                stderr_log(
                    f"re-fitted {len(shortlist.rows)} shortlisted plans: chose {shortlist.chosen['name']} "
                    f"({shortlist.chosen['val_acc_refit']:.2%} validation accuracy after the re-fit; the search's "
                    f"best {shortlist.rows[0]['val_acc_refit']:.2%}); shortlist.csv"
                )
    return finish(
        problem,
        constraints,
        keep,
        score,
        run.path,
        method=config.method,
        finetune_epochs=config.finetune_epochs,
        reconstruct=config.reconstruct,
        seed=config.seed,
        extra={
            "evaluations": tracker.count,
            "images_forwarded": tracker.images,
            "search_seconds": round(tracker.seconds, 2),
            **confirmed,
            "round_to": problem.graph.round_to,
            "grid_steps": problem.graph.grid_steps,
        },
        log=stderr_log if progress else quiet,
    )


def search_budget(config: SearchConfig, problem: Problem) -> int:
    """Evaluations the search itself may spend: the budget less what confirming its finalists takes (nothing
    where the validation split has no fresh images for them; see `autoprune.search.finalists`)."""
    reserve = reserved(config.evaluations, config.finalists)
    if reserve and problem.fresh_scorer is None:
        reserve = 0
    return config.evaluations - reserve


def _execute_targets(
    config: SearchConfig, problem: Problem, constraints: Constraints, run: RunDir, tracker: Tracker, progress: bool
) -> Outcome:
    """A multi-target search (`config.targets`): plans per target and the front (see `autoprune.search.multi`)."""
    from autoprune.front import Archive
    from autoprune.search.multi import finish_targets, search_targets, target_constraints

    targets = target_constraints(config, constraints.latency_table)
    archive = Archive()
    try:
        search_targets(config, problem, targets, tracker, archive)
        run.save_state(tracker.state())
    finally:
        tracker.close()
        run.close()
    extra = {
        "evaluations": tracker.count,
        "images_forwarded": tracker.images,
        "search_seconds": round(tracker.seconds, 2),
    }
    metrics = finish_targets(config, problem, targets, archive, run.path, extra, stderr_log if progress else quiet)
    return Outcome(plan=None, pruned=None, metrics=metrics)


def _search_baseline(config: SearchConfig, problem: Problem, constraints: Constraints, tracker: Tracker) -> None:
    from autoprune.agents.baselines import run_baseline

    run_baseline(
        config.method,
        problem.graph,
        constraints,
        _scorer_with_keep(problem, constraints, tracker),
        budget=tracker.total,
        seed=config.seed,
        model=problem.model,
        example_input=problem.example_input(),
        batches=problem.bundle.batches("train", 64, limit=256, device=problem.device),
        probe_fn=_prober(problem, constraints, tracker),
    )


def _scorer_with_keep(problem: Problem, constraints: Constraints, tracker: Tracker):
    """The score function for baselines, recording each scored (feasible) mask in the tracker."""

    def score(keep: np.ndarray) -> float:
        record = problem.evaluator.score(keep)
        tracker(
            {"score": record.score, "keep": keep, "violation": 0.0, "images": record.images, "full": record.full,
             **_ratios(constraints, problem, keep)}
        )  # fmt: skip
        return record.score

    score.prefetch = getattr(problem.evaluator, "prefetch", None)  # type: ignore[attr-defined]  # `Harness.prefetch`
    score.candidates = _candidates(problem)  # type: ignore[attr-defined]
    return score


def _prober(problem: Problem, constraints: Constraints, tracker: Tracker):
    """Scores masks outside the budget (sensitivity probes) cheaply, recording each as a probe."""

    def probe(keep: np.ndarray) -> float:
        record = problem.evaluator.probe(keep)
        tracker(
            {"score": record.score, "keep": keep, "probe": True, "images": record.images,
             "violation": constraints.violation(problem.graph, keep), **_ratios(constraints, problem, keep)}
        )  # fmt: skip
        return record.score

    probe.prefetch = getattr(problem.evaluator, "prefetch_probes", None)  # type: ignore[attr-defined]  # for a sweep
    return probe


def _candidates(problem: Problem) -> int:
    """Candidates the problem's scorer takes per pass (1 for score functions that score one at a time)."""
    return int(getattr(problem.evaluator, "candidates", 1))


def _ratios(constraints: Constraints, problem: Problem, keep: np.ndarray) -> dict[str, float]:
    """`Constraints.ratios` of `keep` under the metric names (`flops_ratio`, `params_ratio`)."""
    return {f"{name}_ratio": value for name, value in constraints.ratios(problem.graph, keep).items()}


def _search_rl(
    config: SearchConfig,
    problem: Problem,
    constraints: Constraints,
    run: RunDir,
    tracker: Tracker,
    state: dict[str, Any] | None,
) -> None:
    from stable_baselines3.common.callbacks import BaseCallback

    from autoprune.agents.baselines import group_importance
    from autoprune.agents.ppo import EvaluationCallback, make_ppo
    from autoprune.agents.warm_start import start_masks, warm_start
    from autoprune.envs.channel_prune import ChannelPruneEnv
    from autoprune.search.checkpoint import load_agent, save_agent

    sensitivity = _agent_sensitivity(config, problem, constraints, tracker, state)
    importance = group_importance(problem.model, problem.example_input(), problem.graph, "magnitude")
    starts = start_masks(problem.graph, constraints, importance, sensitivity)
    if state:  # the policy's weights (its cuts included) come from the checkpoint; any start builds it
        start = warm_start(problem.graph, starts["global-magnitude"], importance, sensitivity)
    else:  # score the cheap plans and start from the best (the reward competes against it)
        scorer = _scorer_with_keep(problem, constraints, tracker)
        affordable = list(starts)[: max(1, tracker.total - tracker.count)]
        if scorer.prefetch is not None:  # side by side where the scorer takes several candidates
            scorer.prefetch([starts[name] for name in affordable])
        scores = {name: scorer(starts[name]) for name in affordable}
        tracker.named = {name: starts[name] for name in affordable}
        best = max(scores, key=scores.get)
        start = warm_start(problem.graph, starts[best], importance, sensitivity)
    drops = None if sensitivity is None else sensitivity.at_half()
    if config.workers > 1 or config.address:
        from autoprune.distributed.vec_env import ray_search_env

        env = ray_search_env(config, constraints, start.importance, drops)  # actors with their own Problem
    else:

        def make_env() -> ChannelPruneEnv:
            return ChannelPruneEnv(
                problem.graph,
                problem.evaluator.score,
                constraints,
                steps_per_episode=config.steps_per_episode,
                tau=config.tau,
                priority=start.importance,
                sensitivity=drops,
            )

        if _candidates(problem) > 1:  # one env per candidate of a batch, all scored in one pass
            from autoprune.envs.batched import BatchedVecEnv

            env = BatchedVecEnv([make_env] * _candidates(problem), problem.evaluator.prefetch)
        else:
            env = make_env()
    n_envs = getattr(env, "num_envs", 1)
    n_steps = -(-config.rollout // n_envs)  # evaluations per update: `rollout`, rounded up to a multiple of n_envs
    try:
        ppo = make_ppo(
            env,
            seed=config.seed,
            n_steps=n_steps,
            batch_size=n_steps * n_envs,
            learning_rate=config.learning_rate,
            policy_kwargs={"init_keep_logit": 0.0, "group_terms": start.group_terms},
        )
        if state:  # a resumed run: the agent built as above, then its checkpoint's weights (data only) loaded
            env.set_state(state["env"])
            load_agent(ppo, run.path / "checkpoint")
        else:
            score = scores[best]
            env.set_state(
                {"best_score": score, "best_keep": start.keep.tolist(), "best_keep_score": score,
                 "recent_scores": [score]}
            )  # fmt: skip

        class Checkpoint(BaseCallback):
            """Saves agent, env and tracker state at each rollout start (i.e. right after a PPO update)."""

            def _on_rollout_start(self) -> None:
                save_agent(self.model, run.path / "checkpoint")
                run.save_state({**tracker.state(), "env": env.get_state(), "sensitivity": _as_dict(sensitivity)})

            def _on_step(self) -> bool:
                return True

        remaining = tracker.total - tracker.count
        if remaining > 0:
            ppo.learn(
                total_timesteps=remaining,
                callback=[Checkpoint(), EvaluationCallback(tracker)],
                reset_num_timesteps=False,
            )
    finally:
        env.close()


SWEEP_SHARE = 3
"""The agent measures group sensitivities only when its budget is at least this many times the probes."""


def _agent_sensitivity(
    config: SearchConfig, problem: Problem, constraints: Constraints, tracker: Tracker, state: dict[str, Any] | None
):
    """The sensitivity sweep the agent starts from: restored from the checkpoint of a resumed run, else measured
    (its probes count against the budget), or None when the budget is under `SWEEP_SHARE` times the probes."""
    from autoprune.agents.baselines.sensitivity import Sensitivity, measure_sensitivity, probes_needed

    graph = problem.graph
    if state is not None:
        saved = state.get("sensitivity")
        if saved is None:
            return None
        try:
            profile = Sensitivity(np.asarray(saved["widths"], dtype=float), np.asarray(saved["drops"], dtype=float))
        except (KeyError, TypeError, ValueError):
            profile = None
        if profile is None or profile.drops.shape != (len(graph.prunable_groups), len(profile.widths)):
            raise AutopruneError("the checkpoint's sensitivity profile does not fit this network; start a new run")
        return profile
    if config.evaluations < SWEEP_SHARE * (probes_needed(graph) + 1):
        return None
    probe = _prober(problem, constraints, tracker)
    return measure_sensitivity(graph, probe, probe(graph.full_mask()), prefetch=probe.prefetch)


def _as_dict(sensitivity) -> dict[str, list] | None:
    if sensitivity is None:
        return None
    return {"widths": sensitivity.widths.tolist(), "drops": sensitivity.drops.tolist()}
