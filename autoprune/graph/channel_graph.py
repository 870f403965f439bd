"""The channel graph: layers, coupled channel groups, one keep/prune decision per group channel, and costs.

A *decision* is one channel of a prunable group; keeping or pruning it keeps or removes that channel in every
member of the group (e.g. the same channel of all convs writing to one residual stream). A keep-mask is a 0/1
vector with one entry per decision. See `docs/graph-schema.md` for the full schema.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from autoprune.flops import BilinearCost
from autoprune.graph.tracing import IN, OUT, GroupMember, Trace

LAYER_KINDS = ("conv", "dwconv", "gconv", "linear", "bn", "norm", "act", "pool", "shortcut", "other")
"""Layer kinds, in the order of the one-hot node feature."""


@dataclass
class Layer:
    """A module of the network as the graph sees it.

    Attributes:
        name: qualified module name.
        kind: one of `LAYER_KINDS`.
        depth: position of the module in the forward pass (0 = first reached).
        in_channels: input channels (0 where the module has none of its own).
        out_channels: output channels.
        kernel: kernel size (1 for non-convolutions).
        stride: stride (1 for non-convolutions).
        groups: convolution groups, or attention heads (1 otherwise): the equal blocks its channels come in.
        bias: whether the module adds a bias.
        flops: MACs of the unpruned module for one example input (torch-pruning's counter).
        params: parameters of the unpruned module.
        out_hw: output spatial size (h, w); (1, 1) for vectors.
        channel_dim: the dimension of the output holding the channels: 1 (NCHW), -1 for channels-last tensors
            (a linear layer or LayerNorm on (N, H, W, C) or (N, tokens, C)); for an unwrapped parameter (a layer
            scale, a class token: `kind` "other", no forward of its own), the parameter's channel dimension.
    """

    name: str
    kind: str
    depth: int
    in_channels: int
    out_channels: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    bias: bool = False
    flops: float = 0.0
    params: float = 0.0
    out_hw: tuple[int, int] = (1, 1)
    channel_dim: int = 1


@dataclass
class ChannelGroup:
    """Coupled channels that are kept or removed together.

    Attributes:
        index: position in `ChannelGraph.groups`.
        root: the module torch-pruning grouped from.
        size: number of channels (decisions) in the group.
        members: which channels of which modules each decision removes.
        prunable: whether the search may prune this group.
        reason: why not, when `prunable` is False.
        offset: index of the group's first decision in a keep-mask (-1 when not prunable).
        blocks: equal channel blocks the group was folded into (grouped convs, chunks, attention heads; see
            `autoprune.graph.blocks`): torch-pruning's group has `size * blocks` channels, and decision `j` is its
            root channels `j + k * size`.
    """

    index: int
    root: str
    size: int
    members: list[GroupMember]
    prunable: bool = True
    reason: str = ""
    offset: int = -1
    blocks: int = 1

    @property
    def modules(self) -> list[str]:
        """Named modules the group touches, in member order, without repeats."""
        return list(dict.fromkeys(m.module for m in self.members if m.module))


@dataclass
class ChannelGraph:
    """A network as channel decisions, with what each one costs and touches.

    Build it with `build_channel_graph`; it holds no reference to the model and pickles cheaply.
    """

    model_name: str
    input_shape: tuple[int, ...]
    fingerprint: str
    layers: dict[str, Layer]
    groups: list[ChannelGroup]
    trace: Trace
    flops_cost: BilinearCost
    params_cost: BilinearCost
    channel_stats: np.ndarray
    """Per decision: weight L1, weight L2, BN |gamma|, mean |activation| (each relative to its group's mean)."""
    min_channels: int = 1
    round_to: int = 1
    grid_steps: int = 0
    """When set, each group's width is also a multiple of `size // grid_steps` channels: a latency search sets it
    to the latency table's grid, so that it proposes only widths the table timed (see `autoprune.latency`)."""
    base_flops: float = field(init=False)
    base_params: float = field(init=False)

    def __post_init__(self) -> None:
        full = self.full_mask()
        self.base_flops = self.flops_cost(full)
        self.base_params = self.params_cost(full)

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def num_decisions(self) -> int:
        return sum(g.size for g in self.prunable_groups)

    @property
    def decision_group(self) -> np.ndarray:
        """Group index of every decision."""
        return np.concatenate([np.full(g.size, g.index) for g in self.prunable_groups] or [np.zeros(0, int)])

    def full_mask(self) -> np.ndarray:
        """The keep-everything mask."""
        return np.ones(self.num_decisions, dtype=np.int8)

    def flops(self, keep: np.ndarray | None = None) -> float:
        """MACs of the network under `keep` (all kept when None), for one example input."""
        return self.flops_cost(self.full_mask() if keep is None else keep)

    def params(self, keep: np.ndarray | None = None) -> float:
        """Parameters of the network under `keep`."""
        return self.params_cost(self.full_mask() if keep is None else keep)

    def check_mask(self, keep: np.ndarray) -> np.ndarray:
        """Return `keep` as an int8 0/1 array, or raise ValueError if its shape or values are wrong."""
        keep = np.asarray(keep)
        if keep.shape != (self.num_decisions,):
            raise ValueError(f"mask has shape {keep.shape}, expected ({self.num_decisions},)")
        if not np.isin(keep, (0, 1)).all():
            raise ValueError("mask entries must be 0 or 1")
        return keep.astype(np.int8)

    def width_step(self, size: int) -> int:
        """Kept channels of a group of `size` are a multiple of this, or the whole group."""
        return max(self.round_to, size // self.grid_steps if self.grid_steps else 1, 1)

    def width_floor(self, size: int) -> int:
        """The fewest channels a group of `size` may keep: `min_channels`, rounded up to the group's step."""
        step = self.width_step(size)
        return min(size, -(-self.min_channels // step) * step)

    def legalize(self, keep: np.ndarray, priority: np.ndarray | None = None) -> np.ndarray:
        """Raise each group to at least `min_channels` kept, rounded up to a multiple of its `width_step`.

        Channels are restored in order of `priority` (highest first; default: weight L1).
        """
        keep = self.check_mask(keep).copy()
        priority = self.channel_stats[:, 0] if priority is None else np.asarray(priority)
        for g in self.prunable_groups:
            part = keep[g.offset : g.offset + g.size]
            need = max(self.min_channels, int(part.sum()))
            step = self.width_step(g.size)
            need = min(g.size, -(-need // step) * step)
            missing = need - int(part.sum())
            if missing > 0:
                pruned = np.flatnonzero(part == 0)
                order = pruned[np.argsort(-priority[g.offset + pruned], kind="stable")]
                part[order[:missing]] = 1
        return keep

    def pruned_channels(self, keep: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
        """Channel indices each (module, side) loses under `keep`; side is "out" or "in"."""
        keep = self.check_mask(keep)
        pruned: dict[tuple[str, str], list[np.ndarray]] = {}
        for g in self.prunable_groups:
            dropped = keep[g.offset : g.offset + g.size] == 0
            if not dropped.any():
                continue
            for m in g.members:
                if not m.module:
                    continue
                sel = dropped[m.root_idx]
                if sel.any():
                    pruned.setdefault((m.module, m.side), []).append(m.channel_idx[sel])
        return {k: np.unique(np.concatenate(v)) for k, v in pruned.items()}

    def kept_channels(self, keep: np.ndarray) -> dict[str, dict[str, list[int]]]:
        """Kept channel indices per module: `{module: {"out": [...], "in": [...]}}`, only for changed modules."""
        result: dict[str, dict[str, list[int]]] = {}
        for (module, side), idxs in self.pruned_channels(keep).items():
            layer = self.layers[module]
            count = layer.out_channels if side == OUT else layer.in_channels
            kept = np.setdiff1d(np.arange(count), idxs)
            result.setdefault(module, {})[side] = kept.tolist()
        return result

    def producers(self, group: ChannelGroup) -> int:
        """Weight layers (conv, grouped conv, linear) whose output channels the group prunes: 2 or more means
        their outputs are summed (a residual add), so the group is a stream shared by all of them."""
        kinds = ("conv", "gconv", "linear")
        return len(
            {m.module for m in group.members if m.side == OUT and m.module and self.layers[m.module].kind in kinds}
        )

    def crosses_merge(self, group: ChannelGroup) -> bool:
        """Whether the group's channels merge with other layers' channels: summed by a residual add (several
        producers) or re-indexed on the way into a consumer, as a concat does."""
        if self.producers(group) > 1:
            return True
        return any(m.side == IN and not np.array_equal(m.channel_idx, m.root_idx) for m in group.members)

    def prunable_share(self) -> float:
        """Share of the unpruned FLOPs spent in modules some prunable decision narrows (input or output)."""
        cost = self.flops_cost
        i, o = cost.kept(self.full_mask())
        per_module = cost.a * i * o + cost.b * o
        touched = np.union1d(cost.in_slot, cost.out_slot)
        return float(per_module[touched].sum() / self.base_flops) if self.base_flops else 0.0

    def frozen_flops(self) -> dict[int, float]:
        """For every frozen group, the share of the unpruned FLOPs in the layers it would narrow if prunable."""
        if not self.base_flops:
            return {}
        return {
            g.index: sum(self.layers[n].flops for n in g.modules if n in self.layers) / self.base_flops
            for g in self.groups
            if not g.prunable
        }

    def summary(self) -> str:
        """A human-readable overview: groups, decisions, costs, and what cannot be pruned and why."""
        lines = [
            f"model {self.model_name}  input {tuple(self.input_shape)}",
            f"layers {len(self.layers)}  groups {len(self.groups)} ({len(self.prunable_groups)} prunable)",
            f"prunable channels (decisions) {self.num_decisions}",
            f"MACs {self.base_flops / 1e6:.2f} M  params {self.base_params / 1e6:.3f} M",
        ]
        lines.append(f"prunable share of MACs {self.prunable_share():.1%}")
        blocked = sorted(self.frozen_flops().items(), key=lambda kv: -kv[1])
        if blocked:
            lines.append("not pruned (share of MACs in the layers each group would narrow):")
            for index, share in blocked:
                g = self.groups[index]
                lines.append(f"  {g.root or 'group ' + str(g.index)} ({g.size} ch, {share:.1%} MACs): {g.reason}")
        return "\n".join(lines)


def layer_kind(module: nn.Module) -> str:
    """The `LAYER_KINDS` entry of a module."""
    from autoprune.nn import PadShortcut

    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups == 1:
            return "conv"
        if module.groups == module.in_channels == module.out_channels:
            return "dwconv"
        return "gconv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.MultiheadAttention):
        return "other"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "bn"
    if isinstance(module, nn.LayerNorm | nn.GroupNorm | nn.modules.instancenorm._InstanceNorm):
        return "norm"
    if isinstance(module, PadShortcut):
        return "shortcut"
    if (
        isinstance(module, nn.modules.pooling._MaxPoolNd | nn.modules.pooling._AvgPoolNd)
        or "Pool" in type(module).__name__
    ):
        return "pool"
    if type(module).__module__.startswith("torch.nn.modules.activation"):
        return "act"
    return "other"


def fingerprint(model: nn.Module) -> tuple[str, list[list]]:
    """A hash of the model's structure (module names, types, parameter shapes) and the structure itself."""
    entries = [
        [name, type(m).__name__, [list(p.shape) for p in m.parameters(recurse=False)]]
        for name, m in model.named_modules()
        if name and list(m.parameters(recurse=False))
    ]
    digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]
    return digest, entries


def module_channels(module: nn.Module) -> tuple[int, int]:
    """(in, out) channels of a module with weights or a channel map; (0, 0) if it has none."""
    for attr_in, attr_out in (("in_channels", "out_channels"), ("in_features", "out_features")):
        if hasattr(module, attr_out):
            return int(getattr(module, attr_in)), int(getattr(module, attr_out))
    if hasattr(module, "num_features"):
        return int(module.num_features), int(module.num_features)
    if isinstance(module, nn.GroupNorm):
        return module.num_channels, module.num_channels
    if isinstance(module, nn.LayerNorm):
        n = int(np.prod(module.normalized_shape))
        return n, n
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim, module.embed_dim
    return 0, 0


def members_by_node(graph_groups: list[ChannelGroup]) -> dict[int, list[tuple[ChannelGroup, GroupMember]]]:
    """Output-side members of prunable groups keyed by torch-pruning node id."""
    found: dict[int, list[tuple[ChannelGroup, GroupMember]]] = {}
    for g in graph_groups:
        if g.prunable:
            for m in g.members:
                if m.side == OUT:
                    found.setdefault(m.node, []).append((g, m))
    return found


__all__ = ["IN", "LAYER_KINDS", "OUT", "ChannelGraph", "ChannelGroup", "Layer", "fingerprint", "layer_kind"]
