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
runs its own forward, so torch-pruning cannot see it: it coupled the layer's input and output channels as if it
were an element-wise op (Swin: a concat of unknown width; Swin V2: index lists that grew until memory ran out) and
its counter left the layer's FLOPs out. During the trace and the counting such a call runs the module itself
(`LayersAsModules`), so that its node is the layer and its cost is counted.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode
from torch_pruning.dependency import shape_infer


class LayersAsModules(TorchFunctionMode):
    """While active, `F.linear(x, layer.weight, ...)` called inside a module that owns `layer` (an `nn.Linear`
    not running already) runs `layer(x)`, so that forward hooks (torch-pruning's tracing and FLOPs counter) see it.

    The owner is looked up at call time among the running modules, so copies of a model (torch-pruning's counter
    counts a deep copy) are covered. The layer's own bias stands in for the caller's (Swin V2 passes a copy with
    the key bias zeroed): use it for passes read for their structure or cost, not for outputs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.running: list[nn.Module] = []
        self.hooks: list = []

    def __enter__(self):
        self.hooks = [
            nn.modules.module.register_module_forward_pre_hook(lambda mod, _: self.running.append(mod)),
            nn.modules.module.register_module_forward_hook(lambda mod, _i, _o: self._leave(mod)),
        ]
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()
        self.hooks, self.running = [], []
        return super().__exit__(*exc)

    def _leave(self, module: nn.Module) -> None:
        if self.running and self.running[-1] is module:
            self.running.pop()

    def _owner(self, weight) -> nn.Linear | None:
        if not self.running or not isinstance(weight, nn.Parameter):
            return None
        if any(isinstance(m, nn.Linear) and m.weight is weight for m in self.running):
            return None  # the layer's own forward
        for m in self.running[-1].modules():
            if isinstance(m, nn.Linear) and m.weight is weight:
                return m
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        layer = self._owner(args[1] if len(args) > 1 else kwargs.get("weight")) if func is F.linear else None
        if layer is not None:
            return layer(args[0] if args else kwargs["input"])
        return func(*args, **kwargs)


class _TraceRecorder(LayersAsModules):
    """`LayersAsModules` that also records the shape of every tensor an op returns, by its grad_fn."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: dict[object, tuple[int, ...]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs)
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                self.shapes[t.grad_fn] = tuple(t.shape)
        return out


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
        recorder = _TraceRecorder()
        self._shapes = recorder.shapes
        try:
            with recorder:
                super().build_dependency(model, example_inputs=example_inputs, **kwargs)
        finally:
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
