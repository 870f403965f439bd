"""The Python API for a model in memory: `prune` searches a plan for it and returns the pruned model.

```python
result = autoprune.prune(model, example_inputs, train_loader=train, val_loader=val, target_flops=0.5)
small = result.pruned_model  # recovered (BN recalibrated); result.plan, result.metrics, result.save("runs/x")
```

It runs the same search as `autoprune search` (`autoprune.search.runner.search_problem`) on a `Problem` built
from the model and the loaders' batches instead of from names.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.constraints import Constraints, check_feasible
from autoprune.data._messages import one_line
from autoprune.errors import AutopruneError
from autoprune.export import IN_MEMORY, save_pruned
from autoprune.graph.channel_graph import ChannelGraph
from autoprune.plan import Plan

ScoreFn = Callable[[nn.Module], float]
"""A user's score of a pruned candidate (higher is better), e.g. accuracy on their own validation data."""


@dataclass
class SearchResult:
    """What `prune` found."""

    plan: Plan
    """Which channels to keep (`plan.metrics` holds `metrics` too); `plan.save(path)` writes it."""
    pruned_model: nn.Module
    """The pruned model after recovery (BN recalibration, fine-tuning where asked), in eval mode."""
    metrics: dict[str, Any]
    """Accuracies per stage (`val_acc_pruned`, `test_acc_recalibrated`...) and what the search cost."""
    summary: str
    """The run's summary.md."""
    num_classes: int
    run_dir: Path | None = None
    """The run directory (metrics.csv, TensorBoard logs) when `out` was given."""

    def apply(self, model: nn.Module) -> nn.Module:
        """`model` pruned by the plan (a copy, not recovered): for the same network with other weights."""
        return self.plan.apply(model)

    def save(self, folder: str | Path) -> Path:
        """Write plan.json, pruned.pt (reload with `autoprune.load_pruned(path, model)`) and summary.md."""
        folder = Path(folder)
        self.plan.save(folder / "plan.json")
        save_pruned(folder / "pruned.pt", self.pruned_model, self.plan, self.num_classes)
        (folder / "summary.md").write_text(self.summary)
        return folder


