"""Find groups whose physical pruning does not match the masked network, so they can be frozen.

Torch-pruning can couple channels wrongly across ops it does not understand (for example a channel padding
written as `F.pad`, which shifts channel indices). A group is *sound* when pruning some of its channels for real
gives the same outputs as masking it (two channels per group are tried, drawn once). All groups are tried at
once; on a mismatch the set is split in halves until the culprits are isolated, so a sound network costs one
comparison.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from autoprune.graph.channel_graph import ChannelGraph


@torch.no_grad()
def find_broken_groups(
    model: nn.Module, graph: ChannelGraph, example_input: torch.Tensor, atol: float = 1e-3
) -> dict[int, str]:
    """Group index -> reason, for every prunable group whose real pruning changes the outputs."""
    from autoprune.masking import ChannelMasker
    from autoprune.pruning import prune_model

    model.eval()
    x = example_input.repeat(2, *([1] * (example_input.dim() - 1)))
    x = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(x.device)
    rng = np.random.default_rng(0)
    # Two channels per group, drawn once: a wrong coupling can agree by chance on one channel (the first one of
    # a stream behind a channel padding does), and a failing set split in halves must keep failing.
    drops = {g.index: g.offset + rng.choice(g.size, min(2, g.size - 1), replace=False) for g in graph.prunable_groups}
    masker = ChannelMasker(model, graph)
    broken: dict[int, str] = {}

    def agrees(groups) -> tuple[bool, str]:
        keep = graph.full_mask()
        for g in groups:
            keep[drops[g.index]] = 0
        masker.set_mask(keep)
        expected = model(x)
        masker.set_mask(None)
        try:
            got = prune_model(model, graph, keep)(x)
        except Exception as exc:  # a wrong coupling shows up as any kind of shape error
            return False, f"pruning it breaks the network ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        if got.shape != expected.shape:
            return False, f"pruning it changes the output shape to {tuple(got.shape)}"
        diff = float((got - expected).abs().max())
        scale = max(1.0, float(expected.abs().max()))
        return (
            diff <= atol * scale,
            f"pruning it changes the outputs (max diff {diff:.3g}); coupling not understood",
        )

    try:
        pending = [graph.prunable_groups]
        while pending:
            part = pending.pop()
            ok, reason = agrees(part)
            if ok:
                continue
            if len(part) == 1:
                broken[part[0].index] = reason
            else:
                half = len(part) // 2
                pending += [part[:half], part[half:]]
    finally:
        masker.remove()
    return broken
