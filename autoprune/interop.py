"""Plans in other tools' terms: a Torch-Pruning `pruning_history`, and a per-module width table (CSV).

Torch-Pruning replays a history with `DependencyGraph.load_pruning_history` (or a pruner's) on the unpruned
model, pruning each recorded group in turn. `torch_pruning_history` records one by pruning a copy of the model
with Torch-Pruning's own groups, then checks that the result computes what `Plan.apply` gives.
"""

from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from autoprune.atomic import atomic_write, atomic_write_text
from autoprune.errors import AutopruneError
from autoprune.graph.channel_graph import module_channels
from autoprune.nn import CUSTOM_PRUNERS
from autoprune.plan import Plan
from autoprune.pruning import is_depthwise, pruner_for

History = list[list]
"""`[[module name, prunes output channels?, [removed indices]], ...]`, Torch-Pruning's `pruning_history`."""

TOLERANCE = 1e-4
"""Largest logit difference allowed between Torch-Pruning's replay and `Plan.apply`."""


def torch_pruning_history(plan: Plan, model: nn.Module) -> History:
    """The `pruning_history` that makes Torch-Pruning prune `model` (unpruned, as the plan was made for) like `plan`.

    Replay it with `tp.DependencyGraph().build_dependency(model, example_inputs,
    customized_pruners=autoprune.nn.CUSTOM_PRUNERS).load_pruning_history(history)`; the custom pruners matter
    only for autoprune's own layers (the CIFAR ResNets' `PadShortcut`).

    Raises:
        AutopruneError: `model` is not the plan's, or Torch-Pruning's groups cannot express the plan.
    """
    plan.check_model(model)
    net = copy.deepcopy(model).cpu().eval()
    example = torch.zeros(1, *plan.input_shape)
    dg = tp.DependencyGraph().build_dependency(
        net, example_inputs=example, customized_pruners=dict(CUSTOM_PRUNERS), verbose=False
    )
    modules = dict(net.named_modules())
    original = {name: module_channels(modules[name]) for name in plan.modules}
    for name, sides in plan.modules.items():
        module = modules[name]
        for side in ("out",) if is_depthwise(module) else ("out", "in"):
            if side not in sides:
                continue
            count = original[name][0 if side == "in" else 1]
            now = module_channels(module)[0 if side == "in" else 1]
            drop = np.setdiff1d(np.arange(count), np.asarray(sides[side], dtype=np.int64)).tolist()
            if now == count - len(drop):
                continue  # pruned already, with a group met earlier
            if now != count or not drop:
                raise AutopruneError(f"torch-pruning cannot express this plan at {name} ({side} channels)")
            pruner = pruner_for(module)
            fn = pruner.prune_out_channels if side == "out" else pruner.prune_in_channels
            dg.get_pruning_group(module, fn, drop).prune()
    history = [[str(n), bool(out), [int(i) for i in idxs]] for n, out, idxs in dg.pruning_history()]
    _check_same(plan, model, net)
    return history


def _check_same(plan: Plan, model: nn.Module, replayed: nn.Module) -> None:
    """Raise AutopruneError unless Torch-Pruning's pruned copy computes what `plan.apply(model)` does."""
    x = torch.randn(4, *plan.input_shape, generator=torch.Generator().manual_seed(0))
    ours = plan.apply(copy.deepcopy(model).cpu()).eval()
    with torch.no_grad():
        gap = (ours(x) - replayed.eval()(x)).abs().max().item()
    if not gap <= TOLERANCE:
        raise AutopruneError(
            f"torch-pruning's groups prune this model differently from the plan (logits differ by {gap:.3g}); "
            "the plan cannot be exported as a pruning history"
        )


def save_history(history: History, path: str | Path) -> Path:
    """Write a history: JSON for a `.json` path, else `torch.save` (loads with `torch.load(weights_only=True)`)."""
    if str(path).endswith(".json"):
        return atomic_write_text(path, json.dumps(history))
    return atomic_write(path, lambda f: torch.save(history, f))


WIDTH_COLUMNS = ("module", "type", "in_channels", "kept_in", "out_channels", "kept_out")


def width_table(plan: Plan, model: nn.Module) -> list[dict[str, object]]:
    """One row per module with channels (convs, linears, norms): its channels before and after the plan."""
    plan.check_model(model)
    rows = []
    for name, module in model.named_modules():
        n_in, n_out = module_channels(module)
        if not name or not (n_in or n_out):
            continue
        sides = plan.modules.get(name, {})
        kept_out = len(sides.get("out", range(n_out)))
        kept_in = kept_out if is_depthwise(module) else len(sides.get("in", range(n_in)))
        rows.append(
            {"module": name, "type": type(module).__name__, "in_channels": n_in, "kept_in": kept_in,
             "out_channels": n_out, "kept_out": kept_out}
        )  # fmt: skip
    return rows


def save_width_table(rows: list[dict[str, object]], path: str | Path) -> Path:
    """Write `width_table` rows as CSV (LF line endings)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, WIDTH_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, text.getvalue())
