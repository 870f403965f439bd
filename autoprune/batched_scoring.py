"""Score many candidate masks in one forward pass: each candidate its own channel mask and BN statistics.

A batch of K candidates runs the unpruned network once on K stacked copies of every input batch
(``K·B`` images, candidate-major). Mask hooks multiply each candidate's block of the output of every
channel-producing module by that candidate's mask (`autoprune.masking` shows that a masked network computes
what the pruned one does), and every BatchNorm is replaced by `CandidateBatchNorm`, which normalises each
candidate's block by its own batch statistics while recalibrating and keeps one set of running statistics per
candidate. So candidate k's predictions are those of its own BN-recalibrated pruned network, and one pass
scores K of them: on an accelerator, where one small network leaves the device mostly idle, that multiplies
candidates per second; on a CPU it costs about what K masked passes cost.

`BatchedScorer` is a `PrefetchingScorer` (single candidates still go through the cheaper sliced network) whose
batches run so: the same recalibration, racing and accounting, decided for a whole batch at once.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.graph.channel_graph import ChannelGraph
from autoprune.masking import Predictions, channel_owners
from autoprune.scoring import Batches, PrefetchingScorer, ScoreRecord


class CandidateBatchNorm(nn.Module):
    """A BatchNorm for inputs that stack several candidates' batches: statistics per candidate.

    Args:
        bn: the BatchNorm it replaces (its affine parameters are shared, its running statistics copied).
        candidates: most candidates in one pass.

    Attributes:
        calibrating: normalise each candidate's block by its own batch statistics and accumulate them into
            its running statistics (cumulative average, as `recalibrate_bn`); otherwise use the running ones.
        rows: which candidates the current input holds, in order.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, candidates: int) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = bn.weight, bn.bias, bn.eps
        self.tracked = bn.running_mean is not None
        c = bn.num_features
        mean = bn.running_mean if self.tracked else torch.zeros(c, device=bn.weight.device)
        var = bn.running_var if self.tracked else torch.ones(c, device=bn.weight.device)
        self.register_buffer("initial_mean", mean.detach().clone())
        self.register_buffer("initial_var", var.detach().clone())
        self.register_buffer("running_mean", mean.detach().expand(candidates, c).clone())
        self.register_buffer("running_var", var.detach().expand(candidates, c).clone())
        self.batches = 0
        self.calibrating = False
        self.rows = torch.arange(candidates, device=mean.device)

    def reset(self, candidates: int) -> None:
        """Every candidate's statistics back to the replaced BatchNorm's; the next pass holds all of them."""
        self.running_mean = self.initial_mean.expand(candidates, -1).clone()
        self.running_var = self.initial_var.expand(candidates, -1).clone()
        self.rows = torch.arange(candidates, device=self.running_mean.device)
        self.batches = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.rows)
        v = x.reshape(n, x.shape[0] // n, x.shape[1], -1)
        if self.calibrating or not self.tracked:
            var, mean = torch.var_mean(v, dim=(1, 3), unbiased=False)
            if self.calibrating and self.tracked:
                count = v.shape[1] * v.shape[3]
                self.batches += 1
                f = 1.0 / self.batches
                self.running_mean[self.rows] = (1 - f) * self.running_mean[self.rows] + f * mean
                unbiased = var * (count / max(count - 1, 1))
                self.running_var[self.rows] = (1 - f) * self.running_var[self.rows] + f * unbiased
        else:
            mean, var = self.running_mean[self.rows], self.running_var[self.rows]
        out = (v - mean[:, None, :, None]) * torch.rsqrt(var + self.eps)[:, None, :, None]
        if self.weight is not None:
            out = out * self.weight[None, None, :, None] + self.bias[None, None, :, None]
        return out.reshape(x.shape)


class CandidateNetwork:
    """A copy of the unpruned network that runs K candidates (masks and BN statistics) per pass.

    Args:
        model: the unpruned network (not modified; a copy is made).
        graph: its channel graph.
        candidates: most candidates in one pass.

    Raises:
        AutopruneError: the network holds channels whose masking is not a plain multiplication per candidate
            (LayerNorm, attention or parameter-only groups): score such networks one candidate at a time.
    """

    def __init__(self, model: nn.Module, graph: ChannelGraph, candidates: int) -> None:
        self.graph = graph
        self.candidates = candidates
        self.model = copy.deepcopy(model).eval()
        modules = dict(self.model.named_modules())
        owners = channel_owners(graph)
        unsupported = [
            n for n in owners if n not in modules or isinstance(modules[n], nn.LayerNorm | nn.MultiheadAttention)
        ]
        if unsupported:
            raise AutopruneError(
                f"batched candidate scoring supports convolutional networks with BatchNorm; {unsupported[0]!r} "
                "(LayerNorm, attention or a bare parameter) needs per-candidate scoring: use --candidate-batch 1"
            )
        self.norms: list[CandidateBatchNorm] = []
        for name, module in list(modules.items()):
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                parent, _, child = name.rpartition(".")
                norm = CandidateBatchNorm(module, candidates)
                setattr(self.model.get_submodule(parent) if parent else self.model, child, norm)
                self.norms.append(norm)
        modules = dict(self.model.named_modules())
        device = next(self.model.parameters()).device
        self._index = {n: torch.as_tensor(idx, device=device) for n, idx in owners.items()}
        self._masks: dict[str, torch.Tensor] = {}
        self._rows = torch.arange(candidates, device=device)
        for name in owners:
            modules[name].register_forward_hook(self._hook(name, graph.layers[name].channel_dim))

    def _hook(self, name: str, dim: int):
        def apply(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            mask = self._masks[name][self._rows]
            n = len(self._rows)
            v = output.reshape(n, output.shape[0] // n, *output.shape[1:])
            shape = [n] + [1] * output.dim()
            shape[dim + 1 if dim >= 0 else dim] = -1
            return (v * mask.view(shape).to(v.dtype)).reshape(output.shape)

        return apply

    def load(self, keeps: np.ndarray) -> None:
        """Candidates `keeps` (K × decisions, 0/1) from now on, with the original BN statistics."""
        keeps = torch.as_tensor(np.asarray(keeps, dtype=np.float32), device=self._rows.device)
        if keeps.dim() != 2 or not 0 < len(keeps) <= self.candidates:
            raise ValueError(f"expected 1..{self.candidates} masks, got shape {tuple(keeps.shape)}")
        extended = torch.cat([keeps, torch.ones(len(keeps), 1, device=keeps.device)], dim=1)
        self._masks = {n: extended[:, idx] for n, idx in self._index.items()}
        for norm in self.norms:
            norm.reset(len(keeps))
        self.select(range(len(keeps)))

    def select(self, rows: Sequence[int]) -> None:
        """The candidates the next passes hold (a subset of those loaded, in order)."""
        self._rows = torch.as_tensor(list(rows), dtype=torch.long, device=self._rows.device)
        for norm in self.norms:
            norm.rows = self._rows

    @torch.no_grad()
    def predictions(self, x: torch.Tensor, y: torch.Tensor, calibrate: bool = False) -> Predictions:
        """Each selected candidate's predictions on labelled `x` (tensors of rows × len(x)); `calibrate` updates
        its BN statistics with this batch."""
        n = len(self._rows)
        for norm in self.norms:
            norm.calibrating = calibrate
        try:
            logits = self.model(x.repeat(n, *([1] * (x.dim() - 1))))
        finally:
            for norm in self.norms:
                norm.calibrating = False
        out = Predictions.of(logits, y.repeat(n))
        return Predictions(out.correct.view(n, len(x)), out.confidence.view(n, len(x)))


class BatchedScorer(PrefetchingScorer):
    """A `PrefetchingScorer` whose batches run through `CandidateNetwork`: up to `candidates` masks per pass
    (single candidates still go through the cheaper sliced network).

    Args:
        model, graph, batches, recalibration, race_samples, z: as `SlicedScorer`.
        candidates: most candidates per pass.
        max_images: most images per forward pass (validation batches are split to fit; one recalibration
            batch per candidate is the least a pass holds).
    """

    def __init__(
        self,
        model: nn.Module,
        graph: ChannelGraph,
        batches: Batches,
        recalibration: Batches | None = None,
        race_samples: int = 256,
        z: float = 2.0,
        candidates: int = 16,
        max_images: int = 8192,
    ) -> None:
        super().__init__(model, graph, batches, recalibration, race_samples=race_samples, z=z, candidates=candidates)
        self.network = CandidateNetwork(model, graph, candidates)
        self.max_images = max_images

    def _probe_batch(self, keeps: list[np.ndarray]) -> list[ScoreRecord]:
        self.network.load(np.stack(keeps))
        return [self._probe_record(head, len(head)) for head in self._first_stage(race=False)]

    def _first_stage(self, race: bool) -> list[Predictions]:
        """Each loaded candidate's first-stage predictions: those of the recalibration pass (with `race`, a
        candidate clearly worse than the incumbent halfway leaves the pass there), else the first
        `race_samples` validation images."""
        n = len(self.network._rows)
        if not self.recalibration:
            p = self._predict(0, self.race_samples)
            return [Predictions(p.correct[i], p.confidence[i]) for i in range(n)]
        parts: list[list[Predictions]] = [[] for _ in range(n)]
        active, seen, checkpoints = list(range(n)), 0, self.checkpoints()
        for x, y in self.recalibration:
            self.network.select(active)
            p = self.network.predictions(x, y, calibrate=True)
            for row, i in enumerate(active):
                parts[i].append(Predictions(p.correct[row], p.confidence[row]))
            seen += len(y)
            if race and self._best is not None and seen in checkpoints:
                active = [i for i in active if not self.worse(Predictions.cat(parts[i]), self._best[1])[0]]
                if not active:
                    break
        return [Predictions.cat(part) for part in parts]

    def _step(self) -> int:
        """Candidates per pass: `candidates`, fewer where one recalibration batch each would exceed `max_images`."""
        recal_batch = max((len(x) for x, _ in self.recalibration), default=1)
        return max(1, min(self.candidates, self.max_images // recal_batch))

    def _predict(self, start: int, stop: int) -> Predictions:
        """Selected candidates' predictions on validation images `start:stop` (rows × images)."""
        rows = len(self.network._rows)
        size = max(1, min(self.batch_size, self.max_images // rows))
        parts = [
            self.network.predictions(self.x[i : min(i + size, stop)], self.y[i : min(i + size, stop)])
            for i in range(start, stop, size)
        ]
        if not parts:
            return Predictions(torch.zeros(rows, 0, dtype=torch.bool), torch.zeros(rows, 0))
        return Predictions(torch.cat([p.correct for p in parts], 1), torch.cat([p.confidence for p in parts], 1))

    def _score_batch(self, keeps: list[np.ndarray]) -> list[ScoreRecord]:
        self.network.load(np.stack(keeps))
        heads = self._first_stage(race=True)
        cost = [len(head) for head in heads]
        best = self._best
        going = [i for i in range(len(keeps)) if best is None or not self.worse(heads[i], best[1])[0]]
        parts = {i: [] if self.recalibrates else [heads[i].correct] for i in going}
        stopped: set[int] = set()
        batches = self.validation_batches()
        for n, (start, stop) in enumerate(batches, 1):
            live = [i for i in going if i not in stopped]
            if not live:
                break
            self.network.select(live)
            rest = self._predict(start, stop).correct
            for row, i in enumerate(live):
                parts[i].append(rest[row])
                cost[i] += stop - start
            if best is not None and n < len(batches):
                stopped |= {i for i in live if self.behind(torch.cat(parts[i]), best[2])[0]}
        validated = {
            i: (torch.cat(p) if p else torch.zeros(0, dtype=torch.bool), i in stopped) for i, p in parts.items()
        }
        return self._commit(heads, validated, cost)


__all__ = ["BatchedScorer", "CandidateBatchNorm", "CandidateNetwork"]
