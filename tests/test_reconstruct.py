"""Least-squares reconstruction: exact where the removed channels are redundant, never worse per layer."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import run_cli
from torch import nn

from autoprune.graph import build_channel_graph
from autoprune.masking import ChannelMasker
from autoprune.models import build_model
from autoprune.plan import Plan
from autoprune.pruning import apply_kept_channels
from autoprune.reconstruct import Targets, layers_to_refit, reconstruct, refitted


class Redundant(nn.Module):
    """conv1's channels `redundant` are linear combinations of its others; conv2 (strided, padded, maybe grouped)
    and a linear layer read them. No nonlinearity before conv2, so removing them loses nothing a re-fit can't
    restore."""

    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 6, 3, stride=2, padding=1, groups=groups, bias=False)
        self.fc = nn.Linear(6, 4)
        with torch.no_grad():
            w = self.conv1.weight
            w[3] = w[0] - 2 * w[1]
            w[7] = 0.5 * w[4] + w[6]  # group 1 of 2 when grouped: a combination within the group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv2(self.conv1(x))).mean((2, 3)))


def calibration(n: int = 32, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x = torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(seed))
    return [(x[i : i + 16], torch.zeros(16, dtype=torch.long)) for i in range(0, n, 16)]


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("positions", [5, 1000])  # sampled output positions, and all of them
def test_redundant_channels_are_reconstructed_exactly(groups: int, positions: int) -> None:
    torch.manual_seed(0)
    model = Redundant(groups).eval()
    kept = {"conv1": {"out": [0, 1, 2, 4, 5, 6]}, "conv2": {"in": [0, 1, 2, 4, 5, 6]}}
    pruned = apply_kept_channels(copy.deepcopy(model), kept)
    x = torch.randn(8, 3, 12, 12)
    with torch.no_grad():
        assert (pruned(x) - model(x)).abs().max() > 1e-2  # cutting them does hurt before the re-fit
    report = reconstruct(model, pruned, kept, calibration(), ridge=1e-9, positions=positions)
    fits = {f.name: f for f in report.layers}
    assert list(fits) == ["conv1", "conv2", "fc"]
    assert fits["conv2"].error_before > 1e-3 and fits["conv2"].error_after < 1e-5
    assert fits["conv1"].error_before < 1e-6  # its inputs are the images: nothing to correct
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), atol=1e-4, rtol=1e-4)


def test_linear_layer_is_reconstructed_exactly() -> None:
    model = nn.Sequential(nn.Linear(5, 6, bias=False), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        model[0].weight[5] = model[0].weight[0] + model[0].weight[2]
    kept = {"0": {"out": [0, 1, 2, 3, 4]}, "1": {"in": [0, 1, 2, 3, 4]}}
    pruned = apply_kept_channels(copy.deepcopy(model), kept)
    x = torch.randn(64, 5)
    report = reconstruct(model, pruned, kept, [(x, torch.zeros(64))], ridge=1e-9)
    assert [f.name for f in report.layers] == ["0", "1"]
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(1)
    model = build_model("resnet20").eval()
    return model, build_channel_graph(model, torch.zeros(1, 3, 32, 32), model_name="resnet20")


def test_reconstructed_network_equals_its_masked_twin(resnet20) -> None:
    """The re-fitted weights sit at the right indices: scattered back into the full network, with the removed
    channels masked, it computes what the physically pruned one does."""
    model, graph = resnet20
    keep = graph.legalize((np.random.default_rng(0).random(graph.num_decisions) < 0.6).astype(np.int8))
    kept = graph.kept_channels(keep)
    pruned = apply_kept_channels(copy.deepcopy(model), kept)
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    report = reconstruct(model, pruned, kept, [(x, torch.zeros(64))])
    assert report.layers and all(f.error_after <= f.error_before for f in report.layers)
    full = copy.deepcopy(model)
    refitted = dict(pruned.named_modules())
    for name, module in full.named_modules():
        if name in {f.name for f in report.layers}:
            rows = torch.as_tensor(kept.get(name, {}).get("out", range(module.weight.shape[0])))
            cols = torch.as_tensor(kept.get(name, {}).get("in", range(module.weight.shape[1])))
            with torch.no_grad():
                module.weight.zero_()
                module.weight[rows[:, None], cols] = refitted[name].weight
                if module.bias is not None:
                    module.bias[rows] = refitted[name].bias
    masker = ChannelMasker(full, graph)
    masker.set_mask(keep)
    probe = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(full(probe), pruned(probe), atol=1e-4, rtol=1e-4)
    masker.remove()


def test_reconstruction_brings_a_pruned_network_closer_to_the_original(resnet20) -> None:
    model, graph = resnet20
    keep = graph.legalize((np.random.default_rng(3).random(graph.num_decisions) < 0.5).astype(np.int8))
    kept = graph.kept_channels(keep)
    pruned = apply_kept_channels(copy.deepcopy(model), kept)
    gen = torch.Generator().manual_seed(4)
    held_out = torch.randn(64, 3, 32, 32, generator=gen)
    with torch.no_grad():
        before = (pruned(held_out) - model(held_out)).pow(2).mean()
    unpruned = copy.deepcopy(model.state_dict())
    fitted, report = refitted(model, kept, [(torch.randn(64, 3, 32, 32, generator=gen), None) for _ in range(2)])
    with torch.no_grad():
        after = (fitted(held_out) - model(held_out)).pow(2).mean()
    assert after < 0.5 * before
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in unpruned.items())  # `refitted` fits a copy
    assert report.images == 2 * 128 and report.seconds > 0


def test_every_layer_is_refitted_and_unsupported_ones_that_lost_inputs_are_named() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 2, 1)).eval()
    kept = {"0": {"out": [0, 1, 3]}, "1": {"out": [0, 1, 3]}, "2": {"in": [0, 1, 3]}}
    pruned = apply_kept_channels(copy.deepcopy(model), kept)
    assert layers_to_refit(model, pruned) == (["0", "1", "2"], {})
    padded = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 3, padding=1, padding_mode="reflect"), nn.Conv1d(2, 2, 1)
    ).eval()
    small = apply_kept_channels(copy.deepcopy(padded), {"0": {"out": [0, 1]}, "1": {"in": [0, 1]}})
    names, skipped = layers_to_refit(padded, small)
    assert names == ["0"] and list(skipped) == ["1"] and "reflect" in skipped["1"]  # "2" lost nothing


class Chain(nn.Module):
    """conv1 → relu → conv2 → relu → conv3: cutting conv1's outputs shifts conv3's inputs, though conv3 keeps all."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))


