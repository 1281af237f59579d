"""DP feature statistics: a dream target like BatchNorm's running statistics, for DP-SGD models.

DeepInversion's BN term asks dreams to reproduce the mean and variance of every BatchNorm input,
which BatchNorm models store as running buffers. DP-SGD needs GroupNorm models, which store no
statistics, and the running buffers of a BN model would be an un-noised function of the private
samples anyway. Here a client *measures* the same statistics at the input of every GroupNorm layer
once per round, as a Gaussian mechanism over its private samples:

- each example contributes one vector v_i = [spatial mean of each channel, spatial mean of the
  square of each channel] over all GroupNorm inputs (so the mean over examples gives the per-channel
  mean and second moment, exactly what BN statistics are);
- v_i is clipped to L2 norm ≤ C (the sensitivity of the sum to adding or removing one example);
- the release is Σ_i clip(v_i) + N(0, (z·C)² I), divided by the client's sample count n (treated
  as public, as Opacus's sample rate 1/⌈n/B⌉ already does).

One release is the sampled Gaussian mechanism at sample rate 1, so it enters the client's Opacus
ledger as the history entry (z, 1.0, 1) next to its DP-SGD steps (see ``sample_level``). The noisy
statistics stay with the client; the dream gradients computed from them are post-processing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from securedream.hooks import LayerHooks, moment_distance


def feature_layers(model: nn.Module) -> list[nn.GroupNorm]:
    """The GroupNorm layers whose inputs are measured, in forward-definition order."""
    return [m for m in model.modules() if isinstance(m, nn.GroupNorm)]


@dataclass(frozen=True)
class LayerTarget:
    """Per-channel mean and variance of one GroupNorm layer's input (the dream target)."""

    mean: torch.Tensor
    var: torch.Tensor


@dataclass(frozen=True)
class FeatureRelease:
    """What one round's measurement produced: targets plus the numbers needed to account it."""

    targets: list[LayerTarget]
    clip: float
    noise_multiplier: float  # 0 = exact statistics (non-private runs only)
    samples: int
    clipped_fraction: float


class _InputRecorder(LayerHooks):
    """Forward pre-hooks that keep the input of each layer during one forward pass."""

    def __init__(self, layers: list[nn.GroupNorm]) -> None:
        self.layers = list(layers)
        self.inputs: list[torch.Tensor] = []
        self._handles = []

    def _register(self, layer: nn.Module) -> torch.utils.hooks.RemovableHandle:
        return layer.register_forward_pre_hook(self._hook)

    def _clear(self) -> None:
        self.inputs = []

    def _hook(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self.inputs.append(inputs[0])


@torch.no_grad()
def per_example_features(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """[n, 2·Σchannels]: per example and GroupNorm input, channel means then mean squares."""
    layers = feature_layers(model)
    if not layers:
        raise ValueError("model has no GroupNorm layers to measure")
    model.eval()
    rows = []
    for i in range(0, len(x), batch_size):
        with _InputRecorder(layers) as rec:
            model(x[i : i + batch_size])
        parts = []
        for h in rec.inputs:
            flat = h.flatten(2)  # [b, C, H·W]
            parts += [flat.mean(dim=2), (flat * flat).mean(dim=2)]
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows)


def clip_rows(v: torch.Tensor, clip: float) -> tuple[torch.Tensor, int]:
    """Scale each row to L2 norm ≤ ``clip``; returns the rows and how many were scaled down."""
    norms = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    factor = (clip / norms.clamp_min(1e-12)).clamp(max=1.0)
    return v * factor, int((norms.squeeze(1) > clip).sum())


def layer_channels(model: nn.Module) -> list[int]:
    return [layer.num_channels for layer in feature_layers(model)]


def _split_targets(model: nn.Module, mean_vector: torch.Tensor) -> list[LayerTarget]:
    targets = []
    offset = 0
    for c in layer_channels(model):
        mean = mean_vector[offset : offset + c]
        second = mean_vector[offset + c : offset + 2 * c]
        offset += 2 * c
        # noise can push the second moment under mean²; a variance is never negative
        targets.append(LayerTarget(mean=mean.clone(), var=(second - mean * mean).clamp_min(0.0)))
    return targets


def measure_feature_statistics(
    model: nn.Module,
    x: torch.Tensor,
    *,
    clip: float,
    noise_multiplier: float,
    generator: torch.Generator | None,
) -> FeatureRelease:
    """One release of the per-channel statistics of ``model``'s GroupNorm inputs over ``x``.

    ``noise_multiplier > 0``: per-example clipping to ``clip`` and Gaussian noise of std
    ``noise_multiplier · clip`` on the sum, drawn on CPU from ``generator``.
    ``noise_multiplier == 0`` gives the exact, unclipped statistics, for runs without
    sample-level DP only.
    """
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("no samples to measure")
    v = per_example_features(model, x).double().cpu()
    if noise_multiplier > 0:
        v, clipped = clip_rows(v, clip)
        total = v.sum(dim=0)
        noise = torch.randn(total.shape, generator=generator, dtype=torch.float64)
        total = total + noise * (noise_multiplier * clip)
    else:
        clipped = 0
        total = v.sum(dim=0)
    device = next(model.parameters()).device
    mean_vector = (total / n).float().to(device)
    return FeatureRelease(
        targets=_split_targets(model, mean_vector),
        clip=clip,
        noise_multiplier=noise_multiplier,
        samples=n,
        clipped_fraction=clipped / n,
    )


class FeatureStatisticsLoss(LayerHooks):
    """Context manager: Σ_layers ‖μ_batch − μ_target‖₂ + ‖σ²_batch − σ²_target‖₂ at GroupNorm
    inputs.

    The same form as the BN term (``dreams.bn_hooks``), with the DP targets in place of BatchNorm's
    running buffers.
    """

    def __init__(self, model: nn.Module, targets: list[LayerTarget]) -> None:
        self.layers = feature_layers(model)
        if len(self.layers) != len(targets):
            raise ValueError(f"{len(targets)} targets for {len(self.layers)} GroupNorm layers")
        self.targets = dict(zip(self.layers, targets, strict=True))
        self._handles = []
        self._terms: list[torch.Tensor] = []

    def _register(self, layer: nn.Module) -> torch.utils.hooks.RemovableHandle:
        return layer.register_forward_pre_hook(self._hook)

    def _clear(self) -> None:
        self._terms = []

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        target = self.targets[module]  # type: ignore[index]
        self._terms.append(moment_distance(inputs[0], target.mean, target.var))

    def loss(self) -> torch.Tensor:
        if not self._terms:
            return torch.zeros(())
        return torch.stack(self._terms).sum()
