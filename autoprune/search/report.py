"""After a search: prune the best mask for real, recover and measure it, and write plan.json, pruned.pt, summary.md."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from autoprune.atomic import atomic_write_text
from autoprune.constraints import Constraints, fill
from autoprune.export import save_pruned
from autoprune.latency_check import check_latency
from autoprune.plan import Plan
from autoprune.problem import Problem
from autoprune.recovery import Log, measure, recover, recovery_stages, stage_label, stderr_log


@dataclass
class Outcome:
    """What a finished search produced."""

    plan: Plan
    """The plan (its `metrics` are the run's)."""
    pruned: nn.Module
    """The pruned model after recovery (BN recalibration, fine-tuning where asked)."""
    metrics: dict[str, Any]
    """Accuracies (fractions in [0, 1]) per stage and split, and what the search cost."""


def finish(
    problem: Problem,
    constraints: Constraints,
    keep: np.ndarray,
    best_score: float,
    out: Path,
    method: str,
    finetune_epochs: float = 0.0,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
    log: Log = stderr_log,
    reconstruct: bool = True,
) -> Outcome:
    """Prune `keep` for real, recover and measure it, write the run's results to `out` and return them.

    The plan is `keep` filled up to the budget (`autoprune.constraints.fill`): whatever method found the mask,
    budget it leaves unused is capacity lost after fine-tuning. With `reconstruct`, the conv and linear layers
    are re-fitted by least squares after BN recalibration (`autoprune.recovery.reconstruction`).
    """
    start = time.perf_counter()
    model, bundle, device = problem.model, problem.bundle, problem.device
    keep = fill(problem.graph, keep, constraints)
    checked = {}
    if constraints.latency is not None and constraints.latency_table is not None:
        keep, check = check_latency(model, problem.graph, keep, constraints, device, log)
        checked = check.metrics()
    metrics: dict[str, Any] = {
        "method": method,
        "search_val_acc_unpruned": problem.base_score,
        "search_val_acc_best": best_score,
        **measure(model, bundle, "unpruned", device=device, log=log),
    }
    plan = Plan.from_mask(model, problem.graph, keep, constraints)
    pruned = plan.apply(model)
    rebuild = (model, plan.modules) if reconstruct else None
    stages = recovery_stages(finetune_epochs=finetune_epochs, seed=seed, reconstruct_from=rebuild)
    metrics.update(recover(pruned, bundle, stages=stages, device=device, log=log))
    metrics["finetune_epochs"] = finetune_epochs
    metrics.update(checked)
    metrics.update(extra or {})
    metrics["finalize_seconds"] = round(time.perf_counter() - start, 2)
    plan.metrics = metrics
    log(f"writing plan.json, pruned.pt and summary.md to {out}")
    plan.save(out / "plan.json")
    save_pruned(out / "pruned.pt", pruned, plan, bundle.num_classes)
    atomic_write_text(out / "summary.md", summary(plan, problem))
    return Outcome(plan, pruned, metrics)


VAL_CAVEAT = (
    "The validation split is carved from the dataset's training data: weights trained on the whole training split "
    "(as the shared CIFAR-10 weights were) have seen it, so validation accuracies can be optimistic; the test split "
    "is the one the search never looks at."
)


def summary(plan: Plan, problem: Problem) -> str:
    """A short human-readable report: accuracy, FLOPs and params before/after, cost, kept channels per layer."""
    m, a = plan.metrics, plan.achieved
    target = ", ".join(f"{k} ≤ {v:.0%}" for k, v in plan.constraint.items() if v is not None)
    epochs = float(m.get("finetune_epochs") or 0)
    lines = [
        f"# autoprune run: {plan.model_name} ({m['method']})",
        "",
        f"Constraint: {target}. Achieved FLOPs {a['flops_ratio']:.1%} "
        f"({a['flops'] / 1e6:.2f} M of {a['base_flops'] / 1e6:.2f} M MACs), "
        f"params {a['params_ratio']:.1%} ({a['params'] / 1e6:.3f} M of {a['base_params'] / 1e6:.3f} M)"
        + (
            f", latency {a['latency_ratio']:.1%} ({a['latency_ms']:.2f} ms of {a['base_latency_ms']:.2f} ms at "
            f"batch {a['latency_batch']}, estimated by the latency table of the search's device"
            + (
                f"; {m['latency_measured_ratio']:.1%} measured end to end, paired with the unpruned model"
                + (f", after {m['latency_tightened']} tightening(s) of the budget" if m["latency_tightened"] else "")
                if "latency_measured_ratio" in m
                else ""
            )
            + ")."
            if "latency_ratio" in a
            else "."
        ),
        "",
        f"Search: {cost(m)}. Fine-tuned: "
        + (f"{epochs:g} epochs." if epochs > 0 else "no.")
        + (f" Reconstruction: {m['reconstruction']}." if "reconstruction" in m else "")
        + (
            f" Plan: the search's #{m['finalist_chosen_rank']} of {m['finalists']} finalists re-scored on fresh "
            f"validation images (search {m['search_val_acc_chosen']:.2%}, fresh {m['fresh_val_acc_chosen']:.2%}, "
            f"both {m['pooled_val_acc_chosen']:.2%}; finalists.csv)."
            if "finalists" in m
            else ""
        )
        + (
            f" Plan: {m['shortlist_chosen']}, the best of {m['shortlist']} shortlisted masks by validation accuracy "
            f"after a quick re-fit ({m['shortlist_val_acc_chosen']:.2%}; the search's plan "
            f"{m['shortlist_val_acc_search_best']:.2%}; shortlist.csv)."
            if "shortlist" in m
            else ""
        ),
        "",
        "| stage | val acc | test acc |",
        "|---|---|---|",
    ]
    for stage in stages(m):
        cells = [_pct(m.get(f"{split}_acc_{stage}")) for split in ("val", "test")]
        lines.append(f"| {stage_label(stage)} | {cells[0]} | {cells[1]} |")
    lines += ["", VAL_CAVEAT]
    lines += ["", "Kept output channels per layer:", "", "| layer | kept | of |", "|---|---|---|"]
    for name, kept, total in kept_per_layer(plan, problem.graph):
        lines.append(f"| {name} | {kept} | {total} |")
    return "\n".join(lines) + "\n"


def cost(metrics: dict[str, Any]) -> str:
    """What a search spent, in words: evaluations, images forwarded, seconds."""
    parts = []
    if "evaluations" in metrics:
        parts.append(f"{metrics['evaluations']} evaluations")
    if metrics.get("images_forwarded"):
        parts.append(f"{metrics['images_forwarded']:,} images forwarded")
    if "search_seconds" in metrics:
        searching = f"{float(metrics['search_seconds']):.1f} s searching"
        if "shortlist_seconds" in metrics:
            searching += f" ({float(metrics['shortlist_seconds']):.1f} s of it re-fitting the shortlist)"
        parts.append(searching)
    if "finalize_seconds" in metrics:
        parts.append(f"{float(metrics['finalize_seconds']):.1f} s pruning, recovering and measuring")
    return ", ".join(parts) or "cost not recorded"


def stages(metrics: dict[str, Any]) -> list[str]:
    """The accuracy stages in `metrics` (`<split>_acc_<stage>` keys, `search_` ones aside), in recorded order."""
    found: list[str] = []
    for key in metrics:
        for split in ("val", "test"):
            prefix = f"{split}_acc_"
            if key.startswith(prefix) and key[len(prefix) :] not in found:
                found.append(key[len(prefix) :])
    return found


def kept_per_layer(plan: Plan, graph) -> list[tuple[str, int, int]]:
    """`(layer, kept, original)` output channels of every conv and linear layer of `graph`."""
    rows = []
    for name, layer in graph.layers.items():
        if layer.kind in ("conv", "dwconv", "linear") and layer.out_channels:
            kept = len(plan.modules.get(name, {}).get("out", range(layer.out_channels)))
            rows.append((name, kept, layer.out_channels))
    return rows


def _pct(value: Any) -> str:
    return "–" if value is None else f"{float(value):.2%}"
