"""Score several candidates at once on a multi-core CPU: one candidate per core, each on its own thread.

A pruned small network scales poorly over a CPU's cores: its convolutions are too small to split well. On the
2-core machine the search runs on, one pruned ResNet-56 candidate took 3.72 s with two torch threads, and two
candidates side by side with one thread each took 2.85 s per candidate (`bench/results/throughput.md`).
`ThreadedScorer` does that inside one process: torch's kernels release Python's lock, so worker threads run
their candidates' passes in parallel while sharing the model and the data.

It is a `PrefetchingScorer`: the same recalibration, racing and accounting as scoring one candidate at a time,
except that every candidate of a batch races against the incumbent at the start of the batch. Workers share the
unpruned model read-only (each cuts its own copy) and a candidate's validation pieces share its network (an
eval-mode forward pass changes nothing). The BatchNorms to fold are found once, on the calling thread: `torch.fx`
patches every module's call while it traces, in every thread.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from autoprune.inference import for_inference
from autoprune.masking import Predictions
from autoprune.scoring import PrefetchingScorer, ScoreRecord

T = TypeVar("T")
R = TypeVar("R")


class ThreadedScorer(PrefetchingScorer):
    """A `PrefetchingScorer` that scores the candidates of a batch in parallel threads.

    Args:
        candidates: candidates scored at once (worker threads).
        threads: torch intra-op threads of each worker (default: the caller's torch threads shared out, at least
            one each).
        The other arguments are `SlicedScorer`'s.
    """

    def __init__(self, *args: Any, candidates: int = 2, threads: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, candidates=candidates, **kwargs)
        self.threads = threads or max(1, torch.get_num_threads() // candidates)
        self._pool: ThreadPoolExecutor | None = None

    def _map(self, work: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """`work` on every item, in parallel worker threads (without gradients), results in order."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.candidates, thread_name_prefix="autoprune-scorer")

        def run(item: T) -> R:
            torch.set_num_threads(self.threads)  # per thread: a new thread starts with torch's default
            with torch.no_grad():
                return work(item)

        return list(self._pool.map(run, items))

    def _worker(self) -> ThreadedScorer:
        """A shallow copy that counts its own images: what a worker scores one candidate with. It shares the
        model, the data, the re-fit targets and the incumbent; the caller adds its count to the total."""
        worker = copy.copy(self)
        worker.images_forwarded = 0
        return worker

    def _prepared(self, keeps: Sequence[np.ndarray], race: bool) -> list[tuple[nn.Module | None, Predictions, int]]:
        """Each candidate's first-stage predictions, images forwarded, and (with `race`, where it was not clearly
        worse than the incumbent) its prepared network rewritten for inference, in parallel."""
        incumbent, pairs = self._best, self.fold_pairs  # found here: torch.fx traces on this thread only

        def prepare(keep: np.ndarray) -> tuple[nn.Module | None, Predictions, int]:
            worker = self._worker()
            net, head = worker.prepare(keep, race=race)
            going = race and (incumbent is None or not self.worse(head, incumbent[1])[0])
            return for_inference(net, inplace=True, pairs=pairs) if going else None, head, worker.images_forwarded

        setup = self.build_targets()  # shared, built here; counted with the first candidate, as one at a time does
        prepared = self._map(prepare, keeps)
        net, head, images = prepared[0]
        return [(net, head, images + setup), *prepared[1:]]

    def _probe_batch(self, keeps: list[np.ndarray]) -> list[ScoreRecord]:
        return [self._probe_record(head, images) for _, head, images in self._prepared(keeps, race=False)]

    def _score_batch(self, keeps: list[np.ndarray]) -> list[ScoreRecord]:
        """Candidates prepared in parallel, then validated batch by batch: each validation batch of the candidates
        still racing is cut into as many pieces as keep every worker busy (one candidate left still runs on all of
        them), and racing tests each after every batch but the last."""
        prepared = self._prepared(keeps, race=True)
        incumbent = None if self._best is None else self._best[2]
        heads = [head for _, head, _ in prepared]
        nets = {i: net for i, (net, _, _) in enumerate(prepared) if net is not None}
        parts = {i: [] if self.recalibrates else [heads[i].correct] for i in nets}
        stopped: set[int] = set()
        cost = [images for _, _, images in prepared]
        batches = self.validation_batches()

        def predict(piece: tuple[int, int, int]) -> torch.Tensor:
            i, a, b = piece
            return self._worker().predict(nets[i], a, b).correct  # a worker copy: the images are counted below

        for n, (start, stop) in enumerate(batches, 1):
            live = [i for i in nets if i not in stopped]
            if not live:
                break
            bounds = np.linspace(start, stop, max(1, self.candidates // len(live)) + 1).round().astype(int)
            pieces = [(i, int(a), int(b)) for i in live for a, b in itertools.pairwise(bounds) if b > a]
            for (i, a, b), part in zip(pieces, self._map(predict, pieces), strict=True):
                parts[i].append(part)
                cost[i] += b - a
            if incumbent is not None and n < len(batches):
                stopped |= {i for i in live if self.behind(torch.cat(parts[i]), incumbent)[0]}
        validated = {
            i: (torch.cat(p) if p else torch.zeros(0, dtype=torch.bool), i in stopped) for i, p in parts.items()
        }
        return self._commit(heads, validated, cost)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the worker threads behind (each copy starts its own)."""
        return {**self.__dict__, "_pool": None}


__all__ = ["ThreadedScorer"]
