"""Small CNNs written for CoDream on small images (8x8 to 32x32).

They are the fast models clients train on CPU. Every activation is a non-in-place ``ReLU`` so the
same code can be wrapped for per-sample gradients (Opacus-style DP-SGD); the ``gn`` variant swaps
BatchNorm for GroupNorm, which DP-SGD needs, at the cost of the BatchNorm statistics that dreams
are usually matched against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(_groups(channels), channels)
    raise ValueError(f"norm: {kind!r} is not one of ['bn', 'gn']")


def _groups(channels: int) -> int:
    """Up to 8 groups, each with at least 2 channels, dividing ``channels`` exactly."""
    for g in (8, 4, 2, 1):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


class SmallCNN(nn.Module):
    """conv3x3-norm-ReLU-maxpool blocks, then one linear layer over the flattened map.

    A 2x2 max-pool follows a block only while the map is at least 2x2, so 8x8 inputs work with any
    depth; the flattened size is computed from ``image_size`` so the classifier sees every position.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        widths: Sequence[int] = (16, 32),
        norm: str = "bn",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size, ch = image_size, in_channels
        for width in widths:
            layers += [
                nn.Conv2d(ch, width, kernel_size=3, padding=1, bias=False),
                _norm(norm, width),
                nn.ReLU(inplace=False),
            ]
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            ch = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(ch * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class _WideBlock(nn.Module):
    """Pre-activation wide-ResNet block: BN-ReLU-conv twice, 1x1 shortcut on shape change."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Module = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        skip = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + skip


class WideResNet(nn.Module):
    """WRN-depth-k for small inputs (Zagoruyko & Komodakis), e.g. WRN-16-2 with ~0.7M parameters.

    Written here rather than taken from torchvision, whose only wide ResNets are ImageNet-sized
    (WRN-50-2, 69M parameters) and far too slow for CPU clients.
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int = 16, widen: int = 2) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"depth: must be 6n+4 (10, 16, 22, 28, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        cin = widths[0]
        for stage, cout in enumerate(widths[1:]):
            for b in range(n):
                blocks.append(_WideBlock(cin, cout, stride=2 if stage > 0 and b == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn(self.blocks(self.conv(x))))
        return self.fc(torch.flatten(self.pool(out), 1))
