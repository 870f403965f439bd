"""The channel-pruning constrained MDP as a gymnasium environment, registered as `autoprune/ChannelPrune-v1`."""

import gymnasium

from .channel_prune import ChannelPruneEnv, ScoreFn
from .rewards import REWARDS, dual_ascent, lagrangian_penalty, self_competition, sign_competition

ENV_ID = "autoprune/ChannelPrune-v1"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="autoprune.envs.channel_prune:ChannelPruneEnv")

__all__ = [
    "ENV_ID",
    "REWARDS",
    "ChannelPruneEnv",
    "ScoreFn",
    "dual_ascent",
    "lagrangian_penalty",
    "self_competition",
    "sign_competition",
]
