"""Networks rewritten for inference compute what the eval-mode network computes, and leave it untouched."""

from __future__ import annotations

import copy

import torch
from torch import nn

from autoprune.inference import for_inference
from autoprune.models import build_model


def trained_bn(model: nn.Module) -> nn.Module:
    """`model` with non-trivial BatchNorm statistics and affine parameters, so folding them changes weights."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_resnet_folds_every_batch_norm_and_gives_the_same_outputs() -> None:
    model = trained_bn(build_model("resnet20"))
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        net = for_inference(model)
        got = net(x)
    assert batch_norms(model) > 0 and batch_norms(net) == 0
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in net.parameters() if p.dim() == 4)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    assert not model.training


class DataDependent(nn.Module):
    """A branch on the input's values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if float(x.mean()) > 0 else -y


class SharedConv(nn.Module):
    """One convolution called twice, once followed by a BatchNorm: folding would change the other call too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.conv(x)


def test_networks_that_cannot_be_folded_run_unfolded_and_give_the_same_outputs() -> None:
    for model, shape in ((DataDependent(), (2, 3, 8, 8)), (SharedConv(), (2, 4, 8, 8))):
        model = trained_bn(model)
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = model(x)
            net = for_inference(model)
            got = net(x)
        assert batch_norms(net) == 1, type(model).__name__
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
