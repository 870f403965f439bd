"""Least-squares reconstruction: re-fit the pruned network's layers so they reproduce the unpruned outputs.

After channels are removed, a layer that consumed them computes its output from fewer inputs, and every layer
after it receives inputs that drifted from the unpruned network's. He et al. 2017 ("Channel Pruning for
Accelerating Very Deep Neural Networks", https://arxiv.org/abs/1707.06168) and ThiNet
(https://arxiv.org/abs/1707.06342) re-fit a layer's kept weights by least squares so that its output matches the
unpruned network's on a few hundred images. `reconstruct` does this for every convolution (plain, grouped,
depthwise) and linear layer, in execution order, so each layer is fitted on inputs that come from the already
reconstructed layers before it and corrects the drift they leave. It works on the physically pruned network and
the plan's kept channels, so residual adds and concats need no special case: a layer's target is the unpruned
layer's output restricted to the channels it keeps.

The fit is ridge-regularised towards the layer's own (sliced) weights W₀,
``W = (XᵀX + λ·mean(diag XᵀX)·I)⁻¹ (XᵀY + λ·mean(diag XᵀX)·W₀)``, with the normal equations accumulated in
float64 over calibration batches; a convolution contributes a random subset of its output positions per image.
`refitted` cuts a plan from the unpruned network and re-fits it in one call.
"""

from __future__ import annotations

import copy
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.pruning import apply_kept_channels


@dataclass
class LayerFit:
    """One layer's fit: relative squared output error on the calibration data, before and after.

    Attributes:
        name: the module's name.
        rows: calibration rows (images × sampled positions) in the fit.
        error_before: ``‖Y − X·W_sliced‖² / ‖Y‖²`` with the pruned layer's original weights.
        error_after: the same with the fitted weights.
    """

    name: str
    rows: int
    error_before: float
    error_after: float


@dataclass
class Reconstruction:
    """What `reconstruct` did.

    Attributes:
        layers: the layers it re-fitted, in execution order.
        skipped: layers that lost input channels but could not be re-fitted, with the reason.
        images: images forwarded: the calibration images once per network (once, when `Targets` were given).
        seconds: wall time.
    """

    layers: list[LayerFit] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    images: int = 0
    seconds: float = 0.0


def layers_to_refit(original: nn.Module, pruned: nn.Module) -> tuple[list[str], dict[str, str]]:
    """The Conv2d and Linear layers of `pruned` to re-fit, and the layers that lost inputs but cannot be re-fitted.

    Every such layer is re-fitted, not only those with fewer input channels: a cut upstream shifts the inputs of
    every layer after it. A depthwise convolution's inputs are its own channels (removing some removes whole
    filters), so it is re-fitted per channel. Returns the names in module order and `{name: reason}` for layers
    that lost input channels but are of a kind the re-fit does not support (Conv1d/3d, non-zero padding).
    """
    before = dict(original.named_modules())
    names, skipped = [], {}
    for name, module in pruned.named_modules():
        old = before.get(name)
        if type(old) is not type(module) or not isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            continue
        if isinstance(module, nn.Linear):
            names.append(name)
            continue
        reason = None
        if not isinstance(module, nn.Conv2d):
            reason = f"{type(module).__name__} is not supported"
        elif module.padding_mode != "zeros" or (isinstance(module.padding, str) and module.padding != "valid"):
            reason = f"padding {module.padding!r} ({module.padding_mode}) is not supported"
        if reason is None:
            names.append(name)
        elif module.in_channels < old.in_channels and module.groups != module.in_channels:
            skipped[name] = reason
    return names, skipped


