"""The client-side contribution pipeline: clip → fixed-point encode → integer noise share → mask.

Why one module: what a client does to its contribution before it leaves the client decides what
the server can learn, so it must be the same code whichever engine carries it. The in-process
secure aggregator (:class:`securedream.aggregation.secure.SecureAggregator`, which plays every
client) and a Flower node (:mod:`securedream.engines.flower.clientside`) both call these functions;
the mask itself is ``protocols.Client.submit_input`` and clipping is
:func:`securedream.privacy.clipping.clip_l2`.

* :func:`fixed_point_encode` divides by the channel's public range, clips to [-1, 1], scales by s
  and rounds up with probability equal to the fractional part (unbiased; error < 1/s each),
  drawing one ``rounding.uniform`` call per contribution;
* :func:`rounding_stream` is the rounding stream of one contribution: with seeded rounding every
  contribution of a round draws from one stream keyed by (seed, round), at the position the
  contributions before it used up, so both engines draw the same bits; otherwise os.urandom;
* :func:`skellam_share_mu` is the Skellam parameter of one client's distributed-DP noise share in
  the encoding's integer units (its sensitivity is s for the clipped contribution plus √d for the
  rounding; the total variance (z·sensitivity)² is split over the ``min_survivors`` shares that
  every released sum is guaranteed to contain).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from securedream.privacy.noise import NoiseSource


def fixed_point_encode(
    contribution: torch.Tensor, value_range: float, scale: float, rounding: NoiseSource
) -> np.ndarray:
    """The contribution as integers: ``round_stochastic(s · clip(x / range, -1, 1))``."""
    values = contribution.detach().cpu().to(torch.float64, copy=True).reshape(1, -1).numpy()
    uniform = rounding.uniform(values.shape[1])
    return fixed_point_encode_rows(values, value_range, scale, [uniform])[0]


def fixed_point_encode_rows(
    values: np.ndarray, value_range: float, scale: float, uniforms: Sequence[np.ndarray]
) -> np.ndarray:
    """:func:`fixed_point_encode` of several contributions at once, bit for bit.

    ``values`` is a float64 array of shape (contributions, d), overwritten; ``uniforms[i]`` are
    contribution i's rounding variates (``d`` of them, drawn as :func:`fixed_point_encode` draws
    them). One array pass per operation for all contributions (the in-process secure
    aggregator encodes every client of a step this way).
    """
    values /= value_range
    np.clip(values, -1.0, 1.0, out=values)
    values *= scale
    floor = np.floor(values)
    values -= floor  # the fractional parts
    out = floor.astype(np.int64)
    for row, uniform in enumerate(uniforms):
        out[row] += uniform < values[row]  # round up with probability = the fractional part
    return out


def rounding_stream(
    seed: int, round_index: int, position: int = 0, *, from_os: bool = False
) -> NoiseSource:
    """The rounding randomness of a contribution that ``position`` contributions precede."""
    if from_os:
        return NoiseSource.from_os()
    return NoiseSource.from_seed(seed, "rounding", round_index, position=position)


def l2_sensitivity(scale: float, dim: int) -> float:
    """‖q‖₂ of one encoded contribution: ≤ s (clipped to the range) + √d (rounding)."""
    return scale + math.sqrt(dim)


def skellam_share_mu(noise_multiplier: float, scale: float, dim: int, shares: int) -> float:
    """Skellam parameter μ of one client's noise share (integer units), calibrated so that
    ``shares`` shares together reach variance (z·Δ₂)² (the privacy engine chooses ``shares``: the
    honest shares left after the tolerated colluders and dropouts)."""
    total_variance = (noise_multiplier * l2_sensitivity(scale, dim)) ** 2
    return total_variance / (2.0 * shares)
