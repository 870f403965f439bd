"""Network -> channel graph: coupled channel groups, decisions, costs and node features."""

from autoprune.graph.build import build_channel_graph
from autoprune.graph.channel_graph import ChannelGraph, ChannelGroup, Layer

__all__ = ["ChannelGraph", "ChannelGroup", "Layer", "build_channel_graph"]
