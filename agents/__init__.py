"""Agents that search keep-masks: the GAT policy for SB3's PPO, its training loop, and baselines."""

from .gat import GATEncoder
from .policy import GATPolicy, GraphFeaturesExtractor, batch_graphs
from .ppo import EvaluationBudget, EvaluationCallback, make_ppo, train
from .warm_start import WarmStart, ranking_logits, ranking_warm_start, start_masks, warm_start

__all__ = [
    "EvaluationBudget",
    "EvaluationCallback",
    "GATEncoder",
    "GATPolicy",
    "GraphFeaturesExtractor",
    "WarmStart",
    "batch_graphs",
    "make_ppo",
    "ranking_logits",
    "ranking_warm_start",
    "start_masks",
    "train",
    "warm_start",
]
