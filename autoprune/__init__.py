"""autoprune: search which channels of a trained network to remove under a resource budget.

The Python API, imported on first use (so that `autoprune --help` stays fast):

- `autoprune.prune(model, example_inputs, train_loader=..., val_loader=..., target_flops=0.5)`: search a plan
  for a model in memory; returns a `SearchResult` (`.plan`, `.pruned_model`, `.metrics`, `.save(folder)`).
- `autoprune.Plan.load(path).apply(model)`: a saved plan applied to a model.
- `autoprune.load_pruned(path, model=None)`: a pruned model written by a search, `apply` or `SearchResult.save`.
- `autoprune.recover(pruned, bundle, ...)`: BN recalibration and fine-tuning, with accuracy after each stage.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "prune": "autoprune.api",
    "SearchResult": "autoprune.api",
    "Plan": "autoprune.plan",
    "load_pruned": "autoprune.export",
    "recover": "autoprune.recovery",
    "AutopruneError": "autoprune.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'autoprune' has no attribute {name!r}")
