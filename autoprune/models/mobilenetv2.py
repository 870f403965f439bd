"""MobileNetV2 (Sandler et al. 2018, https://arxiv.org/abs/1801.04381), CIFAR variant.

As in kuangliu/pytorch-cifar, the stem conv and the `(6, 24, 2, 1)` stage use stride 1 so that a 32×32
input still ends at 4×4. Blocks follow the paper (ReLU6, linear bottleneck, identity residual when the shape
is kept).
"""

from __future__ import annotations

import torch
from torch import nn

CIFAR_CFG: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
"""Stages as (expansion t, output channels c, blocks n, stride s of the first block)."""


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds to the nearest multiple of `divisor`, never below 90% of `value` (as in the reference code)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1×1 expand-ReLU6, depthwise 3×3-ReLU6, linear 1×1 project; adds the input when the shape is kept.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        stride: stride of the depthwise convolution.
        expansion: hidden channels are `in_ch * expansion`; with 1 there is no expand convolution.

    Shapes:
        input: (N, in_ch, H, W); output: (N, out_ch, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn(in_ch, hidden, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, out_ch, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for small (32×32) inputs.

    Args:
        num_classes: outputs of the classifier.
        width_mult: multiplier on every stage's channels (rounded to multiples of 8); the last conv keeps
            1280 channels unless `width_mult > 1`.

    Shapes:
        input: (N, 3, H, W), 32×32 for CIFAR; output: (N, num_classes) logits.
    """

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0) -> None:
        super().__init__()
        in_ch = _make_divisible(32 * width_mult)
        last_ch = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn(3, in_ch, 3, stride=1)]
        for t, c, n, s in CIFAR_CFG:
            out_ch = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        layers.append(_conv_bn(in_ch, last_ch, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(out)


def mobilenet_v2(num_classes: int = 10, width_mult: float = 1.0) -> MobileNetV2:
    """MobileNetV2, CIFAR variant (2.2M parameters at `width_mult=1`)."""
    return MobileNetV2(num_classes, width_mult)
