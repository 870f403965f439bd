"""Evaluate a keep-mask on the unpruned network, without copying or re-tracing it.

Forward hooks multiply the output of every module that produces a group's channels (convs, BNs, the option-A
shortcut) by the mask, so a pruned channel is exactly zero wherever it flows. Every consumer then sees what it
would see with the channel physically removed (activations map 0 to 0), so the masked network computes the
same function as the pruned one; `tests/test_equivalence.py` checks that for every built-in model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from autoprune.graph.channel_graph import OUT, ChannelGraph


def channel_owners(graph: ChannelGraph) -> dict[str, np.ndarray]:
    """For every module whose output carries prunable channels: the decision owning each output channel.

    Channels no decision owns point at index `graph.num_decisions`, where callers append a constant 1 to the mask.
    """
    owners: dict[str, np.ndarray] = {}
    for g in graph.prunable_groups:
        for m in g.members:
            if m.side != OUT or not m.module:
                continue
            if m.module not in owners:
                owners[m.module] = np.full(graph.layers[m.module].out_channels, graph.num_decisions, dtype=np.int64)
            owners[m.module][m.channel_idx] = g.offset + m.root_idx
    return owners


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
        owners = channel_owners(graph)
        self._names = list(owners)
        self._dims = {n: graph.layers[n].channel_dim for n in self._names}
        self._sizes = [len(owners[n]) for n in self._names]
        flat = np.concatenate([owners[n] for n in self._names]) if owners else np.zeros(0, np.int64)
        self._index = torch.as_tensor(flat, device=device)
        self._masks: dict[str, torch.Tensor] = {}
        self._active = False
        self._hooks = [
            modules[n].register_forward_hook(self._attention_hook(n), with_kwargs=True)
            if isinstance(modules[n], nn.MultiheadAttention)
            else modules[n].register_forward_hook(self._hook(n))
            for n in self._names
            if n in modules
        ]
        self._narrowed: dict[str, nn.Module] = {}
        # Unwrapped parameters (a layer scale, a class token) have no forward to hook: their values are masked.
        params = dict(model.named_parameters())
        self._params = {n: (params[n], params[n].detach().clone()) for n in self._names if n not in modules}

    def _hook(self, name: str):
        dim = self._dims[name]

        def apply(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if not self._active or not isinstance(output, torch.Tensor):
                return None
            mask = self._masks[name]
            if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
                # Normalise over the kept channels only, as the pruned LayerNorm does.
                return _masked_layer_norm(module, inputs[0], mask, dim)
            shape = [1] * output.dim()
            shape[dim] = -1
            return output * mask.view(shape).to(output.dtype)

        return apply

    def _attention_hook(self, name: str):
        """Attention narrowed to the kept embedding channels: the physically pruned module, built once per mask.

        Masking the input alone is not the same network: the pruned attention also has narrower heads (a smaller
        softmax scale) and no query/key/value projections for the pruned channels.
        """

        def apply(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: tuple):
            if not self._active or module is self._narrowed.get(name):  # the copy carries this hook too
                return None
            kept = self._masks[name].bool()
            if bool(kept.all()):
                return None
            if name not in self._narrowed:
                from autoprune.pruning import pruner_for

                narrow = copy.deepcopy(module)
                pruner_for(module).prune_out_channels(narrow, torch.nonzero(~kept).flatten().tolist())
                self._narrowed[name] = narrow
            names = ("query", "key", "value")
            qkv = [*args[:3], *(kwargs[n] for n in names[len(args) :] if n in kwargs)]
            rest = {k: v for k, v in kwargs.items() if k not in names}
            out, weights = self._narrowed[name](*(t[..., kept] for t in qkv), **rest)
            full = out.new_zeros(*out.shape[:-1], len(kept))
            full[..., kept] = out
            return full, weights

        return apply

    def set_mask(self, keep: np.ndarray | None) -> None:
        """Apply `keep` (one 0/1 per decision) from now on; None switches masking off."""
        if keep is None:
            self._active = False
            self._restore_params()
            return
        keep = self.graph.check_mask(keep)
        extended = torch.ones(len(keep) + 1, device=self._index.device)
        extended[: len(keep)] = torch.as_tensor(keep, dtype=torch.float32, device=self._index.device)
        values = extended[self._index].split(self._sizes)
        self._masks = dict(zip(self._names, values, strict=True))
        self._narrowed = {}
        self._active = True
        with torch.no_grad():
            for name, (param, original) in self._params.items():
                shape = [1] * param.dim()
                shape[self._dims[name]] = -1
                param.copy_(original * self._masks[name].view(shape).to(param.dtype))

    def _restore_params(self) -> None:
        with torch.no_grad():
            for param, original in self._params.values():
                param.copy_(original)

    def remove(self) -> None:
        """Detach the hooks and restore masked parameters; the model is as before."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._restore_params()

    def __enter__(self) -> ChannelMasker:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _masked_layer_norm(module: nn.LayerNorm, x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """LayerNorm of input `x` over the channels `mask` keeps (on dimension `dim`); the others are zero.

    `dim` is -1 for a plain LayerNorm, 1 for a subclass that normalises the channels of NCHW tensors
    (torchvision's LayerNorm2d).
    """
    kept = mask.bool()
    x = x.movedim(dim, -1)
    w = module.weight[kept] if module.weight is not None else None
    b = module.bias[kept] if module.bias is not None else None
    out = torch.zeros_like(x)
    out[..., kept] = F.layer_norm(x[..., kept], (int(kept.sum()),), w, b, module.eps)
    return out.movedim(-1, dim)


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


class Predictions(NamedTuple):
    """Per-image outcome of a pass over labelled images: `correct` (bool) and `confidence`, the softmax
    probability of the true class (a lower-variance signal of the same thing)."""

    correct: torch.Tensor
    confidence: torch.Tensor

    @staticmethod
    def of(logits: torch.Tensor, labels: torch.Tensor) -> Predictions:
        probability = logits.float().softmax(1).gather(1, labels.view(-1, 1).long()).squeeze(1)
        return Predictions(logits.argmax(1) == labels, probability)

    @staticmethod
    def cat(parts: Sequence[Predictions]) -> Predictions:
        if not parts:
            return Predictions(torch.zeros(0, dtype=torch.bool), torch.zeros(0))
        return Predictions(torch.cat([p.correct for p in parts]), torch.cat([p.confidence for p in parts]))

    def __len__(self) -> int:  # type: ignore[override]
        return len(self.correct)


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    stop: Callable[[Predictions], bool] | None = None,
) -> Predictions:
    """Re-estimate BatchNorm statistics on `batches` (cumulative average), leaving the model in eval mode.

    Args:
        model: the network (modified in place).
        batches: labelled training batches.
        stop: called with the predictions so far after each batch; True ends the pass there (the statistics
            are then those of the batches seen).

    Returns:
        The predictions made on the way (each batch normalised by its own statistics): `autoprune.scoring` races
        candidates on them.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    parts: list[Predictions] = []
    try:
        for x, y in batches:
            parts.append(Predictions.of(model(x), y))
            if stop is not None and stop(Predictions.cat(parts)):
                break
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        model.eval()
    return Predictions.cat(parts)


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
