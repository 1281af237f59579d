"""Models by name, so each client can use a different architecture (any mix per run).

Every model maps ``[B, in_channels, image_size, image_size]`` to ``[B, num_classes]`` logits for
image sizes from 8 (scikit-learn digits) to 32 (CIFAR-10) and beyond. A ``seed`` makes the random
initialisation reproducible without touching the caller's global RNG.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from securedream.errors import SecureDreamError
from securedream.models.cnn import SmallCNN, WideResNet
from securedream.models.torchvision_adapters import small_resnet18, small_vgg11_bn

MIN_IMAGE_SIZE = 4


class ModelError(SecureDreamError, ValueError):
    """A model name or shape argument is invalid."""


Builder = Callable[[int, int, int], nn.Module]  # (in_channels, num_classes, image_size)


def _cnn(widths: tuple[int, ...], norm: str) -> Builder:
    return lambda c, k, s: SmallCNN(c, k, s, widths=widths, norm=norm)


_BUILDERS: dict[str, Builder] = {
    "cnn-bn": _cnn((16, 32), "bn"),
    "cnn-bn-wide": _cnn((32, 64), "bn"),
    "cnn-bn-deep": _cnn((16, 32, 64), "bn"),
    "cnn-gn": _cnn((16, 32), "gn"),
    "cnn-gn-wide": _cnn((32, 64), "gn"),
    "cnn-gn-deep": _cnn((16, 32, 64), "gn"),
    "wrn-16-2": lambda c, k, s: WideResNet(c, k, depth=16, widen=2),
    "resnet18": small_resnet18,
    "vgg11-bn": small_vgg11_bn,
}


def available_models() -> tuple[str, ...]:
    """The names :func:`build_model` accepts."""
    return tuple(_BUILDERS)


def build_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    seed: int | None = None,
) -> nn.Module:
    """A freshly initialised model ``name`` for square ``image_size`` inputs.

    With ``seed`` the weights are a pure function of (name, shapes, seed) and the global torch RNG
    is left as it was; with ``seed=None`` the global RNG is used as torch normally does.
    """
    if name not in _BUILDERS:
        raise ModelError(f"model: {name!r} is not one of {list(_BUILDERS)}")
    _check_int("in_channels", in_channels, low=1)
    _check_int("num_classes", num_classes, low=2)
    _check_int("image_size", image_size, low=MIN_IMAGE_SIZE)
    builder = _BUILDERS[name]
    if seed is None:
        return builder(in_channels, num_classes, image_size)
    _check_int("seed", seed, low=0, high=2**64 - 1)  # torch.manual_seed's range
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(in_channels, num_classes, image_size)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has BatchNorm layers, whose running statistics dream losses can match."""
    return bool(batchnorm_layers(model))


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` in forward-definition order (for BN-statistics hooks)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _check_int(key: str, value: object, *, low: int, high: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ModelError(f"{key}: must be an integer {allowed}, got {value!r}")
