"""The dream generator G(z) of CoDream-fast and its flat-vector form for aggregation.

A small DCGAN-style decoder: a linear projection of the latent to a (2w)×s/4×s/4 map, two
upsample-convolution blocks and a last convolution to the image channels. Its BatchNorm layers
keep no running statistics (every forward normalises with the batch's own), so the generator's
whole state is its parameters and a client, given the broadcast parameters and latents, computes
exactly the dreams the server computes. The output BatchNorm has no affine part, so dreams start
with zero mean and unit variance per channel, the scale of normalised input space.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class DreamGenerator(nn.Module):
    def __init__(self, latent_dim: int, width: int, channels: int, image_size: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.start = math.ceil(image_size / 4)
        self.hidden = 2 * width
        # no biases before a BatchNorm: it would remove them, and Adam would amplify their
        # vanishing gradients into noise
        self.project = nn.Linear(latent_dim, self.hidden * self.start * self.start, bias=False)
        self.body = nn.Sequential(
            nn.BatchNorm2d(self.hidden, track_running_stats=False),
            nn.Upsample(size=math.ceil(image_size / 2)),
            nn.Conv2d(self.hidden, self.hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(self.hidden, track_running_stats=False),
            nn.LeakyReLU(0.2),
            nn.Upsample(size=image_size),
            nn.Conv2d(self.hidden, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width, track_running_stats=False),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels, affine=False, track_running_stats=False),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(len(z), self.hidden, self.start, self.start)
        return self.body(h)


def build_generator(
    latent_dim: int, width: int, channels: int, image_size: int, seed: int
) -> DreamGenerator:
    """A generator whose initial weights are a pure function of its shape and ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DreamGenerator(latent_dim, width, channels, image_size)


def flat_parameters(generator: nn.Module) -> torch.Tensor:
    """All parameters as one float32 vector (a copy), in ``parameters()`` order."""
    return torch.nn.utils.parameters_to_vector(generator.parameters()).detach().clone()


def load_flat(generator: nn.Module, flat: torch.Tensor) -> None:
    """Overwrite the parameters with ``flat`` (the layout of :func:`flat_parameters`)."""
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(flat.to(torch.float32), generator.parameters())


def parameter_count(generator: nn.Module) -> int:
    return sum(p.numel() for p in generator.parameters())