class Targets:
    """What the unpruned network's layers output on the calibration images (convolutions at sampled positions).

    Computed in one forward pass and reusable for every plan of the same network: a search that scores its
    candidates with reconstruction pays for the unpruned pass once.

    Args:
        original: the unpruned network.
        x: the calibration images, one batch.
        names: the Conv2d / Linear layers to record (default: all of them).
        positions: output positions sampled per image from each convolution (all when it has fewer).
        seed: seeds the position sampling.

    Attributes:
        outputs: `{layer: (positions or None, output)}`, conv outputs as (images, channels, positions); layers
            that run more than once per forward pass are left out.
    """

    def __init__(
        self,
        original: nn.Module,
        x: torch.Tensor,
        names: Sequence[str] | None = None,
        positions: int = 64,
        seed: int = 0,
    ) -> None:
        self.x = x
        modules = dict(original.named_modules())
        if names is None:
            names = [n for n, m in modules.items() if isinstance(m, nn.Conv2d | nn.Linear)]
        found: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}
        repeated: set[str] = set()

        def grab(name: str):
            def hook(module: nn.Module, _args: tuple, out: torch.Tensor) -> None:
                if name in found:
                    repeated.add(name)
                    return
                pick = None
                if isinstance(module, nn.Conv2d):
                    n, c = out.shape[:2]
                    out = out.reshape(n, c, -1)
                    if out.shape[-1] > positions:  # drawn per layer: the same whichever layers are recorded
                        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
                        pick = torch.randint(out.shape[-1], (n, positions), generator=generator).to(out.device)
                        out = out.gather(2, pick.unsqueeze(1).expand(n, c, positions))
                found[name] = (pick, out)

            return hook

        handles = [modules[n].register_forward_hook(grab(n)) for n in names]
        original.eval()
        try:
            with torch.no_grad():
                original(x)
        finally:
            for h in handles:
                h.remove()
        self.outputs = {n: v for n, v in found.items() if n not in repeated}
        self.convs = {n for n in self.outputs if isinstance(modules[n], nn.Conv2d)}

    def kept(self, name: str, index: list[int] | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Layer `name`'s sampled positions and its outputs restricted to the kept output channels `index`."""
        pick, out = self.outputs[name]
        if index is not None:
            dim = 1 if name in self.convs else -1
            out = out.index_select(dim, torch.as_tensor(index, device=out.device))
        return pick, out


@torch.no_grad()
def reconstruct(
    original: nn.Module,
    pruned: nn.Module,
    kept: dict[str, dict[str, list[int]]],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = (),
    ridge: float = 1e-3,
    positions: int = 64,
    seed: int = 0,
    targets: Targets | None = None,
) -> Reconstruction:
    """Re-fit, in place, the weights of the Conv2d and Linear layers of `pruned` (see `layers_to_refit`).

    Two forward passes over the calibration images, as one batch: the unpruned network's records each layer's
    target (`Targets`); in the pruned network's, a hook on each layer re-fits it on the inputs it receives, which
    already come from the layers re-fitted before it.

    Args:
        original: the unpruned network (not modified).
        pruned: the physically pruned network (the plan applied to a copy of `original`; same module names).
        kept: the plan's kept channels, `{module: {"out": [...], "in": [...]}}`; a module without "out" keeps all.
        batches: calibration batches (x, y) from the training split, on the models' device; labels are unused.
        ridge: regulariser λ towards the layer's current weights, relative to the mean diagonal of XᵀX.
        positions: output positions sampled per image from each convolution (all when it has fewer).
        seed: seeds the position sampling.
        targets: the unpruned outputs, computed before (then `batches`, `positions` and `seed` are unused).

    Returns:
        The per-layer fits, skipped layers and cost. Both networks are left in eval mode.
    """
    start = time.perf_counter()
    original.eval()
    pruned.eval()
    names, skipped = layers_to_refit(original, pruned)
    report = Reconstruction(skipped=skipped)
    if targets is None:
        inputs = [x for x, _ in batches]
        if inputs and names:
            targets = Targets(original, torch.cat(inputs), names, positions, seed)
            report.images += len(targets.x)
    if targets is not None and names:
        for name in names:
            if name not in targets.outputs:
                report.skipped[name] = "it runs more than once per forward pass"
        modules = dict(pruned.named_modules())

        def refit(name: str):
            def hook(module: nn.Module, args: tuple) -> None:
                pick, target = targets.kept(name, kept.get(name, {}).get("out"))
                normal = _Normal(module)
                normal.add(*_rows(module, args[0], target, pick))
                report.layers.append(normal.solve(name, ridge))

            return hook

        handles = [modules[n].register_forward_pre_hook(refit(n)) for n in names if n in targets.outputs]
        try:
            pruned(targets.x)
        finally:
            for h in handles:
                h.remove()
        report.images += len(targets.x)
    report.seconds = time.perf_counter() - start
    return report


def _rows(
    module: nn.Module, source: torch.Tensor, target: torch.Tensor, pick: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares rows: inputs X (groups, rows, features) and targets Y (groups, rows, outputs per group)."""
    if isinstance(module, nn.Linear):
        return source.reshape(1, -1, source.shape[-1]), target.reshape(1, -1, target.shape[-1])
    conv: nn.Conv2d = module
    patches = _patches(source, conv, pick)  # (n, rows, features)
    features = patches.shape[-1]
    g = conv.groups
    x = patches.reshape(-1, g, features // g).transpose(0, 1)
    y = target.permute(0, 2, 1).reshape(-1, g, target.shape[1] // g).transpose(0, 1)
    return x, y


def _patches(source: torch.Tensor, conv: nn.Conv2d, pick: torch.Tensor | None) -> torch.Tensor:
    """The input patches `conv` multiplies at output positions `pick` (n, positions), or at all of them (None).

    Returns (n, positions, in_channels·kh·kw), features ordered as in the weight (channel, then kernel row, column).
    Indexing only the sampled patches costs a fraction of unfolding the whole input.
    """
    padding = (0, 0) if isinstance(conv.padding, str) else conv.padding
    if pick is None:
        return F.unfold(source, conv.kernel_size, conv.dilation, padding, conv.stride).transpose(1, 2)
    n, c, _, w = source.shape
    (kh, kw), (dh, dw), (sh, sw), (ph, pw) = conv.kernel_size, conv.dilation, conv.stride, padding
    width = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    padded = F.pad(source, (pw, pw, ph, ph))
    rows = (pick // width * sh)[:, :, None, None] + (torch.arange(kh, device=pick.device) * dh)[:, None]
    cols = (pick % width * sw)[:, :, None, None] + (torch.arange(kw, device=pick.device) * dw)[None, :]
    image = torch.arange(n, device=pick.device)[:, None, None, None]
    taken = padded.permute(0, 2, 3, 1)[image, rows, cols]  # (n, positions, kh, kw, c)
    return taken.permute(0, 1, 4, 2, 3).reshape(n, pick.shape[1], c * kh * kw)


def refitted(
    original: nn.Module,
    kept: dict[str, dict[str, list[int]]],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = (),
    targets: Targets | None = None,
) -> tuple[nn.Module, Reconstruction]:
    """A copy of `original` cut to the plan's `kept` channels, re-fitted by `reconstruct` on `batches` (or on
    precomputed `targets`); `original` is not modified."""
    net = apply_kept_channels(copy.deepcopy(original).eval(), kept)
    return net, reconstruct(original, net, kept, batches, targets=targets)


class _Normal:
    """Accumulates the normal equations of one layer's fit, per group, in float64."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.bias = getattr(module, "bias", None) is not None
        self.xtx: torch.Tensor | None = None
        self.xty: torch.Tensor | None = None
        self.yty = 0.0
        self.rows = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.bias:
            x = torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)
        # float32 products (the slow part) summed in float64; the solve is in float64
        xtx, xty = (x.transpose(1, 2) @ x).double(), (x.transpose(1, 2) @ y).double()
        y = y.double()
        self.xtx = xtx if self.xtx is None else self.xtx + xtx
        self.xty = xty if self.xty is None else self.xty + xty
        self.yty += float((y * y).sum())
        self.rows += x.shape[1]

    def weights(self) -> torch.Tensor:
        """The layer's current parameters as (groups, features[+1], outputs per group)."""
        m = self.module
        g = getattr(m, "groups", 1)
        w = m.weight.detach().double().reshape(m.weight.shape[0], -1)  # (out, in/g·k·k)
        if self.bias:
            w = torch.cat([w, m.bias.detach().double().unsqueeze(1)], dim=1)
        return w.reshape(g, w.shape[0] // g, w.shape[1]).transpose(1, 2)

    def error(self, w: torch.Tensor) -> float:
        """``‖Y − X·W‖² / ‖Y‖²`` from the accumulated sums."""
        residual = self.yty - 2 * float((w * self.xty).sum()) + float((w * (self.xtx @ w)).sum())
        return max(residual, 0.0) / max(self.yty, 1e-30)

    def solve(self, name: str, ridge: float) -> LayerFit:
        """Solve the ridge problem (towards the current weights) and write the weights (and bias) into the module."""
        assert self.xtx is not None and self.xty is not None
        before = self.weights()
        diag = self.xtx.diagonal(dim1=1, dim2=2)
        lam = (ridge * diag.mean(dim=1).clamp_min(1e-12))[:, None, None]
        eye = torch.eye(self.xtx.shape[-1], dtype=self.xtx.dtype, device=self.xtx.device)
        w = torch.linalg.solve(self.xtx + lam * eye, self.xty + lam * before)
        fit = LayerFit(name, self.rows, self.error(before), self.error(w))
        if fit.error_after >= fit.error_before:  # a layer already exact (inputs unchanged): keep what it had
            fit.error_after = fit.error_before
            return fit
        m = self.module
        flat = w.transpose(1, 2).reshape(-1, w.shape[1])  # (out, features[+1])
        if self.bias:
            m.bias.copy_(flat[:, -1].to(m.bias.dtype))
            flat = flat[:, :-1]
        m.weight.copy_(flat.reshape(m.weight.shape).to(m.weight.dtype))
        return fit
