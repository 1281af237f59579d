"""Forward hooks that live only inside ``with``, and the moment-matching distance.

Both dream terms that match layer statistics (DeepInversion's BatchNorm term in
``dreams.bn_hooks`` and the DP feature-statistics term in ``privacy.feature_stats``) and the
feature recorder register hooks on a list of layers for one forward pass; this is their one home,
kept outside both packages so neither imports the other for it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Self

import torch
from torch import nn


class LayerHooks(ABC):
    """Hooks on ``self.layers`` that exist only inside ``with``; entering clears the last record.

    Subclasses say which hook they register (forward or pre-forward) and what it records; the
    BatchNorm term here and the DP feature-statistics term (``privacy.feature_stats``) share it.
    """

    layers: list[nn.Module]
    _handles: list[torch.utils.hooks.RemovableHandle]

    @abstractmethod
    def _register(self, layer: nn.Module) -> torch.utils.hooks.RemovableHandle:
        """Register this subclass's hook on ``layer``."""

    @abstractmethod
    def _clear(self) -> None:
        """Forget what the previous pass recorded."""

    def __enter__(self) -> Self:
        self._clear()
        self._handles = [self._register(layer) for layer in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def moment_distance(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """‖μ_x − mean‖₂ + ‖σ²_x − var‖₂ over the channels (dim 1) of a layer input ``x``."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1)
    return torch.linalg.vector_norm(flat.mean(dim=1) - mean) + torch.linalg.vector_norm(
        flat.var(dim=1, unbiased=False) - var
    )
