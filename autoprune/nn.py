"""Layers whose channel coupling autoprune knows exactly, with their torch-pruning pruners.

`PadShortcut` is the option-A shortcut of the CIFAR ResNets (He et al. 2016): subsample by `stride`, then place
the input's channels between zero channels. Written as a lambda around `F.pad`, torch-pruning treats it as an
elementwise op and couples input channel `i` with output channel `i`, which is wrong (the pad shifts indices) and
ties the residual streams of all stages into one group. Here the shortcut keeps an explicit map from output
position to input channel, so its input and output channels can be pruned independently and exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn


class PadShortcut(nn.Module):
    """Option-A shortcut: `y[:, j] = x[:, source[j], ::s, ::s]` where `source[j] >= 0`, else zeros.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output; the input sits in the middle, zero channels on both sides.
        stride: spatial subsampling step.

    Shapes:
        input: (N, in_channels, H, W); output: (N, out_channels, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError("PadShortcut needs out_channels >= in_channels")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        before = (out_channels - in_channels) // 2
        source = torch.full((out_channels,), -1, dtype=torch.long)
        source[before : before + in_channels] = torch.arange(in_channels)
        # Not persistent: published state dicts have no entry for it, and a plan rebuilds it.
        self.register_buffer("source", source, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        valid = self.source >= 0
        gathered = x.index_select(1, self.source.clamp(min=0))
        return gathered * valid.to(x.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def _keep(count: int, idxs: Sequence[int]) -> torch.Tensor:
    drop = set(int(i) for i in idxs)
    return torch.tensor([i for i in range(count) if i not in drop], dtype=torch.long)


class PadShortcutPruner(tp.pruner.function.BasePruningFunc):
    """Prunes a `PadShortcut`'s input and output channels independently (no intra-layer coupling)."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = _keep(layer.out_channels, idxs)
        layer.source = layer.source[keep.to(layer.source.device)]
        layer.out_channels = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = _keep(layer.in_channels, idxs)
        renumber = torch.full((layer.in_channels,), -1, dtype=torch.long)
        renumber[keep] = torch.arange(len(keep))
        source = layer.source.cpu()
        mapped = torch.where(source >= 0, renumber[source.clamp(min=0)], source)
        layer.source = mapped.to(layer.source.device)
        layer.in_channels = len(keep)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.in_channels


CUSTOM_PRUNERS: dict[type[nn.Module], tp.pruner.function.BasePruningFunc] = {PadShortcut: PadShortcutPruner()}
"""Pruners for autoprune's own layers, passed to torch-pruning's dependency graph."""
