"""Make an eval-mode network faster to run without changing what it computes (up to float rounding).

Two rewrites, each measured on the CPU where searches score candidates (`bench/results/inference.md`):

* BatchNorm folded into the convolution or linear layer that feeds it alone (`torch.fx`'s `fuse`), so a
  validation pass skips the normalisation. A network that `torch.fx` cannot trace keeps its BatchNorms.
* On a CPU, channels-last weights for networks with 2-d convolutions: oneDNN's convolutions then run in NHWC.

On pruned ResNet-56s at 38-50% of the FLOPs (one CPU thread), a validation pass takes 1.26× less time with
channels-last alone and 1.38× with both, rewrite included, with identical predictions.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

_UNTRACEABLE: set[type] = set()  # model classes torch.fx failed on: not tried again


def folded(model: nn.Module) -> nn.Module:
    """`model` (eval mode, modified in place) with each BatchNorm folded into the layer before it, as a
    `torch.fx.GraphModule`; `model` itself where torch.fx cannot trace it or a module is called more than once
    (folding would change its other calls too)."""
    if type(model) in _UNTRACEABLE or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception:  # torch.fx raises many kinds on data-dependent control flow; then run the model as it is
        _UNTRACEABLE.add(type(model))
        return model
    called = [node.target for node in traced.graph.nodes if node.op == "call_module"]
    if len(called) != len(set(called)):
        return model
    return fuse(traced, inplace=True, no_trace=True)


def for_inference(model: nn.Module, inplace: bool = False) -> nn.Module:
    """An eval-mode network computing what `model` computes in eval mode, faster (see the module docstring).

    Args:
        model: the network; left as it is unless `inplace`.
        inplace: rewrite `model` itself (cheaper; for a copy nobody else holds).

    Returns:
        The rewritten network, in eval mode and without gradients; use it for inference only.
    """
    net = (model if inplace else copy.deepcopy(model)).eval()
    return fast_layout(folded(net)).requires_grad_(False)


def fast_layout(model: nn.Module) -> nn.Module:
    """`model` (modified in place) with channels-last weights where that pays: on a CPU, with 2-d convolutions.
    Training-mode passes gain too (BN recalibration of a pruned ResNet-56: about 1.2×)."""
    first = next((p for p in model.parameters()), None)
    if first is not None and first.device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    return model


__all__ = ["fast_layout", "folded", "for_inference"]
