"""Measured latency of any keep-mask, from a per-layer table built once on the device the search runs on.

FLOPs do not say how fast a pruned network runs: per-layer overheads, memory traffic and the kernels a width
selects all count (on this project's CPU, ResNet-56 plans at 50% FLOPs ran only 1.3× faster at batch 1,
`bench/results/latency.md`). Like NetAdapt and HALP, the table times every distinct layer (conv, linear; same
class, kernel, stride, input size; BatchNorm and pooling along their one channel axis) on the device at a grid
of kept input × output channel fractions, and interpolates bilinearly between grid points. Layers timed alone do
not add up to the network (activations, adds and Python overhead are not timed; caches are warmer or colder), so
the sum is mapped onto end-to-end timings of real pruned models (uniform widths, random widths per group, and
the groups that merge across residual adds or concats kept whole while the others are cut, and the converse):
`estimate = a · Σ weight layers + b · Σ BatchNorm and pooling + constant`, with the constant in [0, 95%] of the
unpruned time, a and b ≥ 0 chosen for the smallest relative error and exact at the unpruned model. BatchNorm and
pooling run over every activation element, as the untimed ReLUs and adds do, so their own term lets the untimed
work follow the activations: with one scale for all layers, plans that kept the merged groups whole (a FLOPs
search's usual plan) ran 14-19% slower than estimated at batch 64 on this project's CPU; with two, 6-11%.
Ratios are fractions of that measurement; the estimate is positive and never falls when a channel is added.
Two more pruned models with random widths are held out, and their relative errors are kept with the table.

A latency search proposes only widths on the grid (`ChannelGraph.grid_steps`), so every tabled layer is
estimated at widths that were timed: between grid points a CPU's kernels are not smooth (on this project's CPU a
32-input 3×3 convolution ran 2-3× slower with 17-22 outputs than with 16). End to end the gain was small and
mixed: median error 4.4% on the grid vs 7.5% off it at batch 1, 6.8% vs 4.9% at batch 64
(`bench/results/latency_grid.md`). The calibration and held-out models use grid widths too.

A table is cached under `<cache>/latency/`, keyed by the model's fingerprint, the input shape, the batch size and
the device (CPU model and torch threads, or the GPU's name, and the torch version); a table measured elsewhere or
for another model is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.atomic import atomic_write_text
from autoprune.data.cache import cache_dir as default_cache_dir
from autoprune.graph.channel_graph import ChannelGraph

GRID = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
"""Kept-channel fractions at which each distinct layer is timed (inputs × outputs)."""
CALIBRATION_WIDTHS = (0.25, 0.5, 0.75)
"""Uniform widths of the pruned models that map the table onto end-to-end times (with the unpruned model)."""
RANDOM_CALIBRATION = 3
"""Pruned models with a random width per group that take part in the mapping: networks the search proposes mix
widths, and on this project's CPU uniform widths alone left random-width networks 8-22% slower than estimated."""
ALIGN = 8
"""Channel multiple a latency search rounds widths to when the table finds other widths slow (`rounding`)."""
MISALIGNMENT_PAYS = 1.1
"""Rounding is chosen when layers one channel short of full width run this many times slower than full width."""
TABLE_VERSION = 7
TABLED = ("conv", "dwconv", "gconv", "linear", "bn", "pool")
ONE_AXIS = (nn.modules.batchnorm._BatchNorm, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
            nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)  # fmt: skip
"""Layers whose time depends on one channel count (BatchNorm, pooling): timed along the output axis only."""