def test_a_layer_that_kept_its_inputs_corrects_the_drift_before_it() -> None:
    torch.manual_seed(0)
    model = Chain().eval()
    kept = {"conv1": {"out": [0, 2, 4, 6]}, "conv2": {"in": [0, 2, 4, 6]}}
    pruned = apply_kept_channels(copy.deepcopy(model), kept)
    fits = {f.name: f for f in reconstruct(model, pruned, kept, calibration(64), ridge=1e-6).layers}
    assert fits["conv3"].error_before > 1e-3
    assert fits["conv3"].error_after < 0.99 * fits["conv3"].error_before
    assert pruned.conv3.weight.shape == model.conv3.weight.shape
    assert not torch.equal(pruned.conv3.weight, model.conv3.weight)


def test_a_large_ridge_keeps_the_layers_own_weights() -> None:
    """The ridge pulls towards the layer's sliced weights, not towards zero."""
    torch.manual_seed(0)
    model = Chain().eval()
    kept = {"conv1": {"out": [0, 2, 4, 6]}, "conv2": {"in": [0, 2, 4, 6]}}
    pruned = apply_kept_channels(copy.deepcopy(model), kept)
    sliced = copy.deepcopy(pruned)
    reconstruct(model, pruned, kept, calibration(64), ridge=1e6)
    for a, b in zip(pruned.parameters(), sliced.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_targets_computed_once_serve_every_plan(resnet20) -> None:
    """A search computes the unpruned outputs once for all layers; each plan's re-fit equals a fresh one."""
    model, graph = resnet20
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    shared = Targets(model, x, positions=16, seed=3)
    rng = np.random.default_rng(6)
    for _ in range(2):
        kept = graph.kept_channels(graph.legalize((rng.random(graph.num_decisions) < 0.6).astype(np.int8)))
        fresh = apply_kept_channels(copy.deepcopy(model), kept)
        cached = copy.deepcopy(fresh)
        reconstruct(model, fresh, kept, [(x, None)], positions=16, seed=3)
        report = reconstruct(model, cached, kept, targets=shared)
        assert report.images == len(x)  # only the pruned pass: the unpruned one was paid once
        for a, b in zip(fresh.parameters(), cached.parameters(), strict=True):
            torch.testing.assert_close(a, b)


def test_search_scores_with_reconstruction_from_the_cli(tmp_path, cache_dir) -> None:
    out = tmp_path / "run"
    args = ["search", "--evaluations", "3", "--rollout", "3", "--eval-samples", "100", "--out", str(out)]
    result = run_cli(*args, "--score-with-reconstruction", "--no-reconstruct")
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["problem"]["score_with_reconstruction"] is True
    metrics = Plan.load(out / "plan.json").metrics
    assert "test_acc_reconstructed" not in metrics  # --no-reconstruct: the final plan is only recalibrated
    refused = run_cli(*args[:-1], str(tmp_path / "other"), "--score-with-reconstruction", "--recalibrate-batches", "0")
    assert refused.returncode == 2 and "--recalibrate-batches" in refused.stderr
