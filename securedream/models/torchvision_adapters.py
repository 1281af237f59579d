"""torchvision ResNet-18 and VGG-11-BN, randomly initialised and adapted to small images.

The ImageNet stems (7x7 stride-2 conv + max-pool for ResNet, five max-pools for VGG) would shrink
an 8x8 or 28x28 image to nothing, so the stems are replaced as in the CIFAR literature. Nothing is
downloaded: weights are always ``None``. These models use torchvision's in-place ReLUs, so they
are for non-DP clients; DP-SGD clients should use ``cnn-gn``.
"""

from __future__ import annotations

import torch
from torch import nn

# Inputs up to this size get the CIFAR-style stem (3x3 stride-1 conv, no max-pool).
SMALL_INPUT = 32


def small_resnet18(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """ResNet-18 with an ``in_channels`` stem; 3x3 stride-1 conv1 and no max-pool when <= 32px."""
    from torchvision.models import resnet18  # local: keeps `import securedream.models` fast

    model = resnet18(weights=None, num_classes=num_classes)
    if image_size <= SMALL_INPUT:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


class SmallVGG(nn.Module):
    """VGG features, global average pool, one linear layer (no 4096-wide ImageNet head).

    The torchvision head would add ~120M parameters sized for 7x7 maps; small inputs end at 1x1, so
    a single ``Linear(512, num_classes)`` is the usual CIFAR-style head.
    """

    def __init__(self, features: nn.Sequential, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)
        # torchvision's VGG initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def small_vgg11_bn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """VGG-11-BN whose max-pools are kept only while the map is still at least 2x2."""
    from torchvision.models.vgg import cfgs, make_layers  # local: torchvision is slow to import

    cfg: list[str | int] = []
    size = image_size
    for item in cfgs["A"]:
        if item == "M":
            if size < 2:
                continue
            size //= 2
        cfg.append(item)
    features = make_layers(cfg, batch_norm=True)
    first = features[0]
    assert isinstance(first, nn.Conv2d)
    features[0] = nn.Conv2d(in_channels, first.out_channels, kernel_size=3, padding=1)
    return SmallVGG(features, num_classes)
