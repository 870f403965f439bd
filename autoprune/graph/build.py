"""`build_channel_graph`: from a model and an example input to a `ChannelGraph`."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.flops import BilinearCost
from autoprune.graph.blocks import fold_channel_blocks
from autoprune.graph.channel_graph import (
    ChannelGraph,
    ChannelGroup,
    Layer,
    fingerprint,
    layer_kind,
    members_by_node,
    module_channels,
)
from autoprune.graph.depgraph import LayersAsModules
from autoprune.graph.tracing import IN, OUT, trace_groups

WEIGHTED = ("conv", "dwconv", "gconv", "linear")


@torch.no_grad()
def build_channel_graph(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    model_name: str = "custom",
    ignore: Iterable[str] = (),
    calibration: torch.Tensor | None = None,
    min_channels: int = 1,
    round_to: int = 1,
    validate: bool = True,
) -> ChannelGraph:
    """Convert `model` into a channel graph of prunable decisions.

    Args:
        model: the network (put in eval mode; not modified).
        example_input: one input batch (batch size 1 is enough) on the model's device.
        model_name: a name recorded in plans.
        ignore: module names whose output channels must not be pruned (the output layer is always kept).
        calibration: a real input batch for activation statistics (default: `example_input`).
        min_channels: fewest channels a group may keep.
        round_to: kept channels per group are rounded up to a multiple of this.
        validate: check every group by pruning it for real and comparing with the masked network; groups
            whose pruning changes the outputs are frozen and reported (see `graph.validate`).
    """
    model.eval()
    ignore = set(ignore)
    names = dict(model.named_modules())
    unknown = sorted(ignore - set(names))
    if unknown:
        raise AutopruneError(f"--ignore names no module of the model: {', '.join(unknown)}")
    if min_channels < 1 or round_to < 1:
        raise AutopruneError("min_channels and round_to must be at least 1")

    trace = trace_groups(model, example_input)
    attention = {n: m for n, m in names.items() if isinstance(m, nn.MultiheadAttention)}
    with LayersAsModules():  # layers used through `F.linear` counted too
        shapes = _io_shapes(model, example_input)
        total_flops, total_params, layer_flops, layer_params = tp.utils.count_ops_and_params(
            model, example_input, layer_wise=True
        )
    layers = _layers(model, trace, shapes, layer_flops, layer_params)
    groups = _groups(trace, layers, ignore | _output_layers(trace, layers), min_channels)

    def assemble() -> ChannelGraph:
        offset = 0
        for g in groups:
            g.offset = offset if g.prunable else -1
            offset += g.size if g.prunable else 0
        flops_cost, params_cost = _costs(
            layers, groups, trace, shapes, float(total_flops), float(total_params), attention
        )
        digest, _ = fingerprint(model)
        return ChannelGraph(
            model_name=model_name,
            input_shape=tuple(example_input.shape[1:]),
            fingerprint=digest,
            layers=layers,
            groups=groups,
            trace=trace,
            flops_cost=flops_cost,
            params_cost=params_cost,
            channel_stats=_channel_stats(
                model, layers, groups, calibration if calibration is not None else example_input
            ),
            min_channels=min_channels,
            round_to=round_to,
        )

    graph = assemble()
    if validate:
        from autoprune.graph.validate import find_broken_groups

        broken = find_broken_groups(model, graph, example_input)
        if broken:
            for index, reason in broken.items():
                groups[index].prunable = False
                groups[index].reason = reason
            graph = assemble()
    return graph


def _io_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Input and output shapes of every leaf module on one forward pass."""
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []
    for name, m in model.named_modules():

        def record(mod, inputs, output, name=name):
            if name not in shapes and inputs and isinstance(inputs[0], torch.Tensor):
                out = output if isinstance(output, torch.Tensor) else inputs[0]
                shapes[name] = (tuple(inputs[0].shape), tuple(out.shape))

        hooks.append(m.register_forward_hook(record))
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _layers(model, trace, shapes, layer_flops, layer_params) -> dict[str, Layer]:
    modules = dict(model.named_modules())
    counts = _member_channels(trace)
    layers = {}
    for depth, name in enumerate(trace.order):
        m = modules[name]
        cin, cout = module_channels(m)
        out_shape = shapes.get(name, ((), ()))[1]
        dim = 1
        if isinstance(m, nn.Linear) or type(m) is nn.LayerNorm:
            dim = -1
        elif isinstance(m, nn.LayerNorm) and len(out_shape) >= 2:  # a subclass, e.g. LayerNorm2d on NCHW
            dim = 1 if out_shape[1] == cout else -1
        elif cout == 0 and len(out_shape) >= 2:
            # No channels of its own (an activation, a permute): the channels torch-pruning couples through it,
            # on whichever end of the output they sit (channels-last after a linear layer or a permute).
            producer = trace.input_producer.get(name, -1)
            before = layers.get(trace.node_names[producer]) if producer >= 0 else None
            dim = before.channel_dim if before is not None and before.channel_dim in (1, -1) else 1
            count = counts.get(name, out_shape[dim])
            if out_shape[dim] != count:
                dim = -dim
            cin = cout = out_shape[dim]
        kernel = getattr(m, "kernel_size", 1)
        stride = getattr(m, "stride", 1)
        spatial = out_shape[1:-1] if dim == -1 else out_shape[2:]
        layers[name] = Layer(
            name=name,
            kind=layer_kind(m),
            depth=depth,
            in_channels=cin,
            out_channels=cout,
            kernel=int(np.prod(kernel)) if isinstance(kernel, tuple) else int(kernel),
            stride=int(stride[0]) if isinstance(stride, tuple) else int(stride),
            groups=_groups_of(m),
            bias=getattr(m, "bias", None) is not None,
            flops=float(layer_flops.get(m) or 0),
            params=float(layer_params.get(m) or 0),
            out_hw=tuple(spatial[:2]) if len(spatial) >= 2 else (1, 1),
            channel_dim=dim,
        )
    params = dict(model.named_parameters())
    for name, dim in trace.parameters.items():
        shape = params[name].shape
        layers[name] = Layer(
            name=name,
            kind="other",
            depth=len(layers),
            in_channels=int(shape[dim]),
            out_channels=int(shape[dim]),
            params=float(params[name].numel()),
            channel_dim=dim,
        )
    return layers


