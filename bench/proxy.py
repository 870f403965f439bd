"""Which cheap score predicts a pruned network's test accuracy after fine-tuning?

ResNet-20 on CIFAR-10 at 50% FLOPs. Candidates: torch-pruning's global magnitude and Taylor rankings and
`--samples` masks drawn from the agent's warm-start policy around the first (projected onto the budget, not
filled). For each: the search score (validation accuracy after BN recalibration on 4 batches, what every method
ranks candidates by), accuracy and loss on 2000 validation images after BN recalibration on 20 batches, the same
after 0.03 epochs of fine-tuning ("quick"), the FLOPs and parameter ratios, and test accuracy after `--finetune`
epochs. Prints one JSON line per candidate, then each quantity's Spearman correlation with that test accuracy.

    python bench/proxy.py --weights ../shared/models/resnet20-cifar10jpeg.pt \
        --data-dir ../shared/data/cifar10-jpeg.tar.gz --finetune 0.5 --samples 12
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from autoprune.agents.baselines import drop_lowest, group_importance
from autoprune.agents.warm_start import ranking_warm_start
from autoprune.constraints import Constraints, project
from autoprune.masking import recalibrate_bn
from autoprune.plan import Plan
from autoprune.problem import ProblemConfig, load_problem
from autoprune.training import evaluate, train

QUANTITIES = ["score", "val2k_acc", "val2k_loss", "quick_acc", "quick_loss", "flops", "params"]


def loss_and_accuracy(model: torch.nn.Module, batches) -> tuple[float, float]:
    model.eval()
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in batches:
            out = model(x)
            total += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            n += len(y)
    return total / n, correct / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--finetune", type=float, default=0.5, help="epochs of the fine-tune that is predicted")
    parser.add_argument("--samples", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(2)
    problem = load_problem(
        ProblemConfig(
            model="resnet20", weights=args.weights, dataset="cifar10", data_dir=args.data_dir, eval_samples=500,
            device="cpu",
        )
    )  # fmt: skip
    graph, budget = problem.graph, Constraints(flops=0.5)
    start = ranking_warm_start(problem.model, problem.example_input(), graph, budget)
    taylor = group_importance(
        problem.model, problem.example_input(), graph, "taylor", batches=problem.bundle.batches("train", 64, limit=256)
    )
    candidates = {"gm": start.keep, "gt": drop_lowest(graph, budget, taylor)}
    rng = np.random.default_rng(0)
    probs = 1 / (1 + np.exp(-np.asarray(start.logits)))
    for i in range(args.samples):
        sample = (rng.random(len(probs)) < probs).astype(np.int8)
        candidates[f"s{i}"] = project(graph, sample, budget, start.importance)
    val2k = problem.bundle.batches("val", 500, limit=2000)
    test = problem.bundle.batches("test", 500)
    rows = []
    for name, keep in candidates.items():
        began = time.time()
        score = problem.score(keep)
        pruned = Plan.from_mask(problem.model, graph, keep, budget).apply(problem.model)
        recal = problem.bundle.loader("train", 128, shuffle=True, seed=0)
        recalibrate_bn(pruned, [b for _, b in zip(range(20), recal, strict=False)])
        val_loss, val_acc = loss_and_accuracy(pruned, val2k)
        quick = copy.deepcopy(pruned)
        train(quick, problem.bundle, epochs=0.03, seed=0)
        quick_loss, quick_acc = loss_and_accuracy(quick, val2k)
        train(pruned, problem.bundle, epochs=args.finetune, seed=0)
        pruned.eval()
        ratios = budget.ratios(graph, keep)
        row = {
            "name": name, "score": score, "val2k_acc": val_acc, "val2k_loss": val_loss, "quick_acc": quick_acc,
            "quick_loss": quick_loss, "test_ft": evaluate(pruned, test), "flops": ratios["flops"],
            "params": ratios["params"], "s": time.time() - began,
        }  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    for key in QUANTITIES:
        sign = -1 if "loss" in key else 1  # a lower loss should predict a higher accuracy
        rho = spearmanr([sign * r[key] for r in rows], [r["test_ft"] for r in rows])[0]
        print(f"{key} spearman vs test_ft: {rho:.3f}")


if __name__ == "__main__":
    main()
