"""A small CNN for the 8×8 grey-scale sklearn digits, with one residual block so channels are coupled.

Trains to over 90% test accuracy within a few seconds on a CPU, which makes it the model for quick end-to-end
runs and tests of the whole pipeline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch)]


class ResidualBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the identity, then ReLU.

    Args:
        channels: input and output channels.

    Shapes:
        input and output: (N, channels, H, W).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(channels, channels)
        self.conv2, self.bn2 = _conv_bn(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


class DigitsCNN(nn.Module):
    """conv16-conv32-maxpool-conv64, a residual block at 64 channels, global average pool, `linear`.

    Args:
        num_classes: outputs of the classifier.

    Shapes:
        input: (N, 1, 8, 8); output: (N, num_classes) logits.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(1, 16),
            nn.ReLU(inplace=True),
            *_conv_bn(16, 32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            *_conv_bn(32, 64),
            nn.ReLU(inplace=True),
            ResidualBlock(64),
        )
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.linear(out)


def digits_cnn(num_classes: int = 10) -> DigitsCNN:
    """The digits CNN (0.10M parameters)."""
    return DigitsCNN(num_classes)
