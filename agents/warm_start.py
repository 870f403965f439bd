"""Where the agent starts: torch-pruning's global ranking as the policy's most likely mask.

A policy that starts from coin flips (or from independent magnitude-weighted coins) spends its whole budget of
a few hundred evaluations rediscovering what a global importance ranking gives in one: measured on CIFAR-10
ResNet-20, the agent then ended below the one-evaluation global ranking (bench/results). So the agent starts at
the ranking instead, and PPO searches *around* it:

- the per-decision starting logits have the ranking's mask as their mode, with a confidence that grows with the
  channel's rank distance from the cut: a sample flips about 8 channels, near the cut; far ones almost never;
- the first evaluation is that mode itself, so the self-competition reward asks from the start for masks that
  beat the ranking;
- the projection onto the budget drops the lowest-importance channels, the same order the ranking uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from autoprune.constraints import Constraints
from autoprune.graph.channel_graph import ChannelGraph

from .baselines import drop_lowest, group_importance


@dataclass(frozen=True)
class WarmStart:
    """The ranking the agent starts from.

    Attributes:
        importance: normalised group importance of every decision (higher is more important).
        keep: the ranking's feasible mask (lowest importance dropped until the budget holds).
        logits: per-decision starting keep logits of the policy, with `keep` as their mode.
    """

    importance: np.ndarray
    keep: np.ndarray
    logits: list[float]


def ranking_logits(keep: np.ndarray, importance: np.ndarray, margin: float = 2.0, flips: float = 8.0) -> np.ndarray:
    """Keep logits with mode `keep`: ``±(margin + r / s)``, clipped to ±8, `r` = ranks from the ranking's cut.

    Distances are counted in ranks of `importance` (normalised importances crowd around 1, so ratios of them
    say little), and the slope `s` is set so that a sample differs from `keep` in about `flips` channels:
    ``E[flips] ≈ 2 s · log(1 + e^-margin)``. As many kept as dropped channels are within any rank distance of
    the cut, so samples keep the mode's cost on average.
    """
    keep = np.asarray(keep).astype(bool)
    if keep.all() or not keep.any():
        return np.where(keep, 8.0, -8.0)
    rank = np.empty(len(keep))
    rank[np.argsort(np.asarray(importance, dtype=np.float64), kind="stable")] = np.arange(len(keep))
    cut = rank[~keep].max() + 0.5  # between the most important dropped channel and the next one up
    slope = flips / (2 * np.log1p(np.exp(-margin)))
    confidence = np.minimum(margin + (np.abs(rank - cut) - 0.5) / slope, 8.0)
    return np.where(keep, confidence, -confidence)


def ranking_warm_start(
    model: nn.Module,
    example_input: torch.Tensor,
    graph: ChannelGraph,
    constraints: Constraints,
) -> WarmStart:
    """Torch-pruning's global magnitude ranking (see `group_importance`) as the agent's start."""
    importance = group_importance(model, example_input, graph, "magnitude")
    keep = drop_lowest(graph, constraints, importance)
    return WarmStart(importance=importance, keep=keep, logits=ranking_logits(keep, importance).tolist())
