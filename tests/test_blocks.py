"""Block types beyond plain convs: grouped convs, chunk/cat, channels-last LayerNorm blocks, squeeze-excitation,
multi-head self-attention, channel shuffles and shifted-window attention.

Each tiny model is written here in the style of the torchvision family it stands for (ResNeXt/RegNet, ConvNeXt,
MobileNetV3/EfficientNet, GhostNet-like chunks, ViT, ShuffleNetV2, Swin), so the tests need no torchvision. For
each: the groups are prunable (or frozen with the reason), the masked network equals the physically pruned one,
and the counted FLOPs/params equal torch-pruning's counter on the pruned model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.graph import build_channel_graph
from autoprune.graph.depgraph import LayersAsModules
from autoprune.masking import ChannelMasker
from autoprune.plan import Plan
from autoprune.pruning import prune_model, pruner_for

SHAPE = (3, 12, 12)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (torchvision's ConvNeXt stem and downsampling)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, then channels-last LayerNorm and MLP, a layer scale (a bare parameter), a residual add."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act(self.fc1(self.norm(self.dw(x).permute(0, 2, 3, 1)))))
        return x + self.gamma * y.permute(0, 3, 1, 2)


class TinyConvNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 2, stride=2), LayerNorm2d(8))
        self.stage1 = ConvNeXtBlock(8)
        self.down = nn.Sequential(LayerNorm2d(8), nn.Conv2d(8, 16, 2, stride=2))
        self.stage2 = ConvNeXtBlock(16)
        self.head_norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.fc(self.head_norm(x.mean((2, 3))))


class ResNeXtBlock(nn.Module):
    def __init__(self, c: int, width: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(x + self.bn3(self.conv3(y)))


class TinyResNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block1 = ResNeXtBlock(16, 16, groups=4)
        self.block2 = ResNeXtBlock(16, 24, groups=3)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block2(self.block1(self.stem(x))).mean((2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.gate = nn.Hardsigmoid()  # gate(0) = 0.5: a pruned channel must be masked after it, not before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class TinySE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.se = SqueezeExcite(12, 4)
        self.conv2 = nn.Conv2d(12, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.relu(self.conv2(x)).mean((2, 3)))


class TinyChunk(nn.Module):
    """`torch.chunk` into two branches joined by `torch.cat`, then a split with sizes fixed in the code."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.left = nn.Conv2d(8, 6, 3, padding=1)
        self.right = nn.Conv2d(8, 6, 1)
        self.conv2 = nn.Conv2d(12, 10, 3, padding=1)
        self.part = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.chunk(F.relu(self.conv1(x)), 2, dim=1)
        y = F.relu(self.conv2(F.relu(torch.cat([self.left(a), self.right(b)], dim=1))))
        p, q = torch.split(y, [4, 6], dim=1)
        return self.fc(torch.cat([self.part(p), q], dim=1).mean((2, 3)))


