"""Physical channel removal with torch-pruning's per-layer pruning functions."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.graph.channel_graph import ChannelGraph, module_channels
from autoprune.nn import CUSTOM_PRUNERS


class SortedLayerNormPruner(tp.pruner.function.LayernormPruner):
    """Torch-pruning 1.6's LayerNorm pruner, with the kept channels in order.

    Its `keep_idxs.sort()` on a tensor sorts a copy, so a pruned LayerNorm kept its weight and bias in set-iteration
    order: permuted whenever the kept indices do not come out of the set sorted (e.g. every fourth channel kept).
    """

    def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        keep = sorted(set(range(layer.normalized_shape[-1])) - {int(i) for i in idxs})
        dim = len(layer.normalized_shape) - 1
        if layer.elementwise_affine:
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, dim)
            if layer.bias is not None:
                layer.bias = self._prune_parameter_and_grad(layer.bias, keep, dim)
        layer.normalized_shape = (*layer.normalized_shape[:-1], len(keep))
        return layer

    prune_in_channels = prune_out_channels


def pruner_for(module: nn.Module) -> tp.pruner.function.BasePruningFunc:
    """Torch-pruning's pruning function for `module` (autoprune's own layers included)."""
    if isinstance(module, nn.LayerNorm):
        return _LAYER_NORM
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
    params = dict(model.named_parameters())
    for name, sides in kept.items():
        if name not in modules and name in params and list(sides) == ["out"]:
            _prune_parameter(model, name, params[name], sides["out"])
            continue
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


def parameter_channel_dim(param: torch.Tensor) -> int | None:
    """The dimension torch-pruning prunes in an unwrapped parameter: its last one longer than 1."""
    dims = [d for d, n in enumerate(param.shape) if n > 1]
    return dims[-1] if dims else None


def _prune_parameter(model: nn.Module, name: str, param: nn.Parameter, keep: list[int]) -> None:
    """Keep only the channels `keep` of an unwrapped parameter (a layer scale, a class token)."""
    dim = parameter_channel_dim(param)
    index = np.asarray(keep, dtype=np.int64)
    if dim is None or not index.size or index.min() < 0 or index.max() >= param.shape[dim]:
        raise AutopruneError(f"kept channels of parameter {name} do not fit its shape {tuple(param.shape)}")
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    pruned = torch.index_select(param.data, dim, torch.as_tensor(index, device=param.device))
    setattr(owner, attr, nn.Parameter(pruned, requires_grad=param.requires_grad))


_LAYER_NORM = SortedLayerNormPruner()