def device_key(device: torch.device | str) -> str:
    """What a latency measurement depends on besides the model: processor or GPU, torch threads, torch version."""
    device = torch.device(device)
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = _cpu_name()
        hardware += f", {torch.get_num_threads()} threads"
    return f"{device.type}: {hardware}; torch {torch.__version__}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_forward(module: nn.Module, x: torch.Tensor, repeats: int = 7, warmup: int = 2) -> float:
    """Seconds of one forward pass of `module` on `x`: the lower quartile of `repeats` passes after `warmup`
    (robust to other processes' bursts, which only ever add time)."""
    times = []
    for i in range(warmup + repeats):
        _sync(x.device)
        start = time.perf_counter()
        module(x)
        _sync(x.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return _low(times)


def _low(times: list[float]) -> float:
    return float(np.percentile(times, 25))


@dataclass
class LatencyTable:
    """Latency of a network under any keep-mask: tabled weight layers plus a fitted remainder.

    Attributes:
        key: what the table was measured for (`model`, `input_shape`, `batch`, `device`).
        layers: names of the tabled layers (conv, linear), in graph order.
        slots: index of each tabled layer in the graph's layers (the cost model's module order).
        full_in, full_out: unpruned input and output channels of each tabled layer.
        times: (layers, len(GRID), len(GRID)) seconds at grid fractions of kept inputs (rows) × outputs (cols).
        base_seconds: measured seconds of the unpruned model (the estimate's value at the full mask).
        one_axis: whether each tabled layer is a BatchNorm or pooling layer (timed along one channel axis).
        remainder: (scale of the weight layers' sum, scale of the one-axis layers' sum, constant seconds)
            mapping the table onto end-to-end times.
        validation: `[estimated, measured]` seconds of held-out pruned models.
        misalignment: time of the tabled layers one channel short of full width (in and out) over their time at
            full width: above 1, widths off the kernels' vector multiples cost more than their FLOPs say.
        from_cache: whether this table was read from the cache rather than measured.
    """

    key: dict[str, Any]
    layers: list[str]
    slots: np.ndarray
    full_in: np.ndarray
    full_out: np.ndarray
    times: np.ndarray
    base_seconds: float
    one_axis: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    remainder: tuple[float, float, float] = (1.0, 1.0, 0.0)
    validation: list[list[float]] = field(default_factory=list)
    misalignment: float = 1.0
    from_cache: bool = False

    # -- estimates ---------------------------------------------------------------------------------------------
    def _coords(self, graph: ChannelGraph, keep: np.ndarray) -> tuple[np.ndarray, ...]:
        i, o = graph.flops_cost.kept(keep)
        return i[self.slots], o[self.slots]

    def _interp(self, fi: np.ndarray, fo: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bilinear values and slopes (per unit fraction of inputs and outputs) of every tabled layer."""
        grid = np.asarray(GRID)
        fi, fo = np.clip(fi, grid[0], 1.0), np.clip(fo, grid[0], 1.0)  # below the grid: the smallest cell's value
        a = np.clip(np.searchsorted(grid, fi) - 1, 0, len(grid) - 2)
        b = np.clip(np.searchsorted(grid, fo) - 1, 0, len(grid) - 2)
        wa = (fi - grid[a]) / (grid[a + 1] - grid[a])
        wb = (fo - grid[b]) / (grid[b + 1] - grid[b])
        m = np.arange(len(a))
        t00, t01 = self.times[m, a, b], self.times[m, a, b + 1]
        t10, t11 = self.times[m, a + 1, b], self.times[m, a + 1, b + 1]
        value = (1 - wa) * (1 - wb) * t00 + (1 - wa) * wb * t01 + wa * (1 - wb) * t10 + wa * wb * t11
        d_in = ((1 - wb) * (t10 - t00) + wb * (t11 - t01)) / (grid[a + 1] - grid[a])
        d_out = ((1 - wa) * (t01 - t00) + wa * (t11 - t10)) / (grid[b + 1] - grid[b])
        return value, d_in, d_out

    def seconds(self, graph: ChannelGraph, keep: np.ndarray) -> float:
        """Estimated seconds of one forward pass (of the table's batch) of the network pruned by `keep`."""
        i, o = self._coords(graph, keep)
        value, _, _ = self._interp(i / self.full_in, o / self.full_out)
        return float((self._scales() * value).sum() + self.remainder[2])

    def _scales(self) -> np.ndarray:
        """Per tabled layer, the scale of its table entry in the estimate."""
        one_axis = self.one_axis if len(self.one_axis) == len(self.layers) else np.zeros(len(self.layers), bool)
        return np.where(one_axis, self.remainder[1], self.remainder[0])

    def ratio(self, graph: ChannelGraph, keep: np.ndarray) -> float:
        """Estimated latency of `keep` as a fraction of the unpruned model's measured latency."""
        return self.seconds(graph, keep) / self.base_seconds

    def marginal(self, graph: ChannelGraph, keep: np.ndarray) -> np.ndarray:
        """Latency ratio removed by dropping each decision alone from `keep` (slopes of the interpolation)."""
        i, o = self._coords(graph, keep)
        _, d_in, d_out = self._interp(i / self.full_in, o / self.full_out)
        per_in = np.zeros(len(graph.layers))
        per_out = np.zeros(len(graph.layers))
        scales = self._scales()
        per_in[self.slots] = scales * np.maximum(d_in, 0) / self.full_in
        per_out[self.slots] = scales * np.maximum(d_out, 0) / self.full_out
        cost = graph.flops_cost
        n = len(keep)
        out = np.bincount(cost.out_decision, weights=per_out[cost.out_slot], minlength=n)
        out += np.bincount(cost.in_decision, weights=per_in[cost.in_slot], minlength=n)
        return out / self.base_seconds

    def validation_error(self) -> float:
        """Largest relative error of the estimate on the held-out pruned models (0 when none were timed)."""
        return max((abs(e - m) / m for e, m in self.validation), default=0.0)

    # -- persistence -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": TABLE_VERSION,
            "key": self.key,
            "grid": list(GRID),
            "layers": self.layers,
            "slots": self.slots.tolist(),
            "full_in": self.full_in.tolist(),
            "full_out": self.full_out.tolist(),
            "times": self.times.tolist(),
            "base_seconds": self.base_seconds,
            "one_axis": self.one_axis.tolist(),
            "remainder": list(self.remainder),
            "validation": self.validation,
            "misalignment": self.misalignment,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> LatencyTable:
        return cls(
            key=doc["key"],
            layers=list(doc["layers"]),
            slots=np.asarray(doc["slots"], dtype=np.int64),
            full_in=np.asarray(doc["full_in"], dtype=np.float64),
            full_out=np.asarray(doc["full_out"], dtype=np.float64),
            times=np.asarray(doc["times"], dtype=np.float64),
            base_seconds=float(doc["base_seconds"]),
            one_axis=np.asarray(doc["one_axis"], dtype=bool),
            remainder=tuple(float(v) for v in doc["remainder"]),
            validation=[[float(a), float(b)] for a, b in doc["validation"]],
            misalignment=float(doc["misalignment"]),
        )


def table_key(graph: ChannelGraph, batch: int, device: torch.device | str) -> dict[str, Any]:
    """The cache key of a latency table: model fingerprint, input shape, batch and device."""
    return {
        "model": graph.fingerprint,
        "input_shape": list(graph.input_shape),
        "batch": int(batch),
        "device": device_key(device),
        "grid": list(GRID),
    }


def cache_path(key: dict[str, Any], cache_dir: str | Path | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return default_cache_dir(cache_dir) / "latency" / f"{key['model']}-{digest}.json"


def latency_table(
    model: nn.Module,
    graph: ChannelGraph,
    batch: int = 1,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    repeats: int = 7,
    seed: int = 0,
) -> LatencyTable:
    """The latency table of `model` at `batch` on `device`: read from the cache when one was measured for the same
    key, else measured (seconds to a minute) and cached.

    Args:
        model: the unpruned network (its weights do not matter; it is not modified).
        graph: its channel graph.
        batch: inputs per forward pass the latency is for.
        device: where to time (the device the search runs on).
        cache_dir: cache root (default `$AUTOPRUNE_CACHE` or ~/.cache/autoprune).
        repeats: timed passes per measurement (the median is kept).
        seed: draws the held-out validation masks.
    """
    device = torch.device(device)
    key = table_key(graph, batch, device)
    path = cache_path(key, cache_dir)
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
            if doc.get("version") == TABLE_VERSION and doc.get("key") == key:
                table = LatencyTable.from_dict(doc)
                table.from_cache = True
                return table
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass  # unreadable: measure again and overwrite
    table = measure_table(model, graph, batch, device, repeats, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(table.to_dict()))
    return table


def measure_table(
    model: nn.Module, graph: ChannelGraph, batch: int, device: torch.device, repeats: int = 7, seed: int = 0
) -> LatencyTable:
    """Time every distinct tabled layer on the grid, then fit and validate the remainder on real pruned models."""
    model = model.eval()
    names = list(graph.layers)
    modules = dict(model.named_modules())
    shapes = _input_shapes(model, graph, names, device)
    tabled = [
        n for n in names
        if graph.layers[n].kind in TABLED and n in shapes and len(shapes[n]) >= 1 and _rebuild(modules[n], 1, 1)
    ]  # fmt: skip
    full_in = np.array([_channels(modules[n], shapes[n])[0] for n in tabled], dtype=np.float64)
    full_out = np.array([_channels(modules[n], shapes[n])[1] for n in tabled], dtype=np.float64)
    times = np.zeros((len(tabled), len(GRID), len(GRID)))
    measured: dict[tuple, np.ndarray] = {}
    short = full = 0.0
    for k, name in enumerate(tabled):
        module, shape = modules[name], shapes[name]
        signature = (repr(module), shape)
        if signature not in measured:
            measured[signature] = _time_grid(module, shape, batch, device, repeats)
            c_in, c_out = _channels(module, shape)
            if min(c_in, c_out) > ALIGN and not isinstance(module, (nn.Linear, *ONE_AXIS)):
                fractions = ((c_in - 1) / c_in, (c_out - 1) / c_out)
                measured[signature, "short"] = _time_grid(module, shape, batch, device, repeats, [fractions])[0, 0]
        times[k] = measured[signature]
        if (signature, "short") in measured:
            short += measured[signature, "short"]
            full += times[k, -1, -1]
    # Adding channels never makes a layer faster: timing noise that says so would break the search's bisection.
    times = np.maximum.accumulate(np.maximum.accumulate(times, axis=1), axis=2)
    table = LatencyTable(
        key=table_key(graph, batch, device),
        layers=tabled,
        slots=np.array([names.index(n) for n in tabled], dtype=np.int64),
        full_in=full_in,
        full_out=full_out,
        times=times,
        base_seconds=1.0,
        one_axis=np.array([isinstance(modules[n], ONE_AXIS) for n in tabled], dtype=bool),
        misalignment=short / full if full else 1.0,
    )
    rng = np.random.default_rng(seed)
    calibration = [graph.full_mask()] + [uniform_width(graph, w) for w in CALIBRATION_WIDTHS]
    calibration += [random_widths(graph, rng) for _ in range(RANDOM_CALIBRATION)]
    calibration += split_widths(graph)
    held_out = [random_widths(graph, rng) for _ in range(2)]
    seconds = time_masks(model, graph, calibration + held_out, batch, device, repeats)
    _fit_remainder(table, graph, calibration, seconds[: len(calibration)])
    table.validation = [
        [table.seconds(graph, keep), s] for keep, s in zip(held_out, seconds[len(calibration) :], strict=True)
    ]
    return table


def _fit_remainder(table: LatencyTable, graph: ChannelGraph, masks: list[np.ndarray], seconds: list[float]) -> None:
    """Choose `(a, b, constant)` of `a · Σ weight layers + b · Σ one-axis layers + constant`: exact at the unpruned
    model (the first mask), the constant in [0, 0.95] of its time and a, b ≥ 0, with the smallest squared relative
    error on the other masks (a grid over the constant and a's share of the rest)."""
    weights, one_axis = np.zeros((len(masks), 1)), np.zeros((len(masks), 1))
    for k, keep in enumerate(masks):
        i, o = table._coords(graph, keep)
        value, _, _ = table._interp(i / table.full_in, o / table.full_out)
        weights[k], one_axis[k] = value[~table.one_axis].sum(), value[table.one_axis].sum()
    measured = np.asarray(seconds, dtype=np.float64)
    best, best_error = (1.0, 1.0, 0.0), np.inf
    shares = np.linspace(0.0, 1.0, 101) if one_axis[0, 0] > 0 else np.ones(1)
    for constant in np.linspace(0.0, 0.95, 96) * measured[0]:
        rest = measured[0] - constant  # split between the two sums at the unpruned model
        a = shares * rest / weights[0, 0]
        b = (1 - shares) * rest / one_axis[0, 0] if one_axis[0, 0] > 0 else np.zeros_like(a)
        relative = (a * weights[1:] + b * one_axis[1:] + constant) / measured[1:, None] - 1
        errors = (relative**2).sum(axis=0)
        k = int(np.argmin(errors))
        if errors[k] < best_error:
            best, best_error = (float(a[k]), float(b[k]), float(constant)), float(errors[k])
    table.remainder = best
    table.base_seconds = float(measured[0])


def uniform_width(graph: ChannelGraph, width: float) -> np.ndarray:
    """Every prunable group cut to `width` of its channels (highest weight L1 kept), legalised."""
    keep = np.zeros(graph.num_decisions, dtype=np.int8)
    l1 = graph.channel_stats[:, 0]
    for g in graph.prunable_groups:
        idx = g.offset + np.argsort(-l1[g.offset : g.offset + g.size], kind="stable")
        keep[idx[: max(1, round(width * g.size))]] = 1
    return graph.legalize(keep)


def grid_mask(graph: ChannelGraph, fractions: Sequence[float], on_grid: bool = True) -> np.ndarray:
    """Each prunable group's first channels kept at its fraction, rounded to a multiple of the table's grid step
    (`size // len(GRID)` channels, as a latency search proposes them) or, with `on_grid` False, to one channel."""
    keep = np.zeros(graph.num_decisions, dtype=np.int8)
    for g, fraction in zip(graph.prunable_groups, fractions, strict=True):
        step = max(1, g.size // len(GRID)) if on_grid else 1
        keep[g.offset : g.offset + min(g.size, max(step, round(fraction * g.size / step) * step))] = 1
    return graph.legalize(keep)


def split_widths(graph: ChannelGraph) -> list[np.ndarray]:
    """Calibration masks that cut the groups merging across adds or concats apart from the others: the merged
    ones whole and the others at a quarter and a half, and the converse at a half (none when all groups are of
    one kind). Searches under a FLOPs budget tend to keep the merged groups; random widths rarely do."""
    merged = np.array([graph.crosses_merge(g) for g in graph.prunable_groups], dtype=bool)
    if merged.all() or not merged.any():
        return []
    return [grid_mask(graph, np.where(merged, outer, inner)) for inner, outer in ((0.25, 1.0), (0.5, 1.0), (1.0, 0.5))]


def random_widths(graph: ChannelGraph, rng: np.random.Generator) -> np.ndarray:
    """Every prunable group cut to its own random width in [0.2, 1] on the table's grid: a calibration or
    held-out mask."""
    return grid_mask(graph, rng.uniform(0.2, 1.0, len(graph.prunable_groups)))


def time_masks(
    model: nn.Module,
    graph: ChannelGraph,
    masks: list[np.ndarray],
    batch: int,
    device: torch.device | str,
    repeats: int = 7,
) -> list[float]:
    """Seconds of a forward pass of each physically pruned model (lower quartile of `repeats` passes), timed
    round-robin so that load drifts hit all alike."""
    from autoprune.plan import Plan  # the plan layer sits above the cost models

    device = torch.device(device)
    nets = [Plan.from_mask(model, graph, keep).apply(model).to(device).eval() for keep in masks]
    x = torch.randn(batch, *graph.input_shape, device=device)
    times: list[list[float]] = [[] for _ in nets]
    with torch.no_grad():
        for _ in range(3):  # the first passes allocate and fill caches
            for net in nets:
                net(x)
        for _ in range(repeats):
            for k, net in enumerate(nets):
                _sync(device)
                start = time.perf_counter()
                net(x)
                _sync(device)
                times[k].append(time.perf_counter() - start)
    return [_low(t) for t in times]


def _input_shapes(model: nn.Module, graph: ChannelGraph, names: list[str], device: torch.device) -> dict:
    """Input shape (batch 1) of every named module on one forward pass."""
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())
    hooks = []
    for name in names:
        if name not in modules:
            continue

        def record(mod, inputs, output, name=name):
            if name not in shapes and inputs and isinstance(inputs[0], torch.Tensor):
                shapes[name] = tuple(inputs[0].shape[1:])

        hooks.append(modules[name].register_forward_hook(record))
    try:
        with torch.no_grad():
            model(torch.zeros(1, *graph.input_shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _channels(module: nn.Module, shape: tuple[int, ...] | None = None) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, ONE_AXIS):
        c = module.num_features if hasattr(module, "num_features") else shape[0]
        return c, c
    return module.in_channels, module.out_channels


def _rebuild(module: nn.Module, fi: float, fo: float) -> nn.Module | None:
    """A fresh layer like `module` keeping fractions `fi` of its inputs and `fo` of its outputs (None: not tabled)."""
    if isinstance(module, nn.Linear):
        i, o = (max(1, round(f * c)) for f, c in ((fi, module.in_features), (fo, module.out_features)))
        return nn.Linear(i, o, bias=module.bias is not None)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return type(module)(max(1, round(fo * module.num_features)))
    if isinstance(module, ONE_AXIS):  # pooling: no weights, the same module on fewer channels
        return module
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and not getattr(module, "transposed", False):
        groups = module.groups
        if groups == module.in_channels == module.out_channels and groups > 1:  # depthwise: one width
            i = o = groups = max(1, round(fo * module.out_channels))
        else:
            i = max(groups, round(fi * module.in_channels / groups) * groups)
            o = max(groups, round(fo * module.out_channels / groups) * groups)
        return type(module)(
            i, o, module.kernel_size, module.stride, module.padding, module.dilation, groups,
            bias=module.bias is not None, padding_mode=module.padding_mode,
        )  # fmt: skip
    return None


def _time_grid(
    module: nn.Module, shape: tuple[int, ...], batch: int, device: torch.device, repeats: int, points=None
) -> np.ndarray:
    """Seconds of a layer like `module` at every grid fraction of kept inputs × outputs (or at `points`,
    `[(fraction in, fraction out)]`, as a (len(points), 1) array)."""
    grid = [(a, b, fi, fo) for a, fi in enumerate(GRID) for b, fo in enumerate(GRID)]
    if points is not None:
        grid = [(k, 0, fi, fo) for k, (fi, fo) in enumerate(points)]
    out = np.zeros((len(GRID), len(GRID)) if points is None else (len(points), 1))
    channel_dim = 0 if not isinstance(module, nn.Linear) else len(shape) - 1
    one_axis = isinstance(module, ONE_AXIS)
    for a, b, fi, fo in grid:
        if one_axis and a > 0 and points is None:  # the input fraction does not matter: copy the first row
            out[a, b] = out[0, b]
            continue
        layer = _rebuild(module, fi, fo).to(device).eval()
        size = list(shape)
        if one_axis:
            size[channel_dim] = max(1, round(fo * _channels(module, shape)[1]))
        else:
            size[channel_dim] = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
        out[a, b] = time_forward(layer, torch.randn(batch, *size, device=device), repeats)
    return out


def rounding(table: LatencyTable) -> int:
    """The channel multiple widths should be rounded to on the table's device: `ALIGN` where layers one channel
    short of full width ran `MISALIGNMENT_PAYS` times slower than at full width, else 1."""
    return ALIGN if table.misalignment >= MISALIGNMENT_PAYS else 1


def fit_to_table(graph: ChannelGraph, table: LatencyTable) -> None:
    """Make `graph` propose only widths `table` timed (no interpolation error), rounded to the device's channel
    multiple unless the graph already rounds to an explicit one."""
    if graph.round_to == 1:  # widths off the kernels' vector multiples can cost more than they save
        graph.round_to = rounding(table)
    graph.grid_steps = len(GRID)


def threads_note() -> str:
    """Torch threads and `OMP_NUM_THREADS`, for result tables."""
    return f"{torch.get_num_threads()} torch threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
