"""Scratch: kept channels per prunable group of every mask a finished run shortlisted (its search's plan, leaders
and named start plans from checkpoint/state.json, each filled to the budget as the shortlist fills it), to see what
the masks that re-fit well have in common.

    AUTOPRUNE_CACHE=/tmp/ap/cache python bench/experiments/plan_widths.py RUN_DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from autoprune.constraints import Constraints, fill
from autoprune.plan import Plan
from autoprune.problem import load_problem
from autoprune.search.config import SearchConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    state = json.loads((args.run / "checkpoint" / "state.json").read_text())
    graph = load_problem(SearchConfig.load(args.run / "config.json").problem).graph
    constraints = Constraints(flops=Plan.load(args.run / "plan.json").constraint["flops"])
    masks = {"search": state["best_keep"]}
    masks |= {f"#{i}": e["keep"] for i, e in enumerate(state.get("leaders", []), start=1)}
    masks |= state.get("named", {})
    filled = {name: fill(graph, np.asarray(keep, dtype=np.int8), constraints) for name, keep in masks.items()}
    print("| group | channels | " + " | ".join(masks) + " |")
    print("|---|---|" + "---|" * len(masks))
    for group in (g for g in graph.groups if g.prunable):
        kept = [int(k[group.offset : group.offset + group.size].sum()) for k in filled.values()]
        print(f"| {group.root} | {group.size} | " + " | ".join(map(str, kept)) + " |")


if __name__ == "__main__":
    main()
