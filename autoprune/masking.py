"""Evaluate a keep-mask on the unpruned network, without copying or re-tracing it.

Forward hooks multiply the output of every module that produces a group's channels (convs, BNs, the option-A
shortcut) by the mask, so a pruned channel is exactly zero wherever it flows. Every consumer then sees what it
would see with the channel physically removed (activations map 0 to 0), so the masked network computes the
same function as the pruned one; `tests/test_equivalence.py` checks that for every built-in model.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from autoprune.graph.channel_graph import OUT, ChannelGraph


class ChannelMasker:
    """Forward hooks that apply a keep-mask to a model; use as a context manager or call `remove()`.

    Args:
        model: the unpruned network `graph` was built from.
        graph: its channel graph.
    """

    def __init__(self, model: nn.Module, graph: ChannelGraph) -> None:
        self.graph = graph
        modules = dict(model.named_modules())
        device = next(model.parameters()).device
        owners: dict[str, np.ndarray] = {}
        for g in graph.prunable_groups:
            for m in g.members:
                if m.side != OUT or not m.module:
                    continue
                if m.module not in owners:
                    owners[m.module] = np.full(graph.layers[m.module].out_channels, -1, dtype=np.int64)
                owners[m.module][m.channel_idx] = g.offset + m.root_idx
        self._names = list(owners)
        sizes = [len(owners[n]) for n in self._names]
        flat = np.concatenate([owners[n] for n in self._names]) if owners else np.zeros(0, np.int64)
        # Index `num_decisions` points at a constant 1 appended to the mask: channels no decision owns.
        flat = np.where(flat < 0, graph.num_decisions, flat)
        self._index = torch.as_tensor(flat, device=device)
        self._sizes = sizes
        self._masks: dict[str, torch.Tensor] = {}
        self._active = False
        self._hooks = [modules[n].register_forward_hook(self._hook(n)) for n in self._names]

    def _hook(self, name: str):
        def apply(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if not self._active:
                return None
            mask = self._masks[name]
            shape = [1] * output.dim()
            shape[1] = -1
            return output * mask.view(shape).to(output.dtype)

        return apply

    def set_mask(self, keep: np.ndarray | None) -> None:
        """Apply `keep` (one 0/1 per decision) from now on; None switches masking off."""
        if keep is None:
            self._active = False
            return
        keep = self.graph.check_mask(keep)
        extended = torch.ones(len(keep) + 1, device=self._index.device)
        extended[: len(keep)] = torch.as_tensor(keep, dtype=torch.float32, device=self._index.device)
        values = extended[self._index].split(self._sizes)
        self._masks = dict(zip(self._names, values, strict=True))
        self._active = True

    def remove(self) -> None:
        """Detach the hooks; the model is as before."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def __enter__(self) -> ChannelMasker:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def bn_state(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """A copy of every BatchNorm's running statistics."""
    return {
        n: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
        for n, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    }


def restore_bn(model: nn.Module, state: dict) -> None:
    """Put back statistics saved by `bn_state`."""
    modules = dict(model.named_modules())
    for n, (mean, var, count) in state.items():
        bn = modules[n]
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.num_batches_tracked.copy_(count)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Re-estimate BatchNorm statistics on `batches` (cumulative average), leaving the model in eval mode.

    Returns:
        Per-image correctness (bool) of the predictions made on the way (each batch normalised by its own
        statistics): `autoprune.scoring` races candidates on it.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    correct = []
    try:
        for x, y in batches:
            correct.append(model(x).argmax(1) == y)
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        model.eval()
    return torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)


class MaskedEvaluator:
    """Scores keep-masks by accuracy on fixed batches, optionally after BN recalibration.

    Args:
        model: the unpruned network (kept in eval mode, restored after each call).
        graph: its channel graph.
        batches: evaluation batches (x, y), already on the model's device.
        recalibration: batches for BN recalibration before scoring; none skips it.
    """

    def __init__(
        self,
        model: nn.Module,
        graph: ChannelGraph,
        batches: list[tuple[torch.Tensor, torch.Tensor]],
        recalibration: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        self.model = model.eval()
        self.masker = ChannelMasker(model, graph)
        self.batches = batches
        self.recalibration = recalibration or []
        self._bn = bn_state(model)

    @torch.no_grad()
    def __call__(self, keep: np.ndarray | None) -> float:
        """Top-1 accuracy (0..1) of the network under `keep` (None: unpruned)."""
        self.masker.set_mask(keep)
        try:
            if self.recalibration and keep is not None:
                recalibrate_bn(self.model, self.recalibration)
            correct = total = 0
            for x, y in self.batches:
                correct += int((self.model(x).argmax(1) == y).sum())
                total += len(y)
            return correct / max(total, 1)
        finally:
            if self.recalibration and keep is not None:
                restore_bn(self.model, self._bn)
            self.masker.set_mask(None)

    def close(self) -> None:
        """Remove the mask hooks from the model."""
        self.masker.remove()
