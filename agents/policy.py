"""The GAT actor-critic for stable-baselines3: one keep logit per channel from its node embedding.

How the pieces sit in SB3's `ActorCriticPolicy` (everything else, PPO's buffer, distribution and update, is SB3's):

- `GraphFeaturesExtractor` (the features extractor) turns the Dict observation, batched by SB3 to
  x (B, N, F), edge_index (B, 2, E), decision_index (B, D), into one PyG `Batch` of B graphs, runs `GATEncoder`,
  and returns (B, D + 1, H): the embeddings of the D decision nodes, then the pooled graph embedding.
- `DecisionHeads` (the `mlp_extractor`) maps each decision embedding through one shared layer (actor latent,
  (B, D, H)) and the graph embedding through a small MLP (critic latent, (B, H)).
- `DecisionLogits` (the action net) scores every decision node with one shared linear map plus a per-decision
  bias: (B, D, H) -> (B, D) logits for SB3's `BernoulliDistribution`. Its parameters grow as H + D, never D²;
  the bias starts at `init_keep_logit` so that most channels are kept at first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import BernoulliDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor, nn
from torch_geometric.data import Batch

from .gat import GATEncoder


def batch_graphs(obs: dict[str, Tensor]) -> tuple[Batch, Tensor]:
    """One PyG `Batch` from SB3-batched graph observations, and the global node index of every decision.

    All graphs of one observation space share N and E, so batching is an offset of each graph's node indices by
    its position times N, as `Batch.from_data_list` would do, without the Python loop.

    Returns:
        The batch (x (B·N, F), edge_index (2, B·E), batch (B·N,)), and decision node indices (B, D) into it.
    """
    x = obs["x"]
    b, n, f = x.shape
    offsets = torch.arange(b, device=x.device) * n
    edge_index = obs["edge_index"].round().long() + offsets.view(b, 1, 1)
    decisions = obs["decision_index"].round().long() + offsets.view(b, 1)
    graph = Batch(
        x=x.reshape(b * n, f),
        edge_index=edge_index.transpose(0, 1).reshape(2, -1),
        batch=torch.arange(b, device=x.device).repeat_interleave(n),
        ptr=torch.arange(b + 1, device=x.device) * n,
    )
    return graph, decisions


class GraphFeaturesExtractor(BaseFeaturesExtractor):
    """Runs `GATEncoder` on the env's graph observation.

    Args:
        observation_space: the env's `spaces.Dict` with `x`, `edge_index` and `decision_index`.
        hidden_dim: embedding width H. (default: 64)
        num_layers: GATv2 layers. (default: 3)
        heads: attention heads per layer. (default: 4)

    Shapes:
        - **input:** x (B, N, F), edge_index (B, 2, E), decision_index (B, D)
        - **output:** (B, D + 1, H): decision-node embeddings, then the graph embedding
    """

    def __init__(self, observation_space: spaces.Dict, hidden_dim: int = 64, num_layers: int = 3, heads: int = 4):
        super().__init__(observation_space, features_dim=hidden_dim)
        self.encoder = GATEncoder(observation_space["x"].shape[-1], hidden_dim, num_layers, heads)

    def forward(self, observations: dict[str, Tensor]) -> Tensor:
        batch_size = observations["x"].size(0)
        if batch_size > 1 and all(torch.equal(v, v[:1].expand_as(v)) for v in observations.values()):
            # One-step episodes observe the same graph every time: encode it once (PPO's minibatches are all copies).
            return self._encode({k: v[:1] for k, v in observations.items()}).expand(batch_size, -1, -1)
        return self._encode(observations)

    def _encode(self, observations: dict[str, Tensor]) -> Tensor:
        graph, decisions = batch_graphs(observations)
        nodes, pooled = self.encoder(graph.x, graph.edge_index, graph.batch, num_graphs=decisions.size(0))
        return torch.cat([nodes[decisions], pooled.unsqueeze(1)], dim=1)


class DecisionHeads(nn.Module):
    """The `mlp_extractor`: per-decision actor latents and a graph-level critic latent.

    Args:
        features_dim: H, the width of the extractor's rows.

    Shapes:
        - **input:** (B, D + 1, H) from `GraphFeaturesExtractor`
        - **output:** actor latent (B, D, H), critic latent (B, H)
    """

    def __init__(self, features_dim: int) -> None:
        super().__init__()
        self.latent_dim_pi = features_dim
        self.latent_dim_vf = features_dim
        self.policy_net = nn.Sequential(nn.Linear(features_dim, features_dim), nn.ELU())
        self.value_net = nn.Sequential(
            nn.Linear(features_dim, features_dim), nn.ELU(), nn.Linear(features_dim, features_dim), nn.ELU()
        )

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: Tensor) -> Tensor:
        return self.policy_net(features[:, :-1])

    def forward_critic(self, features: Tensor) -> Tensor:
        return self.value_net(features[:, -1])


class DecisionLogits(nn.Module):
    """The action net: each decision's keep logit from its latent, a learned per-decision bias and, where the
    decisions' groups are given, a learned keep-width per group.

    With groups, the logit of decision `i` in group `g` also gets ``slope · (rank_i + 0.5 − t_g)``: `rank_i` is
    the channel's rank in its group by importance (0 = least important) and ``t_g = t0_g + size_g · (head(mean
    of g's latents) + shift_g)`` is the group's learned cut, in channels. So one parameter per group moves how
    many of its channels are kept, least important first ("this group keeps k"), while the per-decision terms
    still let the agent keep or drop single channels. Parameters grow as H + D + G, never D².

    Args:
        latent_dim: H.
        num_decisions: D.
        init_logit: starting bias, one for all decisions (1.5 keeps a channel with probability 0.82) or one per
            decision (e.g. a ranking warm start, see `autoprune.agents.warm_start.ranking_logits`).
        groups: group index of every decision (D,), 0..G-1; None: no group term.
        rank: every decision's importance rank within its group (D,).
        init_cut: t0, each group's starting cut in channels (G,): the `t0_g` least important channels of group
            `g` start below the cut.
        slope: logit change per channel of rank distance from the cut (learned; exploration shrinks as it grows).

    Shapes:
        - **input:** (B, D, H)
        - **output:** (B, D) logits of keeping each channel
    """

    def __init__(
        self,
        latent_dim: int,
        num_decisions: int,
        init_logit: float | Sequence[float] = 1.5,
        groups: Sequence[int] | None = None,
        rank: Sequence[float] | None = None,
        init_cut: Sequence[float] | None = None,
        slope: float = 1.0,
    ) -> None:
        super().__init__()
        self.score = nn.Linear(latent_dim, 1, bias=False)
        # A plain parameter rather than a Linear bias, so SB3's orthogonal init (which zeroes biases) keeps it.
        init = torch.as_tensor(init_logit, dtype=torch.float32)
        if init.dim() == 0:
            init = init.expand(num_decisions)
        if init.shape != (num_decisions,):
            raise ValueError(
                f"init_logit needs one value per decision ({num_decisions}), got shape {tuple(init.shape)}"
            )
        self.bias = nn.Parameter(init.clone())
        self.grouped = groups is not None
        if self.grouped:
            group = torch.as_tensor(groups, dtype=torch.long)
            if group.shape != (num_decisions,) or rank is None or init_cut is None:
                raise ValueError("groups needs one group per decision, with rank and init_cut")
            cut = torch.as_tensor(init_cut, dtype=torch.float32)
            self.register_buffer("group", group)
            self.register_buffer("rank", torch.as_tensor(rank, dtype=torch.float32) + 0.5)
            self.register_buffer("init_cut", cut)
            self.register_buffer("size", torch.bincount(group, minlength=len(cut)).float())
            self.group_head = nn.Linear(latent_dim, 1)
            self.shift = nn.Parameter(torch.zeros(len(cut)))
            self.log_slope = nn.Parameter(torch.tensor(float(slope)).log())

    def cut(self, latent: Tensor) -> Tensor:
        """(B, G) each group's cut in channels: how many of its least important channels fall below it."""
        b, _, h = latent.shape
        sums = latent.new_zeros(b, len(self.init_cut), h).index_add_(1, self.group, latent)
        pooled = sums / self.size.view(1, -1, 1)
        return self.init_cut + self.size * (self.group_head(pooled).squeeze(-1) + self.shift)

    def forward(self, latent: Tensor) -> Tensor:
        logits = self.score(latent).squeeze(-1) + self.bias
        if self.grouped:
            logits = logits + self.log_slope.exp() * (self.rank - self.cut(latent)[:, self.group])
        return logits


