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


class BatchNormStatistics:
    """Context manager collecting Σ_layers ‖μ_batch − μ_run‖₂ + ‖σ²_batch − σ²_run‖₂."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._terms: list[torch.Tensor] = []

    @property
    def available(self) -> bool:
        """Models without BatchNorm have no statistics to match."""
        return bool(self.layers)

    def _hook(
        self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor
    ) -> None:
        x = inputs[0]
        channels = x.shape[1]
        flat = x.transpose(0, 1).reshape(channels, -1)
        mean = flat.mean(dim=1)
        var = flat.var(dim=1, unbiased=False)
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        term = torch.linalg.vector_norm(mean - module.running_mean) + torch.linalg.vector_norm(
            var - module.running_var
        )
        self._terms.append(term)

    def __enter__(self) -> BatchNormStatistics:
        self._terms = []
        self._handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def loss(self) -> torch.Tensor:
        """Sum over the layers seen in the last forward pass (zero when there are none)."""
        if not self._terms:
            return torch.zeros(())
        return torch.stack(self._terms).sum()
