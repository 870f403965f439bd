"""VGG-16 with batch normalisation (Simonyan & Zisserman 2014, https://arxiv.org/abs/1409.1556) for CIFAR.

The usual CIFAR adaptation: five 2×2 max-pools take a 32×32 input to 1×1×512, and a single `Linear(512, C)`
replaces the three ImageNet fully connected layers.
"""

from __future__ import annotations

import torch
from torch import nn

VGG16_CFG: list[int | str] = [
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
]
"""Output channels of each conv3x3-BN-ReLU; `"M"` is a 2×2 max-pool."""


class VGG(nn.Module):
    """A plain conv3x3-BN-ReLU stack (`features`) followed by one `classifier` layer.

    Args:
        cfg: layer list in the form of `VGG16_CFG`; must end with a pooling that leaves a 1×1 map.
        num_classes: outputs of the classifier.

    Shapes:
        input: (N, 3, 32, 32); output: (N, num_classes) logits.
    """

    def __init__(self, cfg: list[int | str], num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                out_channels = int(v)
                layers += [
                    nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(inplace=True),
                ]
                in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def vgg16_bn(num_classes: int = 10) -> VGG:
    """VGG-16 with batch normalisation, for 32×32 inputs (14.7M parameters)."""
    return VGG(VGG16_CFG, num_classes)