def _groups_of(module: nn.Module) -> int:
    """Convolution groups, or attention heads: the equal blocks a layer's channels come in."""
    if isinstance(module, nn.MultiheadAttention):
        return int(module.num_heads)
    return int(module.groups) if isinstance(module, nn.modules.conv._ConvNd) else 1


def _attention_coefficients(module: nn.MultiheadAttention, in_shape) -> tuple[float, float, float, float]:
    """FLOPs `a·D² + b·D` and params `a·D² + b·D` of self-attention with embedding width D, as torch-pruning counts.

    Torch-pruning's counter charges, per sample, `Lq·D` (scaling) + `(Lq + 2·Lk)·D²` (projections) + the in-projection
    bias + `2·Lq·Lk·D + h·Lq·Lk` (scores, softmax, weighted sum) + `Lq·D·(D + 1)` (output projection); `h·Lq·Lk`
    does not depend on D.
    """
    batch, length = (in_shape[0], in_shape[1]) if module.batch_first else (in_shape[1], in_shape[0])
    bias = module.in_proj_bias is not None
    fa = batch * 4 * length
    fb = batch * (2 * length + (3 * length if bias else 0) + 2 * length * length)
    pb = (3 if bias else 0) + (1 if module.out_proj.bias is not None else 0)
    return float(fa), float(fb), 4.0, float(pb)