class EncoderBlock(nn.Module):
    """A ViT encoder block: pre-norm multi-head self-attention and MLP, each around a residual add."""

    def __init__(self, d: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TinyViT(nn.Module):
    """Patch embedding, a class token and position embedding (bare parameters), two encoder blocks."""

    def __init__(self, d: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.conv_proj = nn.Conv2d(3, d, 4, stride=4)
        self.class_token = nn.Parameter(torch.randn(1, 1, d))
        self.pos_embedding = nn.Parameter(torch.randn(1, 10, d))
        self.blocks = nn.Sequential(EncoderBlock(d, heads, 24), EncoderBlock(d, heads, 20))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.ln(self.blocks(x))[:, 0])


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleUnit(nn.Module):
    """A ShuffleNetV2 stride-1 unit: chunk in two, a bottleneck on one half, cat, channel shuffle."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(c // 2, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.Conv2d(hidden, c // 2, 1, bias=False),
            nn.BatchNorm2d(c // 2),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([a, self.branch(b)], dim=1), 2)


class TinyShuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.units = nn.Sequential(ShuffleUnit(16, 12), ShuffleUnit(16, 10))
        self.conv = nn.Conv2d(16, 24, 1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(self.units(self.stem(x)))).mean((2, 3)))


class WindowAttention(nn.Module):
    """Shifted-window attention written as torchvision's Swin writes it: `roll`, windows cut with `view` and
    `permute`, the qkv and output projections used through their weights (`F.linear`), heads split by a reshape,
    and (Swin V2) a relative position bias from a small MLP, gathered by index and reshaped per window."""

    def __init__(self, d: int, heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.heads, self.window, self.shift = heads, window, shift
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, heads, bias=False))
        span = torch.arange(-(window - 1), window, dtype=torch.float32)
        self.register_buffer("table", torch.stack(torch.meshgrid(span, span, indexing="ij"), -1).unsqueeze(0))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("index", (rel[..., 0] * (2 * window - 1) + rel[..., 1]).flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        k, s, n = self.window, self.shift, self.window**2
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        x = x.view(b, h // k, k, w // k, k, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, n, c)
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias)
        q, key, v = qkv.reshape(x.size(0), n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.cpb_mlp(self.table).view(-1, self.heads)[self.index].view(n, n, -1)
        attn = (q @ key.transpose(-2, -1)) * (c // self.heads) ** -0.5 + torch.sigmoid(bias.permute(2, 0, 1))
        x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(x.size(0), n, c)
        x = F.linear(x, self.proj.weight, self.proj.bias)
        x = x.view(b, h // k, w // k, k, k, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return torch.roll(x, shifts=(s, s), dims=(1, 2)) if s else x


class SwinBlock(nn.Module):
    def __init__(self, d: int, heads: int, hidden: int, window: int, shift: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = WindowAttention(d, heads, window, shift)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinySwin(nn.Module):
    """Patch embedding to channels-last (B, H, W, C), a plain and a shifted window block, mean-pooled head."""

    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, d, 2, stride=2)
        self.blocks = nn.Sequential(SwinBlock(d, heads, 24, 3, 0), SwinBlock(d, heads, 20, 3, 1))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.embed(x).permute(0, 2, 3, 1))
        return self.head(self.norm(x).mean((1, 2)))


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial norm statistics and affine terms, so that a wrongly masked channel shows in the logits."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
        if isinstance(m, nn.BatchNorm2d | nn.LayerNorm):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) * 0.4 + 0.8)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=gen) * 0.6 - 0.3)
    return model.eval()


def check_equivalence(model: nn.Module, graph, masks: int = 6, seed: int = 0) -> None:
    """Masked == pruned, and counted FLOPs/params == torch-pruning's counter, on random legal masks."""
    example = torch.zeros(1, *SHAPE)
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(seed))
    rng = np.random.default_rng(seed)
    with torch.no_grad(), ChannelMasker(model, graph) as masker:
        for _ in range(masks):
            keep = graph.legalize((rng.random(graph.num_decisions) < rng.uniform(0.3, 0.9)).astype(np.int8))
            masker.set_mask(keep)
            masked = model(x)
            masker.set_mask(None)
            pruned = prune_model(model, graph, keep)
            assert (pruned(x) - masked).abs().max().item() <= 1e-4 * max(1.0, masked.abs().max().item())
            with LayersAsModules():  # TinySwin's projections are called through `F.linear`
                flops, params = tp.utils.count_ops_and_params(pruned, example)
            assert graph.flops(keep) == pytest.approx(flops, rel=5e-3)
            assert graph.params(keep) == pytest.approx(params, rel=5e-3)


@pytest.mark.parametrize("cls", [TinyConvNeXt, TinyResNeXt, TinySE, TinyChunk, TinyViT], ids=lambda c: c.__name__)
def test_masked_equals_pruned(cls) -> None:
    torch.manual_seed(0)
    model = randomize(cls())
    graph = build_channel_graph(model, torch.zeros(1, *SHAPE))
    frozen = {g.root: g.reason for g in graph.groups if not g.prunable}
    expected = {"head" if cls is TinyViT else "fc"} | ({"part"} if cls is TinyChunk else set())
    assert set(frozen) == expected, frozen
    assert graph.prunable_share() > 0.95
    check_equivalence(model, graph)


def test_grouped_convolution_keeps_equal_groups() -> None:
    model = randomize(TinyResNeXt())
    graph = build_channel_graph(model, torch.zeros(1, *SHAPE))
    sizes = {g.root: g.size for g in graph.prunable_groups}
    # One decision per position inside a conv group: width / groups of them, each removing one channel per group.
    assert sizes["block1.conv1"] == sizes["block1.conv2"] == 16 // 4
    assert sizes["block2.conv1"] == sizes["block2.conv2"] == 24 // 3
    assert {g.root: g.blocks for g in graph.prunable_groups}["block2.conv2"] == 3
    keep = graph.full_mask()
    group = next(g for g in graph.prunable_groups if g.root == "block2.conv1")
    keep[group.offset : group.offset + 3] = 0
    pruned = prune_model(model, graph, keep)
    conv = pruned.block2.conv2
    assert (conv.groups, conv.in_channels, conv.out_channels) == (3, 24 - 3 * 3, 24)
    assert pruned(torch.zeros(1, *SHAPE)).shape == (1, 10)


def test_chunk_folds_and_fixed_split_is_frozen_with_reason() -> None:
    model = randomize(TinyChunk())
    graph = build_channel_graph(model, torch.zeros(1, *SHAPE))
    conv1 = next(g for g in graph.groups if g.root == "conv1")
    assert conv1.prunable and conv1.size == 8  # decision j removes channel j of both chunks
    part = next(g for g in graph.groups if g.root == "part")
    assert "unequal parts [4, 6]" in part.reason
    assert "part (4 ch" in graph.summary()


