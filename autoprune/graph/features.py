"""Node features and edges of the channel graph, as arrays, a torch-geometric `Data`, or a networkx graph.

Nodes: first every traced node (modules and functional ops such as adds and concats), then one node per
decision (a prunable channel). Edges, both directions: the data flow between traced nodes, and each decision to
every module it touches. The edge count is the number of (channel, module) incidences, linear in the channels.
The schema is documented in `docs/graph-schema.md`.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import torch

from autoprune.graph.channel_graph import LAYER_KINDS, ChannelGraph

FEATURES = (
    ["is_channel", "is_layer"]
    + [f"kind_{k}" for k in LAYER_KINDS]
    + [
        "depth",
        "kernel",
        "stride",
        "flops_share",
        "params_share",
        "weight_l1",
        "weight_l2",
        "bn_gamma",
        "act_mean",
        "width",
        "producers",
        "merged",
        "rank",
        "sensitivity",
        "keep",
        "flops_ratio",
        "target",
    ]
)
"""Column names of the node feature matrix."""

KEEP, FLOPS_RATIO, TARGET = FEATURES.index("keep"), FEATURES.index("flops_ratio"), FEATURES.index("target")


class GraphFeatures:
    """Builds node features for any keep-mask of one graph; the static part is computed once.

    Args:
        graph: the channel graph.
        sensitivity: per prunable group, the measured accuracy drop of cutting it alone to half its width
            (`autoprune.agents.baselines.sensitivity`); the feature is 0 where none was measured.

    Attributes:
        edge_index: (2, E) int64 edges, both directions.
        decision_nodes: node index of each decision.
        num_nodes: traced nodes plus decisions.
    """

    def __init__(self, graph: ChannelGraph, sensitivity: np.ndarray | None = None) -> None:
        self.graph = graph
        trace = graph.trace
        n_traced, n_dec = len(trace.node_names), graph.num_decisions
        self.num_nodes = n_traced + n_dec
        self.decision_nodes = np.arange(n_traced, n_traced + n_dec)

        pairs = set(trace.flow_edges)
        for g in graph.prunable_groups:
            for m in g.members:
                if m.module:
                    pairs.update((int(g.offset + r + n_traced), m.node) for r in np.unique(m.root_idx))
        edges = np.asarray(sorted(pairs), dtype=np.int64).reshape(-1, 2).T
        self.edge_index = np.unique(np.concatenate([edges, edges[::-1]], axis=1), axis=1)

        x = np.zeros((self.num_nodes, len(FEATURES)), dtype=np.float32)
        col = {name: i for i, name in enumerate(FEATURES)}
        max_depth = max((layer.depth for layer in graph.layers.values()), default=1) or 1
        max_width = max((layer.out_channels for layer in graph.layers.values()), default=1) or 1
        for i, name in enumerate(trace.node_names):
            layer = graph.layers.get(name)
            x[i, col["is_layer"]] = 1
            if layer is None:
                x[i, col["kind_other"]] = 1
                continue
            x[i, col[f"kind_{layer.kind}"]] = 1
            x[i, col["depth"]] = layer.depth / max_depth
            x[i, col["kernel"]] = layer.kernel / 9
            x[i, col["stride"]] = layer.stride / 2
            x[i, col["flops_share"]] = layer.flops / max(graph.base_flops, 1)
            x[i, col["params_share"]] = layer.params / max(graph.base_params, 1)
            x[i, col["width"]] = layer.out_channels / max_width

        full = graph.full_mask()
        flops_marginal = graph.flops_cost.marginal(full)
        params_marginal = graph.params_cost.marginal(full)
        rows = self.decision_nodes
        x[rows, col["is_channel"]] = 1
        max_group = max((g.size for g in graph.prunable_groups), default=1)
        for g in graph.prunable_groups:
            root = graph.layers.get(g.root)
            sl = rows[g.offset : g.offset + g.size]
            if root is not None:
                x[sl, col[f"kind_{root.kind}"]] = 1
                x[sl, col["depth"]] = root.depth / max_depth
                x[sl, col["kernel"]] = root.kernel / 9
                x[sl, col["stride"]] = root.stride / 2
            x[sl, col["width"]] = g.size / max_group
            x[sl, col["producers"]] = np.log1p(graph.producers(g)) / np.log(2) / 4  # 1 producer: 0.25
            x[sl, col["merged"]] = float(graph.crosses_merge(g))
            l1 = graph.channel_stats[g.offset : g.offset + g.size, 0]
            x[sl, col["rank"]] = (np.argsort(np.argsort(l1, kind="stable"), kind="stable") + 0.5) / g.size
        if sensitivity is not None:
            drops = np.maximum(np.asarray(sensitivity, dtype=np.float64), 0.0)
            scale = drops.max() if drops.size and drops.max() > 0 else 1.0
            for g, drop in zip(graph.prunable_groups, drops / scale, strict=True):
                x[rows[g.offset : g.offset + g.size], col["sensitivity"]] = drop
        # A channel's share relative to the average channel (1.0), log-compressed: stream channels reach ~25.
        x[rows, col["flops_share"]] = np.log1p(flops_marginal / max(graph.base_flops, 1) * max(n_dec, 1))
        x[rows, col["params_share"]] = np.log1p(params_marginal / max(graph.base_params, 1) * max(n_dec, 1))
        stats = np.log1p(graph.channel_stats) if n_dec else np.zeros((0, 4))
        x[rows, col["weight_l1"] : col["act_mean"] + 1] = stats
        self.static = x
        self._layer_rows = np.asarray(
            [i for i, n in enumerate(trace.node_names) if n in graph.layers and graph.layers[n].out_channels]
        )
        names = list(graph.layers)
        slot = {n: i for i, n in enumerate(names)}
        self._layer_slots = np.asarray([slot[trace.node_names[i]] for i in self._layer_rows], dtype=np.int64)
        self._layer_width = np.asarray([graph.layers[names[s]].out_channels for s in self._layer_slots], float)

    def node_features(self, keep: np.ndarray, target: float = 0.0) -> np.ndarray:
        """(num_nodes, len(FEATURES)) float32 features for `keep` and the FLOPs target ratio."""
        keep = np.asarray(keep, dtype=np.float32)
        x = self.static.copy()
        x[self.decision_nodes, KEEP] = keep
        if len(self._layer_rows):
            _, kept_out = self.graph.flops_cost.kept(keep)
            x[self._layer_rows, KEEP] = kept_out[self._layer_slots] / np.maximum(self._layer_width, 1)
        x[:, FLOPS_RATIO] = self.graph.flops(keep) / max(self.graph.base_flops, 1)
        x[:, TARGET] = target
        return x

    def to_pyg(self, keep: np.ndarray | None = None, target: float = 0.0):
        """A `torch_geometric.data.Data` with `x`, `edge_index` and `decision_index`."""
        from torch_geometric.data import Data

        keep = self.graph.full_mask() if keep is None else keep
        return Data(
            x=torch.from_numpy(self.node_features(keep, target)),
            edge_index=torch.from_numpy(self.edge_index),
            decision_index=torch.from_numpy(self.decision_nodes),
        )


def to_networkx(graph: ChannelGraph) -> nx.DiGraph:
    """Layers, functional ops and decision channels as a networkx graph with attributes for export.

    Layer nodes are named by module name (ops as `op:<id>:<kind>`), channel nodes `"<root>#<channel>"`.
    Edges: `flow` (data flow between layers) and `touches` (channel -> module, with `side` "out"/"in").
    """
    g = nx.DiGraph(model=graph.model_name, fingerprint=graph.fingerprint)
    names = graph.trace.node_names
    for name in names:
        layer = graph.layers.get(name)
        attrs = {"kind": layer.kind, "depth": layer.depth, "flops": layer.flops} if layer else {"kind": "op"}
        g.add_node(name, type="layer", **attrs)
    for a, b in graph.trace.flow_edges:
        g.add_edge(names[a], names[b], type="flow")
    for group in graph.prunable_groups:
        for r in range(group.size):
            g.add_node(f"{group.root}#{r}", type="channel", group=group.index, decision=group.offset + r)
        for m in group.members:
            if m.module:
                for r in np.unique(m.root_idx):
                    g.add_edge(f"{group.root}#{r}", m.module, type="touches", side=m.side)
    return g
