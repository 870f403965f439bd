"""Torch-pruning's dependency graph, with reshapes read from their real shapes.

Torch-pruning 1.6 treats every `view`/`reshape` as a flatten between a channel axis and the spatial positions
behind it, guessing both channel counts by walking the graph. Other reshapes break that guess: a channel shuffle
(`view` to `(N, g, C/g, H, W)`, `transpose`, `view` back) made it divide by zero, and the attention of Swin V2 (a
reshape per window behind a small MLP) made it multiply index lists until the process ran out of memory. Here the
forward pass of the trace records the shape every op returns, and each reshape is classified before torch-pruning
maps indices through it:

- it keeps the channel axis whole (`(N, C, H, W) -> (N, C, H*W)`, a window partition of `(B, H, W, C)` into
  `(B, H/w, w, W/w, w, C)`): channel `i` stays channel `i`, an element-wise op;
- it merges the channel axis with the axes behind it (a flatten before a linear layer): left to torch-pruning,
  which maps channel `i` to its block of positions;
- anything else moves channels between axes (a channel shuffle, a split into heads): *opaque*. Groups stop there
  (no index crosses it) and `build_channel_graph` freezes every group that reaches it, with the reason.

A layer whose weight is used functionally (`F.linear(x, self.qkv.weight, bias)`, as Swin's attention does) never
runs its own forward, so torch-pruning cannot see it and couples its input and output channels as if it were an
element-wise op. During the trace such a call runs the module itself, so that its node is the layer; the trace's
forward is only read for its structure, so the module's own bias standing in for the caller's is harmless.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode
from torch_pruning.dependency import shape_infer


class _TraceRecorder(TorchFunctionMode):
    """Records the shape of every tensor an op returns (by its grad_fn); routes `F.linear(x, layer.weight, ...)`
    through `layer` when the layer is not already running."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.shapes: dict[object, tuple[int, ...]] = {}
        self.linears = {id(m.weight): m for m in model.modules() if isinstance(m, nn.Linear)}
        self.running: set[int] = set()
        self.hooks = []
        for m in self.linears.values():
            self.hooks.append(m.register_forward_pre_hook(lambda mod, _: self.running.add(id(mod))))
            self.hooks.append(m.register_forward_hook(lambda mod, _i, _o: self.running.discard(id(mod))))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        layer = self.linears.get(id(weight)) if func is F.linear else None
        if layer is not None and id(layer) not in self.running:
            out = layer(args[0] if args else kwargs["input"])
        else:
            out = func(*args, **kwargs)
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                self.shapes[t.grad_fn] = tuple(t.shape)
        return out

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def _stop(idxs: list) -> list:
    """An index mapping through which no channel passes."""
    return []


def classify_reshape(in_shape: tuple[int, ...], out_shape: tuple[int, ...], channels: int) -> str:
    """How a reshape moves `channels` channels: "keep", "flatten" or "opaque" (see the module docstring).

    The channel axis is an input axis of that size; it is kept when the axes before it hold as many elements
    as some leading output axes and the next output axis has the same size, and flattened when that next output
    axis is exactly it merged with the axes following it.
    """
    if [s for s in in_shape if s != 1] == [s for s in out_shape if s != 1]:
        return "keep"  # only singleton axes added or removed
    for axis, size in enumerate(in_shape):
        if size != channels:
            continue
        before = math.prod(in_shape[:axis])
        for out_axis in range(len(out_shape)):
            if math.prod(out_shape[:out_axis]) != before:
                continue
            merged = size
            for following in (1, *in_shape[axis + 1 :]):
                merged *= following
                if out_shape[out_axis] == merged:
                    return "keep" if merged == size else "flatten"
    return "opaque"


class DependencyGraph(tp.DependencyGraph):
    """`tp.DependencyGraph` whose reshapes are classified by their recorded shapes (module docstring).

    Attributes (after `build_dependency`):
        opaque: node -> why channels cannot pass it, for every opaque reshape.
    """

    def build_dependency(self, model: nn.Module, example_inputs, **kwargs) -> DependencyGraph:
        self.opaque: dict[tp.dependency.Node, str] = {}
        recorder = _TraceRecorder(model)
        self._shapes = recorder.shapes
        try:
            with recorder:
                super().build_dependency(model, example_inputs=example_inputs, **kwargs)
        finally:
            recorder.remove()
            self._shapes = {}
        return self

    def _build_dependency(self, module2node) -> None:
        super()._build_dependency(module2node)
        shape_infer.init_shape_information(self)  # split sizes, which channel inference reads
        for node in module2node.values():
            if node.type != tp.ops.OPTYPE.RESHAPE:
                continue
            in_shape = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
            out_shape = self._shapes.get(node.grad_fn)
            if in_shape is None or out_shape is None:
                continue  # not recorded (inside a compound op): torch-pruning's own mapping
            in_shape = tuple(int(s) for s in in_shape)
            channels = None
            for source in node.inputs:
                channels = shape_infer.infer_out_channels_recursively(self, source, [0])
                if channels is not None:
                    break
            kind = classify_reshape(in_shape, out_shape, channels or 0)
            if kind == "flatten":
                continue  # torch-pruning's own mapping
            node.type = tp.ops.OPTYPE.ELEMENTWISE  # torch-pruning maps no index through it any more
            if kind == "opaque":
                for dep in node.dependencies:
                    dep.index_mapping = [_stop, _stop]  # torch-pruning may fill one slot for a split or concat
                self.opaque[node] = (
                    f"its channels reach a reshape {in_shape} -> {out_shape} that moves them between axes "
                    "(a channel shuffle or a split into heads)"
                )