class DecisionBernoulli(BernoulliDistribution):
    """SB3's Bernoulli distribution whose action net is `DecisionLogits` instead of a dense (H, D) layer."""

    def __init__(self, action_dims: int, init_logit: float | Sequence[float] = 1.5, **group_terms: Any) -> None:
        super().__init__(action_dims)
        self.init_logit = init_logit
        self.group_terms = group_terms

    def proba_distribution_net(self, latent_dim: int) -> nn.Module:
        return DecisionLogits(latent_dim, self.action_dims, self.init_logit, **self.group_terms)


class GATPolicy(ActorCriticPolicy):
    """Actor-critic over the channel graph for `ChannelPruneEnv`; pass it as the policy of SB3's PPO.

    Configure the encoder through `features_extractor_kwargs` (`hidden_dim`, `num_layers`, `heads`; see
    `GraphFeaturesExtractor`). `net_arch` and `activation_fn` are not used: the heads are `DecisionHeads`.

    Args:
        observation_space: the env's Dict space.
        action_space: `MultiBinary(D)`.
        lr_schedule: learning-rate schedule (given by the algorithm).
        init_keep_logit: initial logit of keeping each channel. (default: 1.5)
        group_terms: `groups`, `rank`, `init_cut` (and optionally `slope`) of `DecisionLogits`, for a learned
            keep-width per group (see `autoprune.agents.warm_start.WarmStart.group_terms`); None: per-decision
            logits only.
        **kwargs: passed to `ActorCriticPolicy`.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.MultiBinary,
        lr_schedule: Any,
        init_keep_logit: float | Sequence[float] = 1.5,
        group_terms: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(action_space, spaces.MultiBinary) or len(action_space.shape) != 1:
            raise ValueError(f"GATPolicy needs a 1-D MultiBinary action space, got {action_space}")
        self.init_keep_logit = init_keep_logit  # read by _build, which the base constructor calls
        self.group_terms = group_terms
        kwargs.setdefault("features_extractor_class", GraphFeaturesExtractor)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = DecisionHeads(self.features_dim)

    def _build(self, lr_schedule: Any) -> None:
        self.action_dist = DecisionBernoulli(
            int(self.action_space.shape[0]), self.init_keep_logit, **(self.group_terms or {})
        )
        super()._build(lr_schedule)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data["init_keep_logit"] = self.init_keep_logit
        data["group_terms"] = self.group_terms
        return data

    def keep_logits(self, obs: dict[str, Tensor]) -> Tensor:
        """(B, D) logits of keeping each channel, for observations already as tensors."""
        return self.get_distribution(obs).distribution.logits
