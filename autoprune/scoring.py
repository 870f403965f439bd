"""Score candidate masks fast: on the physically smaller network, racing on images already forwarded.

`SlicedScorer` gives each candidate what `MaskedEvaluator` gives it (BN recalibration on the same training
batches, accuracy on the same validation images), but runs a physically pruned copy of the network, so a
candidate at 50% FLOPs costs about half a masked pass. It then spends images where they decide (racing):

1. The first stage costs nothing extra: the BN-recalibration pass already forwards labelled training images
   (in train mode, each batch normalised by its own statistics), so their predictions are recorded. Without
   recalibration (or with `reconstruction`), the first `race_samples` validation images are the first stage.
2. The candidate is compared *paired* with the incumbent (the best candidate scored on every image so far) on
   those same images: ``d = mean(correct_cand - correct_best)`` with standard error ``se`` over the images.
   Networks that differ in a few channels err on mostly the same images, so ``se`` is small and the test sharp.
3. If ``d + z · se < 0`` the candidate cannot plausibly beat the incumbent: it stops there. The test is made
   halfway through the recalibration batches too, so a clearly worse candidate stops after half of them. A
   stopped candidate's score is the control-variate estimate ``best_full + c``, where ``c`` is the paired mean
   difference of the probability each gives the true class (its confidence: a lower-variance signal than 0/1
   correctness, which orders the stopped candidates better; deciding on it stopped too many candidates that
   were close to the incumbent). Otherwise the candidate is scored on the validation images.
4. The validation images race too: after each validation batch but the last, the candidate's correctness so far
   is compared, paired, with the incumbent's on the same images, and a clearly worse candidate stops there, its
   score the incumbent's plus the paired mean difference of correctness on those images. A candidate that
   finishes scores its validation accuracy (and becomes the incumbent if it beats it).

So a reported best score is always a full validation score; only candidates judged worse are estimated.
`z = inf` switches racing off.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.graph.channel_graph import ChannelGraph
from autoprune.inference import Pairs, fast_layout, foldable_pairs, for_inference
from autoprune.masking import Predictions, recalibrate_bn
from autoprune.pruning import apply_kept_channels
from autoprune.reconstruct import Targets, refitted

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]
Incumbent = tuple[float, Predictions, torch.Tensor]
"""The best candidate scored on every validation image: its score, first-stage predictions and per-image
validation correctness."""


@dataclass
class ScoreRecord:
    """What one scoring cost and decided.

    Attributes:
        score: validation accuracy, or the paired estimate when the candidate was raced out.
        images: images forwarded (BN recalibration plus validation).
        full: whether the candidate was scored on the validation images.
    """

    score: float
    images: int
    full: bool


def clearly_worse(signal: torch.Tensor, incumbent: torch.Tensor, z: float) -> tuple[bool, float]:
    """Paired racing test on the same images: is the candidate at least `z` standard errors below?

    Args:
        signal: the candidate's per-image signal (correctness or confidence).
        incumbent: the incumbent's on the same images (its first `len(signal)` are used).
        z: standard errors of the paired mean difference (inf: never).

    Returns:
        (whether to stop the candidate, the mean difference candidate − incumbent).
    """
    diff = signal.double() - incumbent[: len(signal)].double()
    d = float(diff.mean()) if len(diff) else 0.0
    if len(diff) < 2 or math.isinf(z):
        return False, d
    se = float(diff.std(unbiased=True)) / math.sqrt(len(diff))
    return d + z * se < 0, d


class SlicedScorer:
    """Scores keep-masks on a physically pruned copy of the network, with BN recalibration and racing.

    Args:
        model: the unpruned network (never modified).
        graph: its channel graph.
        batches: validation batches (x, y) on the model's device, in a fixed order.
        recalibration: labelled training batches for BN recalibration of every candidate; they are also the
            first racing stage. None: no recalibration, and the first `race_samples` validation images race.
        race_samples: without recalibration, the validation images of the first stage.
        z: paired standard errors below the incumbent at which a candidate stops early (inf: no racing).
        reconstruction: instead of recalibrating BN, re-fit the conv and linear layers by least squares
            (`autoprune.reconstruct`) on the recalibration images and keep the unpruned BN statistics, as the
            model a search delivers does (`autoprune.recovery.reconstruction`); the unpruned outputs are computed
            once, and the first `race_samples` validation images race.

    Attributes:
        images_forwarded: images forwarded over all calls (recalibration and validation).
        evaluations: masks scored; full_evaluations: those scored on the validation images.
    """

    def __init__(
        self,
        model: nn.Module,
        graph: ChannelGraph,
        batches: Batches,
        recalibration: Batches | None = None,
        race_samples: int = 256,
        z: float = 2.0,
        reconstruction: bool = False,
    ) -> None:
        self.model = model.eval()
        self.graph = graph
        self.x = torch.cat([x for x, _ in batches]) if batches else torch.zeros(0)
        self.y = torch.cat([y for _, y in batches]) if batches else torch.zeros(0, dtype=torch.long)
        self.batch_size = max((len(y) for _, y in batches), default=1)
        self.recalibration = list(recalibration or [])
        self.race_samples = min(max(race_samples, 0), self.num_samples)
        self.z = z
        self.reconstruction = reconstruction
        self._targets: Targets | None = None
        self.images_forwarded = 0
        self.evaluations = 0
        self.full_evaluations = 0
        self._best: Incumbent | None = None
        self._base: tuple[float, Predictions] | None = None  # the same for the whole network, for probes
        self._pairs: Pairs | None = None
        self.last: ScoreRecord | None = None

    @property
    def fold_pairs(self) -> Pairs:
        """The BatchNorms a validation pass folds (`autoprune.inference.foldable_pairs` of the unpruned network),
        found on first use."""
        if self._pairs is None:
            self._pairs = foldable_pairs(self.model)
        return self._pairs

    @property
    def num_samples(self) -> int:
        return len(self.y)

    @property
    def recalibrates(self) -> bool:
        """Whether candidates are BN-recalibrated (then the recalibration pass is the first racing stage)."""
        return bool(self.recalibration) and not self.reconstruction

    def checkpoints(self) -> set[int]:
        """Images into the recalibration pass after which racing tests a candidate early (halfway)."""
        sizes = [len(y) for _, y in self.recalibration]
        half = (len(sizes) + 1) // 2
        return {sum(sizes[:half])} if len(sizes) > 1 else set()

    def prepare(self, keep: np.ndarray, race: bool = False) -> tuple[nn.Module, Predictions]:
        """The pruned, BN-recalibrated (or re-fitted) copy a candidate is scored with, and its first-stage
        predictions; with `race`, the recalibration stops halfway when the candidate is already clearly worse than
        the incumbent (then fewer first-stage predictions come back)."""
        kept = self.graph.kept_channels(self.graph.check_mask(keep))
        if self.reconstruction and self.recalibration:
            self.images_forwarded += self.build_targets()
            net, report = refitted(self.model, kept, targets=self._targets)
            self.images_forwarded += report.images
        else:
            net = apply_kept_channels(copy.deepcopy(self.model), kept)
        net = fast_layout(net)
        if self.recalibrates:
            checkpoints, best = self.checkpoints(), self._best

            def stop(seen: Predictions) -> bool:
                return bool(race and best and len(seen) in checkpoints and self.worse(seen, best[1])[0])

            head = recalibrate_bn(net, self.recalibration, stop=stop)
            self.images_forwarded += len(head)
            return net, head
        return net.eval(), self.predict(net, 0, self.race_samples)

    def build_targets(self) -> int:
        """Compute the unpruned outputs the re-fit of `reconstruction` aims at, once; the images that cost (0 when
        they were already computed, or nothing is re-fitted)."""
        if self._targets is not None or not (self.reconstruction and self.recalibration):
            return 0
        self._targets = Targets(self.model, torch.cat([x for x, _ in self.recalibration]))
        return len(self._targets.x)

    def worse(self, head: Predictions, incumbent: Predictions) -> tuple[bool, float]:
        """Whether `head` is clearly worse than the incumbent's first stage (`clearly_worse` on correctness), and
        the paired difference of their confidences (the estimate's offset)."""
        stop, _ = clearly_worse(head.correct, incumbent.correct, self.z)
        return stop, clearly_worse(head.confidence, incumbent.confidence, math.inf)[1]

    @torch.no_grad()
    def predict(self, net: nn.Module, start: int, stop: int) -> Predictions:
        """Per-image predictions of `net` on validation images `start:stop`."""
        parts = [
            Predictions.of(net(self.x[i : min(i + self.batch_size, stop)]), self.y[i : min(i + self.batch_size, stop)])
            for i in range(start, stop, self.batch_size)
        ]
        self.images_forwarded += max(stop - start, 0)
        return Predictions.cat(parts)

    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The validation images and labels every candidate is scored on, in the scorer's batches."""
        return [
            (self.x[i : i + self.batch_size], self.y[i : i + self.batch_size])
            for i in range(0, self.num_samples, self.batch_size)
        ]

    def validation_batches(self) -> list[tuple[int, int]]:
        """The validation images a candidate that passed the first stage is scored on, as `(start, stop)` batches;
        racing tests it after each but the last."""
        first = 0 if self.recalibrates else self.race_samples
        return [
            (a, min(a + self.batch_size, self.num_samples)) for a in range(first, self.num_samples, self.batch_size)
        ]

    def validate(
        self, net: nn.Module, head: Predictions, incumbent: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, bool]:
        """A prepared network's per-image correctness on the validation images (the first stage's included when it
        was validation images), and whether racing stopped it early: after each validation batch but the last it
        stops when clearly worse than `incumbent` (its correctness on every validation image). The network is
        rewritten for inference (`autoprune.inference`) on the way."""
        net = for_inference(net, inplace=True, pairs=self.fold_pairs)
        parts = [] if self.recalibrates else [head.correct]
        batches = self.validation_batches()
        for n, (start, stop) in enumerate(batches, 1):
            parts.append(self.predict(net, start, stop).correct)
            if incumbent is not None and n < len(batches) and self.behind(torch.cat(parts), incumbent)[0]:
                return torch.cat(parts), True
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool), False

    def behind(self, correct: torch.Tensor, incumbent: torch.Tensor) -> tuple[bool, float]:
        """`clearly_worse` on validation correctness: whether to stop, and the paired mean difference."""
        return clearly_worse(correct, incumbent, self.z)

    def accuracy(self, net: nn.Module, head: Predictions) -> float:
        """Validation accuracy of a prepared network (see `validate`; no racing)."""
        correct, _ = self.validate(net, head)
        return float(correct.double().mean()) if self.num_samples else 0.0

    def settle(
        self, head: Predictions, correct: torch.Tensor | None, stopped: bool, incumbent: Incumbent | None
    ) -> tuple[float, bool]:
        """A candidate's score and whether it is a full validation score, from its first-stage predictions and
        its validation correctness (None: racing stopped it at the first stage; `stopped`: during validation),
        raced against `incumbent`; a full score better than the current incumbent's makes it the incumbent."""
        if correct is None or stopped:
            assert incumbent is not None  # only a candidate raced against an incumbent stops early
            best_score, best_head, best_correct = incumbent
            offset = self.worse(head, best_head)[1] if correct is None else self.behind(correct, best_correct)[1]
            return best_score + offset, False
        value = float(correct.double().mean()) if self.num_samples else 0.0
        self.full_evaluations += 1
        if self._best is None or value > self._best[0]:
            self._best = (value, head, correct)
        return value, True

    def __call__(self, keep: np.ndarray | None) -> float:
        """Score of `keep` (None: the unpruned network, as it is); see the module docstring for racing."""
        if keep is None:
            return (
                float(self.predict(self.model, 0, self.num_samples).correct.double().mean())
                if self.num_samples
                else 0.0
            )
        return self.score(keep).score

    def score(self, keep: np.ndarray) -> ScoreRecord:
        """Score `keep` and say what it cost; also kept as `last`."""
        before, best = self.images_forwarded, self._best
        net, head = self.prepare(keep, race=True)
        correct, stopped = None, False
        if best is None or not self.worse(head, best[1])[0]:
            correct, stopped = self.validate(net, head, None if best is None else best[2])
        value, full = self.settle(head, correct, stopped, best)
        self.evaluations += 1
        self.last = ScoreRecord(score=value, images=self.images_forwarded - before, full=full)
        return self.last

    candidates = 1
    """Candidates worth scoring together (see `prefetch`)."""

    def prefetch(self, keeps: Sequence[np.ndarray]) -> None:
        """Score `keeps` ahead where batching pays (`BatchedScorer`); here each is scored when asked for."""

    def base(self) -> tuple[float, Predictions]:
        """The whole network's score and first-stage predictions, recalibrated as candidates are (for probes)."""
        if self._base is None:
            net, head = self.prepare(self.graph.full_mask())
            self._base = (self.accuracy(net, head), head)
        return self._base

    def prefetch_probes(self, keeps: Sequence[np.ndarray]) -> None:
        """Probe `keeps` ahead where batching pays (`BatchedScorer`); here each is probed when asked for."""

    def probe(self, keep: np.ndarray) -> ScoreRecord:
        """Estimate the score of a mask outside the search (e.g. one group cut alone, for sensitivity): the first
        stage only, paired with the whole network (recalibrated the same way) on the same images. Never an
        incumbent. The whole network's own probe is its `base` score, forwarded once."""
        before = self.images_forwarded
        base_head = self.base()[1]
        keep = self.graph.check_mask(keep)
        head = base_head if keep.all() else self.prepare(keep)[1]
        self.evaluations += 1
        self.last = self._probe_record(head, self.images_forwarded - before)
        return self.last

    def _probe_record(self, head: Predictions, images: int) -> ScoreRecord:
        """A probe's record from its first-stage predictions (see `probe`)."""
        base_score, base_head = self.base()
        value = base_score + float((head.correct.double() - base_head.correct.double()).mean())
        return ScoreRecord(score=value, images=images, full=False)


