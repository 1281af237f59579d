"""DeepInversion's BatchNorm-statistics term.

A model trained on real data stores the mean and variance of every BatchNorm input in its running
buffers. Asking the dream batch to reproduce those statistics pulls dreams towards the client's data
distribution. The hooks read the *input* of each BatchNorm layer while the model runs in eval mode,
so the running buffers are used as targets and never updated by dreams (the official CoDream code
builds dreams in training mode and its running statistics absorb the noise images).
"""

from __future__ import annotations

import torch
from torch import nn

from securedream.hooks import LayerHooks, moment_distance


class BatchNormStatistics(LayerHooks):
    """Context manager collecting Σ_layers ‖μ_batch − μ_run‖₂ + ‖σ²_batch − σ²_run‖₂."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._handles = []
        self._terms: list[torch.Tensor] = []

    @property
    def available(self) -> bool:
        """Models without BatchNorm have no statistics to match."""
        return bool(self.layers)

    def _register(self, layer: nn.Module) -> torch.utils.hooks.RemovableHandle:
        return layer.register_forward_hook(self._hook)

    def _clear(self) -> None:
        self._terms = []

    def _hook(
        self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor
    ) -> None:
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        self._terms.append(moment_distance(inputs[0], module.running_mean, module.running_var))

    def loss(self) -> torch.Tensor:
        """Sum over the layers seen in the last forward pass (zero when there are none)."""
        if not self._terms:
            return torch.zeros(())
        return torch.stack(self._terms).sum()