def _member_channels(trace) -> dict[str, int]:
    """Output channels of every module that groups touch, from the largest channel index they name."""
    counts: dict[str, int] = {}
    for traced in trace.groups:
        for m in traced.members:
            if m.module and m.side == OUT and len(m.channel_idx):
                counts[m.module] = max(counts.get(m.module, 0), int(m.channel_idx.max()) + 1)
    return counts


def _output_layers(trace, layers) -> set[str]:
    """Weighted layers from which no other weighted layer is reachable: they produce the model output."""
    succ: dict[int, list[int]] = {}
    for a, b in trace.flow_edges:
        succ.setdefault(a, []).append(b)
    weighted = {i for i, n in enumerate(trace.node_names) if n in layers and layers[n].kind in WEIGHTED}
    outputs = set()
    for start in weighted:
        stack, seen, reaches = list(succ.get(start, [])), set(), False
        while stack and not reaches:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            reaches = n in weighted
            stack.extend(succ.get(n, []))
        if not reaches:
            outputs.add(trace.node_names[start])
    return outputs


def _groups(trace, layers, ignore: set[str], min_channels: int) -> list[ChannelGroup]:
    groups = []
    for traced in trace.groups:
        size, members, unfit = fold_channel_blocks(traced, layers, trace.split_sizes, trace.node_names)
        g = ChannelGroup(index=len(groups), root=traced.root, size=size, members=members, blocks=traced.size // size)
        outs = [m.module for m in g.members if m.side == OUT and m.module]
        ignored = [n for n in outs if n in ignore]
        opaque = [trace.opaque[m.node] for m in g.members if m.node in trace.opaque]
        if ignored:
            g.prunable, g.reason = False, f"ignored layer {ignored[0]} (output layer or --ignore)"
        elif opaque:
            g.prunable, g.reason = False, opaque[0]
        elif unfit:
            g.prunable, g.reason = False, unfit
        elif g.size <= min_channels:
            g.prunable, g.reason = False, f"only {g.size} channel(s), min_channels={min_channels}"
        groups.append(g)
    return groups


def _costs(layers, groups, trace, shapes, total_flops, total_params, attention) -> tuple[BilinearCost, BilinearCost]:
    """Per-module bilinear FLOPs and parameter models (see `autoprune.flops`); `attention`: name -> the
    MultiheadAttention modules (self-attention: input and output width are the one embedding width)."""
    by_node = members_by_node(groups)
    names = list(layers)
    slot = {n: i for i, n in enumerate(names)}
    out_members: dict[str, list] = {}
    in_members: dict[str, list] = {}
    for g in groups:
        if not g.prunable:
            continue
        for m in g.members:
            if m.module in slot:
                (out_members if m.side == OUT else in_members).setdefault(m.module, []).append((g, m))
    count = len(names)
    in_const, out_const = np.zeros(count), np.zeros(count)
    fa, fb, pa, pb = np.zeros(count), np.zeros(count), np.zeros(count), np.zeros(count)
    incid = {IN: ([], []), OUT: ([], [])}

    def add(side: str, s: int, entries, channels: int, const: np.ndarray) -> None:
        covered = 0
        for g, m in entries:
            incid[side][0].append(np.full(len(m.root_idx), s))
            incid[side][1].append(g.offset + m.root_idx)
            covered += len(m.root_idx)
        const[s] = channels - covered

    for name in names:
        layer, s = layers[name], slot[name]
        if layer.flops == 0 and layer.params == 0:
            continue
        own_out = out_members.get(name, [])
        if not own_out and layer.kind not in WEIGHTED:
            # A module without its own channels (ReLU, pooling): its cost follows the tensor it reads.
            producer = trace.input_producer.get(name, -1)
            own_out = by_node.get(producer, [])
        add(OUT, s, own_out, layer.out_channels, out_const)
        in_shape, out_shape = shapes.get(name, ((), ()))
        if name in attention and len(in_shape) == 3:
            add(IN, s, own_out, layer.in_channels, in_const)
            fa[s], fb[s], pa[s], pb[s] = _attention_coefficients(attention[name], in_shape)
            continue
        add(IN, s, in_members.get(name, []), layer.in_channels, in_const)
        if layer.kind in ("conv", "gconv", "linear"):
            if layer.kind == "linear":
                positions = int(np.prod(in_shape)) // max(1, layer.in_channels)
            else:
                positions = int(np.prod(out_shape)) // max(1, layer.out_channels)
            fa[s], pa[s] = layer.kernel * positions / layer.groups, layer.kernel / layer.groups
            fb[s] = (1 if layer.kind == "linear" else positions) if layer.bias else 0
            pb[s] = 1.0 if layer.bias else 0.0
        elif layer.kind == "dwconv":
            positions = int(np.prod(out_shape)) // max(1, layer.out_channels)
            fb[s] = layer.kernel * positions + (positions if layer.bias else 0)
            pb[s] = layer.kernel + (1 if layer.bias else 0)
        elif layer.out_channels:
            fb[s] = layer.flops / layer.out_channels
            pb[s] = layer.params / layer.out_channels

    def cost(a, b, total) -> BilinearCost:
        in_slot, in_dec = (np.concatenate(x).astype(np.int64) if x else np.zeros(0, np.int64) for x in incid[IN])
        out_slot, out_dec = (np.concatenate(x).astype(np.int64) if x else np.zeros(0, np.int64) for x in incid[OUT])
        model = BilinearCost(in_const, out_const, in_slot, in_dec, out_slot, out_dec, a, b, 0.0)
        full = np.ones(sum(g.size for g in groups if g.prunable))
        model.constant = total - model(full)
        return model

    return cost(fa, fb, total_flops), cost(pa, pb, total_params)


def _channel_stats(
    model: nn.Module, layers: dict[str, Layer], groups: list[ChannelGroup], calibration: torch.Tensor
) -> np.ndarray:
    """Per decision: weight L1, weight L2, BN |gamma|, mean |activation|, each divided by its group's mean."""
    modules = dict(model.named_modules())
    acts: dict[str, torch.Tensor] = {}
    wanted = {m.module for g in groups if g.prunable for m in g.members if m.side == OUT and m.module}
    hooks = []
    for name in wanted:
        if name not in modules:  # an unwrapped parameter: no forward of its own
            continue

        def record(mod, inputs, output, name=name):
            if isinstance(output, torch.Tensor) and output.dim() >= 2:
                axis = 1 if layers[name].channel_dim == 1 else output.dim() - 1
                dims = [d for d in range(output.dim()) if d != axis]
                acts[name] = output.abs().mean(dim=dims).float().cpu()

        hooks.append(modules[name].register_forward_hook(record))
    try:
        model(calibration)
    finally:
        for h in hooks:
            h.remove()

    rows = []
    for g in groups:
        if not g.prunable:
            continue
        stats = np.zeros((g.size, 4))
        counts = np.zeros((g.size, 4))
        for m in g.members:
            if m.side != OUT or not m.module:
                continue
            mod = modules.get(m.module)
            per_channel = []
            weight = getattr(mod, "weight", None)
            if isinstance(mod, nn.modules.conv._ConvNd | nn.Linear) and weight is not None:
                w = weight.detach().float().cpu().flatten(1)
                per_channel += [(0, w.abs().mean(1)), (1, w.pow(2).mean(1).sqrt())]
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and weight is not None:
                per_channel.append((2, weight.detach().float().cpu().abs()))
            if m.module in acts:
                per_channel.append((3, acts[m.module]))
            for col, values in per_channel:
                v = values.numpy()[m.channel_idx]
                stats[:, col] += np.bincount(m.root_idx, weights=v, minlength=g.size)
                counts[:, col] += np.bincount(m.root_idx, minlength=g.size)
        stats = np.where(counts > 0, stats / np.maximum(counts, 1), 1.0)
        stats /= np.maximum(stats.mean(0, keepdims=True), 1e-12)
        rows.append(stats)
    return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 4), np.float32)
