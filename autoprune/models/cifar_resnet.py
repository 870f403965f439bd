"""The CIFAR ResNets of He et al. 2016 (https://arxiv.org/abs/1512.03385), Section 4.2.

Three stages of 16/32/64 channels, `n` BasicBlocks each (depth = 6n + 2), option-A (parameter-free) shortcuts,
global average pooling and a `linear` classifier. Module names match akamaster/pytorch_resnet_cifar10, so its
state dicts (and those in `shared/models/`) load with `strict=True`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.nn import PadShortcut


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first convolution and of the shortcut.

    Shapes:
        input: (N, in_planes, H, W); output: (N, planes, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            PadShortcut(in_planes, planes, stride) if stride != 1 or in_planes != planes else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR ResNet with `blocks_per_stage` BasicBlocks in each of its three stages.

    Args:
        blocks_per_stage: `n` in depth = 6n + 2.
        num_classes: outputs of the final `linear` layer.

    Shapes:
        input: (N, 3, H, W), 32×32 for CIFAR; output: (N, num_classes) logits.
    """

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._make_stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._make_stage(32, 64, blocks_per_stage, stride=2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 (0.27M parameters)."""
    return CifarResNet(3, num_classes)


def resnet32(num_classes: int = 10) -> CifarResNet:
    """ResNet-32 (0.46M parameters)."""
    return CifarResNet(5, num_classes)


def resnet44(num_classes: int = 10) -> CifarResNet:
    """ResNet-44 (0.66M parameters)."""
    return CifarResNet(7, num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 (0.85M parameters)."""
    return CifarResNet(9, num_classes)


def resnet110(num_classes: int = 10) -> CifarResNet:
    """ResNet-110 (1.7M parameters)."""
    return CifarResNet(18, num_classes)
