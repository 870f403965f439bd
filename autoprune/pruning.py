"""Physical channel removal with torch-pruning's per-layer pruning functions."""

from __future__ import annotations

import copy

import numpy as np
import torch_pruning as tp
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.graph.channel_graph import ChannelGraph, module_channels
from autoprune.nn import CUSTOM_PRUNERS


def pruner_for(module: nn.Module) -> tp.pruner.function.BasePruningFunc:
    """Torch-pruning's pruning function for `module` (autoprune's own layers included)."""
    pruner = CUSTOM_PRUNERS.get(type(module)) or tp.pruner.function.PrunerBox.get(tp.ops.module2type(module))
    if pruner is None:
        raise AutopruneError(f"no pruning function for module type {type(module).__name__}")
    return pruner


def is_depthwise(module: nn.Module) -> bool:
    return tp.ops.module2type(module) == tp.ops.OPTYPE.DEPTHWISE_CONV


def apply_kept_channels(model: nn.Module, kept: dict[str, dict[str, list[int]]]) -> nn.Module:
    """Remove, in place, every channel not listed in `kept` (`{module: {"out": [...], "in": [...]}}`).

    A depthwise convolution's input and output channels are one axis: only its "out" list is applied.
    """
    modules = dict(model.named_modules())
    for name, sides in kept.items():
        if name not in modules:
            raise AutopruneError(f"the model has no module named {name!r}")
        module = modules[name]
        pruner = pruner_for(module)
        n_in, n_out = module_channels(module)
        order = ("out",) if is_depthwise(module) else ("out", "in")
        for side in order:
            if side not in sides:
                continue
            count = n_out if side == "out" else n_in
            keep = np.asarray(sides[side], dtype=np.int64)
            if keep.size and (keep.min() < 0 or keep.max() >= count or len(np.unique(keep)) != keep.size):
                raise AutopruneError(
                    f"kept {side} channels of {name} must be distinct indices in [0, {count}); got out-of-range "
                    "or repeated values"
                )
            if keep.size == 0:
                raise AutopruneError(f"{name} would keep no {side} channels")
            drop = np.setdiff1d(np.arange(count), keep).tolist()
            if drop:
                fn = pruner.prune_out_channels if side == "out" else pruner.prune_in_channels
                fn(module, drop)
    return model


def prune_model(model: nn.Module, graph: ChannelGraph, keep: np.ndarray, inplace: bool = False) -> nn.Module:
    """A physically smaller copy of `model` (or `model` itself when `inplace`) with `keep`'s channels only."""
    target = model if inplace else copy.deepcopy(model)
    return apply_kept_channels(target, graph.kept_channels(keep))
