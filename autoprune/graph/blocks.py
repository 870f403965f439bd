"""Channel blocks: groups whose channels must be removed evenly from equal blocks (grouped convs, chunks, heads).

A convolution with `groups=G` (not depthwise) computes output block `b` from input block `b` alone; after pruning it
still has `G` groups, so every block must keep the same number of channels, and on the input side the same
positions (torch-pruning's `ConvPruner` keeps the first `in / G` indices of what is left). `torch.chunk` into
`G` parts splits whatever it receives into equal parts, so the same holds for the tensor it splits. A
`MultiheadAttention` reshapes its embedding into `num_heads` equal heads: pruning its width keeps the heads and
narrows each of them the same way.

Torch-pruning's pruners handle this with channel groups (`in_channel_groups`, `out_channel_groups`): a group
whose layers have `G` channel groups is ranked on `size / G` positions, and removing position `j` removes channel
`j + k * size / G` for every `k`. This module does the same to a traced group: its decisions become the
`size / G` positions, each removing one channel from every block, and the fold is checked against every blocked
member (a grouped convolution reached through a concat may not line up); a group that does not fit is frozen
with the reason.
"""

from __future__ import annotations

import math

import numpy as np

from autoprune.graph.tracing import IN, GroupMember, TracedGroup


def fold_channel_blocks(
    traced: TracedGroup, layers: dict, split_sizes: dict[int, list[int]], node_names: list[str]
) -> tuple[int, list[GroupMember], str]:
    """The group's decisions after folding its equal blocks: (size, members, reason it cannot be pruned or "").

    The number of blocks is `traced.size // size` when the reason is empty.

    Args:
        traced: the group as torch-pruning found it.
        layers: the graph's layers by name (`Layer.kind` "gconv" and `Layer.groups` mark grouped convolutions).
        split_sizes: part sizes of every channel split, by torch-pruning node id.
        node_names: node id -> name, for messages.
    """
    blocked = []  # (member, channel count on its side, number of blocks, what it is)
    for m in traced.members:
        layer = layers.get(m.module) if m.module else None
        if layer is not None and layer.groups > 1 and layer.kind != "dwconv":
            count = layer.out_channels if m.side != IN else layer.in_channels
            what = "grouped convolution" if layer.kind == "gconv" else "attention"
            blocked.append((m, count, layer.groups, f"{what} {m.module}"))
        elif not m.module and m.node in split_sizes:
            parts = split_sizes[m.node]
            if len(set(parts)) > 1:
                return traced.size, traced.members, f"a channel split into unequal parts {parts} (sizes fixed in code)"
            blocked.append((m, sum(parts), len(parts), f"channel chunk {node_names[m.node]}"))
    if not blocked:
        return traced.size, traced.members, ""
    factor = math.lcm(*(blocks for _, _, blocks, _ in blocked))
    if traced.size % factor:
        return traced.size, traced.members, f"{blocked[0][3]}: {traced.size} channels do not split into {factor} blocks"
    size = traced.size // factor
    members = [GroupMember(m.module, m.side, m.root_idx % size, m.channel_idx, m.node) for m in traced.members]
    by_node = {(m.node, m.side): m for m in members}
    for m, count, blocks, what in blocked:
        if not _lines_up(by_node[(m.node, m.side)], count, blocks, size):
            return traced.size, traced.members, f"{what}: its {blocks} channel blocks do not line up with the group"
    return size, members, ""


def _lines_up(member: GroupMember, count: int, blocks: int, size: int) -> bool:
    """Whether every decision removes the same positions from each of the member's `blocks` equal blocks."""
    if count % blocks:
        return False
    width = count // blocks
    block, position = member.channel_idx // width, member.channel_idx % width
    for j in range(size):
        sel = member.root_idx == j
        per_block = [np.sort(position[sel & (block == b)]) for b in range(blocks)]
        if any(not np.array_equal(p, per_block[0]) for p in per_block[1:]):
            return False
    return True
