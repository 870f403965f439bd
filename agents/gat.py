"""`GATEncoder`: residual GATv2 layers over the channel graph, giving node and graph embeddings."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import GATv2Conv, global_max_pool, global_mean_pool


class GATEncoder(nn.Module):
    r"""Node and graph embeddings from stacked residual GATv2 layers.

    GATv2 attention is from `"How Attentive are Graph Attention Networks?" <https://arxiv.org/abs/2105.14491>`_.
    Node features are projected to `hidden_channels`, then each layer computes
    :math:`\mathbf{h} \leftarrow \mathrm{LayerNorm}(\mathbf{h} + \mathrm{ELU}(\mathrm{GATv2}(\mathbf{h})))`
    with `heads` concatenated heads of `hidden_channels // heads` channels each. The graph embedding is a linear
    map of the mean- and max-pooled node embeddings.

    Args:
        in_channels: size of each input node feature vector.
        hidden_channels: size of node and graph embeddings; a multiple of `heads`. (default: 64)
        num_layers: number of GATv2 layers. (default: 3)
        heads: attention heads per layer. (default: 4)
        dropout: dropout of the attention coefficients. (default: 0.0)

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})`, edge indices :math:`(2, |\mathcal{E}|)`,
          batch vector :math:`(|\mathcal{V}|)` (optional; all nodes in one graph when omitted)
        - **output:** node embeddings :math:`(|\mathcal{V}|, H)`, graph embeddings :math:`(G, H)` with
          :math:`H` = `hidden_channels` and :math:`G` graphs in the batch
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int = 64,
        num_layers: int = 3,
        heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if hidden_channels % heads:
            raise ValueError(f"hidden_channels ({hidden_channels}) must be a multiple of heads ({heads})")
        if num_layers < 1:
            raise ValueError("num_layers must be at least 1")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.project = nn.Linear(in_channels, hidden_channels)
        self.convs = nn.ModuleList(
            GATv2Conv(hidden_channels, hidden_channels // heads, heads=heads, dropout=dropout)
            for _ in range(num_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_channels) for _ in range(num_layers))
        self.pool = nn.Linear(2 * hidden_channels, hidden_channels)

    def forward(
        self, x: Tensor, edge_index: Tensor, batch: Tensor | None = None, num_graphs: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Node embeddings and one embedding per graph of `batch` (`num_graphs` saves counting them)."""
        h = self.project(x)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = norm(h + nn.functional.elu(conv(h, edge_index)))
        if batch is None:
            batch = torch.zeros(h.size(0), dtype=torch.long, device=h.device)
            num_graphs = 1
        pooled = torch.cat([global_mean_pool(h, batch, num_graphs), global_max_pool(h, batch, num_graphs)], dim=-1)
        return h, self.pool(pooled)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.in_channels}, {self.hidden_channels}, num_layers={len(self.convs)}, "
            f"heads={self.convs[0].heads})"
        )
