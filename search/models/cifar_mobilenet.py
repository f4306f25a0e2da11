"""A CIFAR-style MobileNetV2 (Sandler et al. 2018) for small inputs: inverted residual blocks with depthwise convs.

The mobile counterpart of the zoo's ResNet-20 for the benchmarks: the same small inputs (8x8 digits,
32x32 CIFAR), so the first conv and the first stages keep the resolution (stride 1) and two stages
halve it. Each block expands its input by `expansion` with a 1x1 conv, filters each channel with a
3x3 depthwise conv, projects back with a linear 1x1 conv, and adds its input when the shapes match
(those blocks are removable residual blocks to the search). 0.4 M parameters at width 1 (6.2 MFLOPs on 8x8 digits).
"""
from __future__ import annotations

from torch import nn

#: (expansion, output channels, blocks, stride of the first block) per stage
STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 3, 2), (6, 96, 2, 1))


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers = [conv_bn(cin, hidden)] if expansion != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class CifarMobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        c = lambda n: max(8, int(round(n * width / 8)) * 8)  # noqa: E731
        cin = c(32)
        layers = [conv_bn(in_channels, cin, 3)]
        for expansion, cout, blocks, stride in STAGES:
            for i in range(blocks):
                layers.append(InvertedResidual(cin, c(cout), stride if i == 0 else 1, expansion))
                cin = c(cout)
        layers.append(conv_bn(cin, c(320)))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c(320), num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def mobilenetv2(num_classes: int = 10, in_channels: int = 3) -> CifarMobileNetV2:
    return CifarMobileNetV2(num_classes, in_channels)