def prune(
    model: nn.Module,
    example_inputs: torch.Tensor,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any],
    test_loader: Iterable[Any] | None = None,
    *,
    target_flops: float | None = 0.5,
    target_params: float | None = None,
    method: str = "rl",
    evaluations: int = 300,
    finetune_epochs: float = 0.0,
    score_fn: ScoreFn | None = None,
    ignore: Sequence[str] = (),
    seed: int = 0,
    device: str = "auto",
    eval_samples: int = 1000,
    out: str | Path | None = None,
    progress: bool = True,
) -> SearchResult:
    """Search which channels of `model` to remove under the budget, and return the plan and the pruned model.

    `model` itself is left as it is. The loaders' batches are read once and held in memory, as given (already
    normalised); see `autoprune.data.loaders.bundle_from_loaders`.

    Args:
        model: a trained classifier taking images `(N, C, H, W)` and giving logits `(N, classes)`.
        example_inputs: one batch of inputs, e.g. `torch.zeros(1, 3, 32, 32)` (traces the model).
        train_loader: `(images, labels)` batches: BN recalibration of candidates and of the result, fine-tuning.
        val_loader: batches the search scores candidates on.
        test_loader: batches the result is measured on after the search (None: `val_loader`'s again).
        target_flops: keep at most this fraction of the FLOPs (MACs).
        target_params: keep at most this fraction of the parameters.
        method: `rl` (the GAT + PPO agent) or a baseline (`structural`, `global-magnitude`...).
        evaluations: candidates (and probes) the search may score.
        finetune_epochs: fine-tune the result on the train batches for this many epochs.
        score_fn: scores a pruned, BN-recalibrated candidate instead of accuracy on `val_loader`.
        ignore: modules whose output channels are kept.
        seed: seeds the search and the recovery.
        device: `cpu`, `cuda`, `cuda:N` or `auto`.
        eval_samples: validation samples scoring each candidate.
        out: run directory to keep (plan, pruned model, metrics.csv, summary.md); None keeps nothing on disk.
        progress: progress bar, and one line on stderr per step after the search.
    """
    from autoprune.data.loaders import bundle_from_loaders
    from autoprune.problem import ProblemConfig, build_problem, resolve_device
    from autoprune.search.config import SearchConfig
    from autoprune.search.runner import search_problem

    if not isinstance(model, nn.Module):
        raise AutopruneError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() != 4:
        raise AutopruneError("example_inputs must be one batch of images, a tensor of shape (N, C, H, W)")
    problem_config = ProblemConfig(
        model=IN_MEMORY, dataset=IN_MEMORY, device=device, eval_samples=eval_samples, ignore=tuple(ignore)
    )
    with tempfile.TemporaryDirectory(prefix="autoprune-") as scratch:
        config = SearchConfig(
            problem=problem_config, target_flops=target_flops, target_params=target_params, method=method,
            evaluations=evaluations, seed=seed, finetune_epochs=finetune_epochs,
            out=str(out) if out is not None else str(Path(scratch) / "run"),
        )  # fmt: skip
        config.validate()
        dev = resolve_device(device)
        bundle = bundle_from_loaders(train_loader, val_loader, test_loader)
        if tuple(bundle.input_shape) != tuple(example_inputs.shape[1:]):
            raise AutopruneError(
                f"the loaders give images of shape {tuple(bundle.input_shape)}, example_inputs "
                f"{tuple(example_inputs.shape[1:])}: give an example of the model's inputs"
            )
        net = copy.deepcopy(model).to(dev).eval()
        try:
            with torch.no_grad():
                num_classes = int(net(example_inputs.to(dev)).shape[-1])
        except (RuntimeError, ValueError, IndexError, TypeError, AttributeError) as exc:
            raise AutopruneError(f"the model fails on example_inputs: {one_line(exc)[:160]}") from None
        bundle = dataclasses.replace(bundle, num_classes=num_classes)  # checks the labels fit the logits
        problem = build_problem(problem_config, net, bundle, dev)
        if score_fn is not None:
            problem.evaluator = FunctionScorer(net, problem.graph, score_fn, problem.evaluator.recalibration)
            problem.base_score = problem.evaluator(None)
        constraints = Constraints(flops=target_flops, params=target_params)
        check_feasible(problem.graph, constraints)
        outcome = search_problem(config, problem, constraints, progress)
        summary = (Path(config.out) / "summary.md").read_text()
    return SearchResult(
        plan=outcome.plan,
        pruned_model=outcome.pruned.eval(),
        metrics=outcome.metrics,
        summary=summary,
        num_classes=num_classes,
        run_dir=Path(out) if out is not None else None,
    )


class FunctionScorer:
    """Scores keep-masks with a user's `score_fn` on the pruned (and BN-recalibrated) network.

    Has the interface of `autoprune.scoring.SlicedScorer` the search uses: `score`, `probe` and `__call__`.
    """

    def __init__(
        self, model: nn.Module, graph: ChannelGraph, score_fn: ScoreFn, recalibration: list | None = None
    ) -> None:
        self.model = model
        self.graph = graph
        self.score_fn = score_fn
        self.recalibration = list(recalibration or [])

    def __call__(self, keep: np.ndarray | None) -> float:
        """Score of `keep` (None: the unpruned network)."""
        if keep is None:
            return self._call(self.model)
        return self.score(keep).score

    def score(self, keep: np.ndarray):
        """Score the pruned network of `keep`."""
        from autoprune.masking import recalibrate_bn
        from autoprune.pruning import apply_kept_channels
        from autoprune.scoring import ScoreRecord

        kept = self.graph.kept_channels(self.graph.check_mask(keep))
        net = apply_kept_channels(copy.deepcopy(self.model), kept).eval()
        if self.recalibration:
            recalibrate_bn(net, self.recalibration)
        images = sum(len(y) for _, y in self.recalibration)
        return ScoreRecord(score=self._call(net), images=images, full=True)

    probe = score

    def _call(self, net: nn.Module) -> float:
        value = self.score_fn(net)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise AutopruneError(f"score_fn must return a number, got {type(value).__name__}") from None
        if not np.isfinite(value):
            raise AutopruneError(f"score_fn returned {value}; it must return a finite number")
        return value
