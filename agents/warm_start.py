"""Where the agent starts: a measured allocation of widths across groups, as the policy's most likely mask.

A policy that starts from coin flips spends its whole budget of a few hundred evaluations rediscovering what a
cheap rule gives in one; an agent that starts from torch-pruning's global ranking cuts residual streams channel
by channel, which costs far more accuracy than their FLOPs suggest. So the agent starts where measurement says:

- the cheap plans a practitioner would try first are scored (`start_masks`: torch-pruning's global ranking,
  the structural rule and, when the budget allows, the sensitivity allocation, whose probes count against the
  budget) and the best of them is the start;
- the policy is parametrised per group (`autoprune.agents.policy.DecisionLogits`): each group's learned cut
  starts where the start mask cuts it, least important channels first, so the start mask is the policy's mode,
  and PPO moves whole groups' widths as well as single channels;
- so the agent's best is never below the best cheap plan, and the self-competition reward asks from the start
  for masks that beat it; the measured sensitivities are also node features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from autoprune.constraints import Constraints
from autoprune.graph.channel_graph import ChannelGraph

from .baselines import drop_lowest, group_importance
from .baselines.sensitivity import Sensitivity, allocate
from .baselines.structural import structural_mask


@dataclass(frozen=True)
class WarmStart:
    """Where the agent starts.

    Attributes:
        importance: normalised group importance of every decision (higher is more important).
        keep: the start's feasible mask (the policy's mode).
        logits: per-decision starting keep logits of a policy without group terms, with `keep` as their mode.
        group_terms: `DecisionLogits` group arguments whose mode is `keep` (per-decision logits start at 0).
        sensitivity: the measured drops the allocation came from, if any.
    """

    importance: np.ndarray
    keep: np.ndarray
    logits: list[float]
    group_terms: dict | None = None
    sensitivity: Sensitivity | None = None


def group_terms(graph: ChannelGraph, keep: np.ndarray, importance: np.ndarray, slope: float = 0.3) -> dict:
    """`DecisionLogits` group arguments whose mode keeps, in each group, as many channels as `keep` does, the
    most important first (which is `keep` itself when it keeps each group's top channels).

    A gentle `slope` (0.3 logits per channel of rank distance from the cut) lets a group's kept count vary by a
    few channels between samples: with a steep one (1.0) PPO's clipped updates could move a group's cut by only
    a fraction of a channel each, and the group task of tests/test_learning.py was solved in 1 of 3 seeds
    instead of 3 of 3 (with `make_ppo`'s clip range 0.5).
    """
    groups, rank, cut = [], [], []
    for i, g in enumerate(graph.prunable_groups):
        part = slice(g.offset, g.offset + g.size)
        groups += [i] * g.size
        rank += np.argsort(np.argsort(importance[part], kind="stable"), kind="stable").tolist()
        cut.append(float(g.size - keep[part].sum()))
    return {"groups": groups, "rank": [float(r) for r in rank], "init_cut": cut, "slope": slope}


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


def start_masks(
    graph: ChannelGraph, constraints: Constraints, importance: np.ndarray, sensitivity: Sensitivity | None = None
) -> dict[str, np.ndarray]:
    """The cheap plans the agent may start from, by name, most informed first: the sensitivity allocation where
    `sensitivity` was measured, the structural rule, torch-pruning's global ranking (`drop_lowest`)."""
    starts = {} if sensitivity is None else {"sensitivity": allocate(graph, constraints, sensitivity, importance)}
    starts["structural"] = structural_mask(graph, constraints)
    starts["global-magnitude"] = drop_lowest(graph, constraints, importance)
    return starts


def warm_start(
    graph: ChannelGraph, keep: np.ndarray, importance: np.ndarray, sensitivity: Sensitivity | None = None
) -> WarmStart:
    """A start at `keep`: the policy's mode keeps as many channels per group as `keep`, the most important
    (by `importance`) first."""
    return WarmStart(
        importance=importance,
        keep=keep,
        logits=ranking_logits(keep, importance).tolist(),
        group_terms=group_terms(graph, keep, importance),
        sensitivity=sensitivity,
    )


def ranking_warm_start(
    model: nn.Module,
    example_input: torch.Tensor,
    graph: ChannelGraph,
    constraints: Constraints,
    sensitivity: Sensitivity | None = None,
) -> WarmStart:
    """A start without scoring: the allocation from `sensitivity` where given, else torch-pruning's global
    magnitude ranking; channels within a group are ordered by the ranking's importance (`group_importance`)."""
    importance = group_importance(model, example_input, graph, "magnitude")
    starts = start_masks(graph, constraints, importance, sensitivity)
    keep = starts["sensitivity" if sensitivity is not None else "global-magnitude"]
    return warm_start(graph, keep, importance, sensitivity)
