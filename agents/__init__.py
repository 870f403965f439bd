"""Agents that search keep-masks: the GAT policy for SB3's PPO, its training loop, and baselines."""

from .gat import GATEncoder
from .policy import GATPolicy, GraphFeaturesExtractor, batch_graphs
from .ppo import EvaluationBudget, EvaluationCallback, make_ppo, prior_logits, train

__all__ = [
    "EvaluationBudget",
    "EvaluationCallback",
    "GATEncoder",
    "GATPolicy",
    "GraphFeaturesExtractor",
    "batch_graphs",
    "make_ppo",
    "prior_logits",
    "train",
]
