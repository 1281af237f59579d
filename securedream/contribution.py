"""The client-side contribution pipeline: clip → fixed-point encode → integer noise share → mask.

Why one module: what a client does to its contribution before it leaves the client decides what
the server can learn, so it must be the same code whichever engine carries it. A Flower node
(:mod:`securedream.engines.flower.clientside`) runs :func:`encode_contribution` and then
``protocols.Client.submit_input`` (the mask); the in-process engine, which plays every client, runs
the same steps from the stack: :class:`~securedream.privacy.aggregator.DPAggregator` calls
:func:`clip_l2`, :class:`~securedream.aggregation.secure.SecureAggregator` calls
:func:`fixed_point_encode` and adds the share of :func:`skellam_share_mu`.

* :func:`clip_l2` scales a whole contribution to L2 norm at most C (client-level DP);
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

from securedream.randomness import NoiseSource


def clip_l2(contribution: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale ``contribution`` down so its L2 norm over *all* entries is at most ``max_norm``.

    Opacus-style: factor = min(1, C / (‖x‖ + 1e-6)), so the norm of the result never exceeds C.
    """
    if max_norm <= 0:
        raise ValueError(f"clip norm must be > 0, got {max_norm}")
    norm = torch.linalg.vector_norm(contribution.to(torch.float64))
    factor = min(1.0, max_norm / (float(norm) + 1e-6))
    return contribution * factor if factor < 1.0 else contribution.clone()


def encode_contribution(
    value: torch.Tensor,
    *,
    clip: float | None,
    value_range: float,
    scale: float,
    rounding: NoiseSource,
    noise: NoiseSource | None = None,
    noise_multiplier: float = 0.0,
    noise_shares: int = 0,
) -> np.ndarray:
    """What a client masks: its contribution clipped to ``clip`` (DP on), fixed-point encoded,
    plus its Skellam noise share drawn from ``noise`` (distributed DP)."""
    if clip is not None:
        value = clip_l2(value, clip)
    encoded = fixed_point_encode(value, value_range, scale, rounding)
    if noise is not None:
        mu = skellam_share_mu(noise_multiplier, scale, len(encoded), noise_shares)
        encoded += noise.skellam(len(encoded), mu)
    return encoded


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