class PrefetchingScorer(SlicedScorer):
    """A `SlicedScorer` that scores masks ahead, `candidates` at a time (`prefetch`, `prefetch_probes`); a later
    `score` or `probe` of a prefetched mask returns its record (counted when it was scored) at no cost. How a
    vectorised environment's rollouts and the random baselines hand over their candidates together.

    Racing in a batch compares every candidate with the incumbent at the start of the batch; the candidates
    that go on are scored on the validation images, then become the incumbent in turn where they beat it.
    Subclasses say how a batch is scored (`_score_batch`, `_probe_batch`).

    Args:
        candidates: most candidates per batch; the other arguments are `SlicedScorer`'s.

    Attributes:
        passes: candidates of each batch scored so far.
    """

    def __init__(self, *args: Any, candidates: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if candidates < 1:
            raise AutopruneError(f"candidates per batch must be at least 1, got {candidates}")
        self.candidates = candidates
        self.passes: list[int] = []
        self._prefetched: dict[bytes, ScoreRecord] = {}
        self._probes: dict[bytes, ScoreRecord] = {}

    def score(self, keep: np.ndarray) -> ScoreRecord:
        """The prefetched record of `keep` where there is one, else `SlicedScorer.score`."""
        return self._take(self._prefetched, keep) or super().score(keep)

    def probe(self, keep: np.ndarray) -> ScoreRecord:
        """The prefetched probe of `keep` where there is one, else `SlicedScorer.probe`."""
        return self._take(self._probes, keep) or super().probe(keep)

    def prefetch(self, keeps: Sequence[np.ndarray]) -> None:
        """Score `keeps` now, in batches; each later `score` of one of them returns its record."""
        keeps = [self.graph.check_mask(k) for k in keeps]
        for keep, record in zip(keeps, self.score_many(keeps), strict=True):
            self._prefetched[keep.tobytes()] = record

    def prefetch_probes(self, keeps: Sequence[np.ndarray]) -> None:
        """Probe `keeps` now, in batches (first stage only, paired with the whole network, as `probe`); the whole
        network is left to `probe`, whose record of it is the base pass."""
        self.base()
        keeps = [k for k in (self.graph.check_mask(k) for k in keeps) if not k.all()]
        for start in range(0, len(keeps), self._step()):
            batch = keeps[start : start + self._step()]
            self.passes.append(len(batch))
            for keep, record in zip(batch, self._probe_batch(batch), strict=True):
                self.evaluations += 1
                self.images_forwarded += record.images
                self._probes[keep.tobytes()] = record

    def score_many(self, keeps: Sequence[np.ndarray]) -> list[ScoreRecord]:
        """Score `keeps` in batches of `candidates` (racing as the class docstring says)."""
        records: list[ScoreRecord] = []
        for start in range(0, len(keeps), self._step()):
            batch = [self.graph.check_mask(k) for k in keeps[start : start + self._step()]]
            self.passes.append(len(batch))
            records += self._score_batch(batch)
        if records:
            self.last = records[-1]
        return records

    def _take(self, store: dict[bytes, ScoreRecord], keep: np.ndarray) -> ScoreRecord | None:
        """Remove and return the record `store` holds for `keep` (also as `last`), or None."""
        record = store.pop(self.graph.check_mask(keep).tobytes(), None)
        if record is not None:
            self.last = record
        return record

    def _step(self) -> int:
        """Candidates per batch."""
        return self.candidates

    def _commit(
        self, heads: Sequence[Predictions], validated: dict[int, tuple[torch.Tensor, bool]], cost: Sequence[int]
    ) -> list[ScoreRecord]:
        """Records of a batch raced against the incumbent at its start: candidate i has first-stage predictions
        `heads[i]`, where it went on its validation correctness and whether racing stopped it there
        (`validated[i]`), and cost `cost[i]` images. Fully scored candidates become the incumbent in turn where
        they beat it."""
        incumbent = self._best
        records = []
        for i, head in enumerate(heads):
            correct, stopped = validated.get(i, (None, False))
            value, full = self.settle(head, correct, stopped, incumbent)
            self.evaluations += 1
            self.images_forwarded += cost[i]
            records.append(ScoreRecord(score=value, images=cost[i], full=full))
        return records

    def _score_batch(self, keeps: list[np.ndarray]) -> list[ScoreRecord]:
        raise NotImplementedError

    def _probe_batch(self, keeps: list[np.ndarray]) -> list[ScoreRecord]:
        raise NotImplementedError


__all__ = ["PrefetchingScorer", "ScoreRecord", "SlicedScorer", "clearly_worse"]
