"""After a search: prune the best mask for real, measure it, and write plan.json, pruned.pt and summary.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from autoprune.atomic import atomic_write_text
from autoprune.constraints import Constraints, fill
from autoprune.export import save_pruned
from autoprune.masking import recalibrate_bn
from autoprune.plan import Plan
from autoprune.problem import Problem
from autoprune.training import evaluate, train


def finalize(
    problem: Problem,
    constraints: Constraints,
    keep: np.ndarray,
    best_score: float,
    out: Path,
    method: str,
    finetune_epochs: float = 0.0,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the run's results and return its metrics (accuracies are fractions in [0, 1]).

    The plan is `keep` filled up to the budget (`autoprune.constraints.fill`): whatever method found the mask,
    budget it leaves unused is capacity lost after fine-tuning.
    """
    model, bundle, device = problem.model, problem.bundle, problem.device
    keep = fill(problem.graph, keep, constraints)
    val = bundle.batches("val", 500, device=device)
    test = bundle.batches("test", 500, device=device)
    metrics: dict[str, Any] = {
        "method": method,
        "search_val_acc_unpruned": problem.base_score,
        "search_val_acc_best": best_score,
        "val_acc_unpruned": evaluate(model, val, device),
        "test_acc_unpruned": evaluate(model, test, device),
    }
    plan = Plan.from_mask(model, problem.graph, keep, constraints)
    pruned = plan.apply(model)
    metrics["val_acc_pruned"] = evaluate(pruned, val, device)
    metrics["test_acc_pruned"] = evaluate(pruned, test, device)
    recal = bundle.loader("train", 128, shuffle=True, seed=seed, device=device)
    recalibrate_bn(pruned, [b for _, b in zip(range(20), recal, strict=False)])
    metrics["val_acc_recalibrated"] = evaluate(pruned, val, device)
    metrics["test_acc_recalibrated"] = evaluate(pruned, test, device)
    if finetune_epochs > 0:
        train(pruned, bundle, epochs=finetune_epochs, device=device, seed=seed)
        pruned.eval()
        metrics["val_acc_finetuned"] = evaluate(pruned, val, device)
        metrics["test_acc_finetuned"] = evaluate(pruned, test, device)
    metrics.update(extra or {})
    plan.metrics = metrics
    plan.save(out / "plan.json")
    save_pruned(out / "pruned.pt", pruned, plan, bundle.num_classes)
    atomic_write_text(out / "summary.md", summary(plan, problem))
    return metrics


def summary(plan: Plan, problem: Problem) -> str:
    """A short human-readable report: accuracy, FLOPs and params before/after, kept channels per layer."""
    m, a = plan.metrics, plan.achieved
    target = ", ".join(f"{k} ≤ {v:.0%}" for k, v in plan.constraint.items() if v is not None)
    lines = [
        f"# autoprune run: {plan.model_name} ({m['method']})",
        "",
        f"Constraint: {target}. Achieved FLOPs {a['flops_ratio']:.1%} "
        f"({a['flops'] / 1e6:.2f} M of {a['base_flops'] / 1e6:.2f} M MACs), "
        f"params {a['params_ratio']:.1%} ({a['params'] / 1e6:.3f} M of {a['base_params'] / 1e6:.3f} M).",
        "",
        "| stage | val acc | test acc |",
        "|---|---|---|",
        f"| unpruned | {m['val_acc_unpruned']:.2%} | {m['test_acc_unpruned']:.2%} |",
        f"| pruned | {m['val_acc_pruned']:.2%} | {m['test_acc_pruned']:.2%} |",
        f"| + BN recalibration | {m['val_acc_recalibrated']:.2%} | {m['test_acc_recalibrated']:.2%} |",
    ]
    if "test_acc_finetuned" in m:
        lines.append(f"| + fine-tune | {m['val_acc_finetuned']:.2%} | {m['test_acc_finetuned']:.2%} |")
    lines += ["", "Kept output channels per layer:", "", "| layer | kept | of |", "|---|---|---|"]
    for name, layer in problem.graph.layers.items():
        if layer.kind in ("conv", "dwconv", "linear") and layer.out_channels:
            kept = len(plan.modules.get(name, {}).get("out", range(layer.out_channels)))
            lines.append(f"| {name} | {kept} | {layer.out_channels} |")
    return "\n".join(lines) + "\n"
