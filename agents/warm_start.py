"""Where the agent starts: torch-pruning's global ranking as the policy's most likely mask.

A policy that starts from coin flips (or from independent magnitude-weighted coins) spends its whole budget of
a few hundred evaluations rediscovering what a global importance ranking gives in one: measured on CIFAR-10
ResNet-20, the agent then ended below the one-evaluation global ranking (bench/results). So the agent starts at
the ranking instead, and PPO searches *around* it:

- the per-decision starting logits have the ranking's mask as their mode, with a confidence that grows with the
  channel's distance from the cut: channels near the cut are uncertain (flipped often), far ones almost never;
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


def ranking_logits(keep: np.ndarray, importance: np.ndarray, margin: float = 1.0, slope: float = 2.0) -> np.ndarray:
    """Keep logits with mode `keep`: ``±(margin + slope · |log importance − log cut|)``, clipped to ±6.

    `cut` is the importance of the most important dropped channel (the ranking's threshold), so a channel at the
    cut flips with probability ``sigmoid(-margin)`` (0.27 by default) and one e times more or less important
    than the cut with ``sigmoid(-margin - slope)`` (0.05).
    """
    keep = np.asarray(keep).astype(bool)
    log_importance = np.log(np.maximum(np.asarray(importance, dtype=np.float64), 1e-12))
    cut = log_importance[~keep].max() if (~keep).any() else log_importance.min()
    confidence = np.minimum(margin + slope * np.abs(log_importance - cut), 6.0)
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
