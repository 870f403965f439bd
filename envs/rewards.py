"""Reward pieces of the channel-pruning CMDP, as small named functions.

Formulas (``s`` = score of the projected, feasible mask; ``b`` = best feasible score seen before it, ``None``
before the first evaluation; ``v`` = violation of the raw proposal, the largest relative excess over a budget,
``>= 0``; ``g`` = the signed excess, ``< 0`` when the proposal leaves budget unused; ``λ`` = Lagrange multiplier):

- ``self_competition(s, b, τ) = tanh((s - b) / τ)``, and ``0`` when ``b is None``. Smooth in how far a mask beats
  or trails the best so far; ``τ`` is the score difference that earns about ±0.76.
- ``adaptive_tau(recent, τ0, b) = max(τ0, std(recent), b - median(recent))`` over the last 32 scores: the
  environment's temperature. A fixed small τ saturates (every mask a little worse than the best earns -1, and PPO
  sees no difference between masks); scaling by the spread of the agent's own recent scores keeps the ranking
  information, and the gap between the best and the typical recent score keeps it when the policy has drifted
  into a region of uniformly poor masks (their spread is small, their gap to the best large: measured on
  ResNet-56 at 30% FLOPs, where 2 of 3 searches earned -1.00 for their last 150 masks,
  `bench/results/v2/quality_resnet56.md`). The median recent mask then earns about -0.76 and better ones less.
- ``sign_competition(s, b) = +1 if s > b else -1``, and ``0`` when ``b is None``.
- ``lagrangian_penalty(v, λ) = λ · v``, subtracted from the reward.
- ``dual_ascent(λ, g, η) = max(0, λ + η · g)``: the multiplier grows while proposals break the budget and decays
  while they leave budget unused, so it settles where the policy proposes masks at the budget.

The environment's reward is ``competition(s, b) - lagrangian_penalty(v, λ)`` with ``λ`` taken before the update.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

CompetitionReward = Callable[[float, float | None, float], float]
"""``(score, best, tau) -> reward`` for a feasible mask's score against the best one seen before it."""


def self_competition(score: float, best: float | None, tau: float) -> float:
    """``tanh((score - best) / tau)``: how far `score` beats (> 0) or trails (< 0) the best so far.

    Args:
        score: score of the mask just evaluated.
        best: best score before this one; None on the first evaluation, which earns 0.
        tau: temperature in score units (> 0).
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if best is None:
        return 0.0
    return math.tanh((score - best) / tau)


def sign_competition(score: float, best: float | None, tau: float = 0.0) -> float:
    """+1 when `score` strictly beats `best`, -1 otherwise, 0 on the first evaluation; `tau` is unused."""
    if best is None:
        return 0.0
    return 1.0 if score > best else -1.0


RECENT_SCORES = 32
"""How many recent scores set the adaptive temperature."""


def adaptive_tau(recent: list[float], floor: float, best: float | None = None) -> float:
    """``max(floor, std(recent), best - median(recent))``: the self-competition temperature scaled to the spread
    of recent scores and to how far they trail the best."""
    if len(recent) < 2:
        return floor
    gap = best - statistics.median(recent) if best is not None else 0.0
    return max(floor, statistics.pstdev(recent), gap)


def lagrangian_penalty(violation: float, lam: float) -> float:
    """``lam * violation``: the cost of a proposal over budget (`violation` >= 0, `lam` >= 0)."""
    return lam * max(violation, 0.0)


def dual_ascent(lam: float, excess: float, lr: float) -> float:
    """One projected dual-ascent step on the multiplier: ``max(0, lam + lr * excess)``."""
    return max(0.0, lam + lr * excess)


REWARDS: dict[str, CompetitionReward] = {"self_competition": self_competition, "sign": sign_competition}
"""Competition rewards by the name `ChannelPruneEnv(reward=...)` takes."""

__all__ = ["REWARDS", "CompetitionReward", "dual_ascent", "lagrangian_penalty", "self_competition", "sign_competition"]
