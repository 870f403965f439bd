"""Trace a model with torch-pruning and extract coupled channel groups as plain data.

Torch-pruning's `DependencyGraph` finds which channels must be removed together (residual adds, concats,
depthwise convs, flatten into a linear layer). This module turns its groups into picklable records that name
modules by their qualified names, so nothing downstream holds torch-pruning objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.graph.depgraph import DependencyGraph
from autoprune.nn import CUSTOM_PRUNERS

OUT, IN = "out", "in"


@dataclass
class GroupMember:
    """Channels of one module that belong to a group.

    Attributes:
        module: qualified module name, or "" for a functional op (add, concat...) inside the group.
        side: "out" when the group prunes the module's output channels, "in" for its input channels.
        root_idx: for each touched channel, the index of the group decision it belongs to.
        channel_idx: the module's own channel index, aligned with `root_idx`.
        node: torch-pruning node id, used to map functional ops' tensors to channels during tracing.
    """

    module: str
    side: str
    root_idx: np.ndarray
    channel_idx: np.ndarray
    node: int = -1


@dataclass
class TracedGroup:
    """One set of coupled channels: `size` decisions, each removing a channel in every member."""

    root: str
    size: int
    members: list[GroupMember] = field(default_factory=list)


@dataclass
class Trace:
    """What tracing found: groups, layer-to-layer data flow, and per-module input tensor producers."""

    groups: list[TracedGroup]
    node_names: list[str]
    """Torch-pruning node ids to names: a module's qualified name, or `op:<id>:<kind>` for a functional op."""
    flow_edges: list[tuple[int, int]]
    """Direct data flow between nodes (node ids)."""
    input_producer: dict[str, int]
    """For every leaf module, the torch-pruning node id that produced its first input (-1: the model input)."""
    order: list[str]
    """Modules in the order the forward pass first reached them."""
    parameters: dict[str, int] = field(default_factory=dict)
    """Unwrapped parameters in some group (name -> the dimension holding their channels)."""
    split_sizes: dict[int, list[int]] = field(default_factory=dict)
    """Node id -> part sizes of every `torch.split`/`torch.chunk` along channels."""
    opaque: dict[int, str] = field(default_factory=dict)
    """Node id -> reason, for reshapes that move channels between axes: groups reaching them are frozen."""


def _is_prunable_fn(dg: DependencyGraph, fn, side: str) -> bool:
    return dg.is_out_channel_pruning_fn(fn) if side == OUT else dg.is_in_channel_pruning_fn(fn)


def trace_groups(model: nn.Module, example_input: torch.Tensor) -> Trace:
    """Build torch-pruning's dependency graph for `model` and return its channel groups as plain data."""
    names: dict[object, str] = {m: n for n, m in model.named_modules()}
    # Parameters used outside their module's own forward (a layer scale, a class token): torch-pruning prunes
    # them as "unwrapped parameters", along their last non-singleton dimension.
    names.update({p: n for n, p in model.named_parameters()})
    order: list[str] = []
    input_grad_fn: dict[str, object] = {}

    def record(module: nn.Module, inputs: tuple) -> None:
        name = names[module]
        if name not in input_grad_fn:
            order.append(name)
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            input_grad_fn[name] = first.grad_fn if first is not None else None

    # Torch-pruning prunes a MultiheadAttention as one module (its out_proj has no forward of its own).
    whole = (nn.MultiheadAttention, *CUSTOM_PRUNERS)
    leaves = [m for m in model.modules() if not list(m.children()) or isinstance(m, whole)]
    hooks = [m.register_forward_pre_hook(record) for m in leaves]
    try:
        with torch.enable_grad():
            dg = DependencyGraph().build_dependency(
                model, example_inputs=example_input, customized_pruners=dict(CUSTOM_PRUNERS)
            )
            tp_groups = list(dg.get_all_groups(ignored_layers=[], root_module_types=(nn.Conv2d, nn.Conv1d, nn.Linear)))
    except Exception as exc:  # torch-pruning raises many types on untraceable models
        text = str(exc).strip()
        summary = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
        raise AutopruneError(f"cannot trace the model with torch-pruning: {summary}") from exc
    finally:
        for h in hooks:
            h.remove()

    node_ids: dict[object, int] = {}
    node_names: list[str] = []
    grad_fn_node: dict[object, int] = {}
    for module, node in dg.module2node.items():
        node_ids[node] = len(node_ids)
        kind = type(module).__name__.strip("_").removesuffix("Op").lower()
        node_names.append(names.get(module, f"op:{node_ids[node]}:{kind}"))
        if node.grad_fn is not None:
            grad_fn_node[node.grad_fn] = node_ids[node]

    groups = []
    for group in tp_groups:
        groups.append(_convert_group(dg, group, names, node_ids))

    flow = {(node_ids[n], node_ids[o]) for n in node_ids for o in n.outputs if o in node_ids}

    producer = {}
    for name, grad_fn in input_grad_fn.items():
        producer[name] = grad_fn_node.get(grad_fn, -1) if grad_fn is not None else -1
    parameters = {
        names[node.module]: int(node.pruning_dim)
        for node in dg.module2node.values()
        if isinstance(node.module, nn.Parameter) and node.module in names and node.pruning_dim is not None
    }
    splits = {
        node_ids[node]: list(node.module.split_sizes)
        for node in dg.module2node.values()
        if isinstance(node.module, tp.ops._SplitOp) and node.module.split_sizes
    }
    return Trace(
        groups=groups,
        node_names=node_names,
        flow_edges=sorted(flow),
        input_producer=producer,
        order=order,
        parameters=parameters,
        split_sizes=splits,
        opaque={node_ids[node]: reason for node, reason in dg.opaque.items()},
    )


def _convert_group(dg, group, names, node_ids) -> TracedGroup:
    root_dep = group[0].dep
    root_module = root_dep.target.module
    size = len(group[0].idxs)
    traced = TracedGroup(root=names.get(root_module, ""), size=size)
    for item in group.items:
        dep, idxs, root_idxs = item.dep, item.idxs, item.root_idxs
        node = dep.target
        side = OUT if dg.is_out_channel_pruning_fn(dep.handler) else IN
        if side == IN and not _is_prunable_fn(dg, dep.handler, IN):
            continue
        keep = [k for k, r in enumerate(root_idxs) if r is not None]
        traced.members.append(
            GroupMember(
                module=names.get(node.module, ""),
                side=side,
                root_idx=np.asarray([root_idxs[k] for k in keep], dtype=np.int64),
                channel_idx=np.asarray([idxs[k] for k in keep], dtype=np.int64),
                node=node_ids[node],
            )
        )
    return traced