def test_convnext_layer_scale_and_layer_norm_are_pruned() -> None:
    model = randomize(TinyConvNeXt())
    graph = build_channel_graph(model, torch.zeros(1, *SHAPE))
    assert graph.layers["stage1.gamma"].channel_dim == 0
    assert graph.layers["stage1.fc1"].channel_dim == -1 and graph.layers["stem.1"].channel_dim == 1
    stream = next(g for g in graph.prunable_groups if "stage1.gamma" in g.modules)
    keep = graph.full_mask()
    keep[stream.offset : stream.offset + 3] = 0
    pruned = prune_model(model, graph, keep)
    assert pruned.stage1.gamma.shape == (5, 1, 1) and pruned.stage1.norm.normalized_shape == (5,)
    x = torch.randn(2, *SHAPE)
    gamma = model.stage1.gamma.detach().clone()
    with torch.no_grad(), ChannelMasker(model, graph) as masker:
        masker.set_mask(keep)
        assert not torch.equal(model.stage1.gamma, gamma)  # masked in place while the mask is on
        expected = model(x)
    assert torch.equal(model.stage1.gamma, gamma)  # and restored after
    plan = Plan.from_dict(json.loads(json.dumps(Plan.from_mask(model, graph, keep).to_dict())))
    fresh = randomize(TinyConvNeXt())
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (plan.apply(fresh)(x) - expected).abs().max().item() <= 1e-4


def test_attention_width_is_pruned_per_head() -> None:
    model = randomize(TinyViT())
    graph = build_channel_graph(model, torch.zeros(1, *SHAPE))
    stream = next(g for g in graph.prunable_groups if "blocks.0.attn" in g.modules)
    assert stream.size == 16 // 4  # a decision removes the same position from each of the 4 heads
    assert {g.size for g in graph.prunable_groups} == {4, 24, 20}  # and the MLP hidden widths are free
    keep = graph.full_mask()
    keep[stream.offset] = 0
    pruned = prune_model(model, graph, keep)
    attn = pruned.blocks[1].attn
    assert (attn.embed_dim, attn.num_heads, attn.head_dim) == (12, 4, 3)
    assert pruned.class_token.shape == (1, 1, 12) and pruned.pos_embedding.shape == (1, 10, 12)


def test_frozen_groups_report_the_flops_they_block() -> None:
    model = randomize(TinyResNeXt())
    graph = build_channel_graph(model, torch.zeros(1, *SHAPE), ignore=["block2.conv2"])
    group = next(g for g in graph.groups if g.root == "block2.conv2")
    blocked = graph.frozen_flops()
    share = sum(graph.layers[n].flops for n in group.modules) / graph.base_flops
    assert blocked[group.index] == pytest.approx(share) and share > 0.1
    assert graph.prunable_share() < 1.0
    assert f"{share:.1%} MACs" in graph.summary()


def test_layer_norm_keeps_its_channels_in_order() -> None:
    norm = randomize(nn.Sequential(nn.LayerNorm(16)))[0]
    weight = norm.weight.detach().clone()
    pruner_for(norm).prune_out_channels(norm, [i for i in range(16) if i % 4 != 3])  # keep 3, 7, 11, 15
    assert torch.equal(norm.weight.detach(), weight[3::4])  # torch-pruning 1.6 alone permutes them


def test_a_model_torch_pruning_cannot_trace_is_one_line() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(5, 2))  # the linear layer does not fit
    with pytest.raises(AutopruneError, match="cannot trace the model with torch-pruning: RuntimeError") as err:
        build_channel_graph(model, torch.zeros(1, *SHAPE))
    assert "\n" not in str(err.value)


def test_channel_shuffle_freezes_only_the_shuffled_stream() -> None:
    # Torch-pruning 1.6 divided by zero on the shuffle's reshapes; the bottleneck widths stay free.
    model = randomize(TinyShuffle())
    graph = build_channel_graph(model, torch.zeros(1, *SHAPE))
    assert sorted(g.size for g in graph.prunable_groups) == [10, 12, 24]  # the two bottlenecks and `conv`
    frozen = {g.root: g.reason for g in graph.groups if not g.prunable}
    assert set(frozen) == {"fc", "units.0.branch.5", "units.1.branch.5"}  # the stream, through cat and shuffle
    assert "reshape (1, 16, 12, 12) -> (1, 2, 8, 12, 12)" in frozen["units.1.branch.5"]
    check_equivalence(model, graph)


def test_swin_window_attention_traces_and_prunes_its_mlp() -> None:
    # Torch-pruning 1.6 failed on Swin (a concat of unknown width) and ran out of memory on Swin V2's bias MLP.
    model = randomize(TinySwin())
    graph = build_channel_graph(model, torch.zeros(1, *SHAPE))
    sizes = {g.root: g.size for g in graph.prunable_groups}
    assert sizes["blocks.0.mlp.0"] == 24 and sizes["blocks.1.mlp.0"] == 20
    # The projections used through `F.linear` are traced as layers: the qkv output splits into heads.
    qkv = next(g for g in graph.groups if "blocks.0.attn.qkv" in g.modules and g.root == "blocks.0.attn.qkv")
    assert not qkv.prunable and "reshape" in qkv.reason
    assert graph.layers["blocks.0.attn.qkv"].flops >= 36 * 16 * 48  # and counted: 4 windows of 9 tokens
    check_equivalence(model, graph)
