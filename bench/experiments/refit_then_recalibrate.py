"""Scratch: validation accuracy of a run's named start plans after the shortlist's quick re-fit (256 images, the
unpruned BN statistics kept), and after BN recalibration on top of that re-fit, as `--score-with-reconstruction`
scored candidates before ebb0e78.

    AUTOPRUNE_CACHE=/tmp/ap/cache python bench/experiments/refit_then_recalibrate.py RUN_DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from autoprune.constraints import Constraints, fill
from autoprune.masking import recalibrate_bn
from autoprune.plan import Plan
from autoprune.problem import load_problem
from autoprune.reconstruct import refitted
from autoprune.recovery import calibration_batches
from autoprune.search.config import SearchConfig
from autoprune.training import evaluate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    state = json.loads((args.run / "checkpoint" / "state.json").read_text())
    config = SearchConfig.load(args.run / "config.json")
    problem = load_problem(config.problem)
    graph, model, bundle = problem.graph, problem.model.eval(), problem.bundle
    constraints = Constraints(flops=Plan.load(args.run / "plan.json").constraint["flops"])
    calibration = calibration_batches(bundle, 256, config.seed, torch.device("cpu"))
    val = bundle.batches("val", 500)
    print("| plan | val % after the re-fit | val % after the re-fit, then BN recalibration |")
    print("|---|---|---|")
    for name, keep in state.get("named", {}).items():
        plan = Plan.from_mask(model, graph, fill(graph, np.asarray(keep, dtype=np.int8), constraints), constraints)
        net, _ = refitted(model, plan.modules, calibration)
        fitted = evaluate(net, val)
        recalibrate_bn(net, calibration)
        print(f"| {name} | {fitted:.2%} | {evaluate(net, val):.2%} |", flush=True)


if __name__ == "__main__":
    main()
