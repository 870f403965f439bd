"""Scratch: test accuracy after the final re-fit of every mask a finished run shortlisted (its search's plan and
leaders from checkpoint/state.json), to see what the shortlist's choice gained or lost on the test split.

    AUTOPRUNE_CACHE=/tmp/ap/cache python bench/experiments/shortlist_test.py RUN_DIR [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from autoprune.constraints import Constraints, fill
from autoprune.plan import Plan
from autoprune.problem import load_problem
from autoprune.reconstruct import refitted
from autoprune.recovery import calibration_batches
from autoprune.search.config import SearchConfig
from autoprune.training import evaluate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--only", nargs="*", default=None, help="names to measure (default all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    plan = Plan.load(args.run / "plan.json")
    state = json.loads((args.run / "checkpoint" / "state.json").read_text())
    config = SearchConfig.load(args.run / "config.json")
    problem = load_problem(config.problem)
    bundle, model, graph = problem.bundle, problem.model.eval(), problem.graph
    constraints = Constraints(flops=plan.constraint["flops"])
    masks = {"search's plan": state["best_keep"]}
    masks |= {f"search #{i}": e["keep"] for i, e in enumerate(state.get("leaders", []), start=1)}
    masks |= state.get("named", {})
    calibration = calibration_batches(bundle, 1024, config.seed, torch.device("cpu"))  # as the final re-fit
    test = bundle.batches("test", 500)
    for name, keep in masks.items():
        if args.only and name not in args.only:
            continue
        keep = fill(graph, np.asarray(keep, dtype=np.int8), constraints)
        p = Plan.from_mask(model, graph, keep, constraints)
        net, _ = refitted(model, p.modules, calibration)
        accuracy = evaluate(net, test)
        print(f"{args.run.name} | {name} | {p.achieved['flops_ratio']:.4f} | test +refit {accuracy:.2%}", flush=True)


if __name__ == "__main__":
    main()
