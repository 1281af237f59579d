"""The client-side contribution pipeline (securedream/contribution.py), used by both engines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from securedream.contribution import (
    clip_l2,
    encode_contribution,
    fixed_point_encode,
    l2_sensitivity,
    rounding_stream,
    skellam_share_mu,
)


def test_rounding_stream_at_a_position_continues_the_round_stream() -> None:
    whole = rounding_stream(7, 3)
    draws = [whole.uniform(5) for _ in range(4)]
    for position, expected in enumerate(draws):
        assert np.array_equal(rounding_stream(7, 3, position).uniform(5), expected)
    assert not np.array_equal(rounding_stream(7, 4).uniform(5), draws[0])  # keyed by round
    a, b = rounding_stream(7, 3, from_os=True), rounding_stream(7, 3, from_os=True)
    assert a.secure and not np.array_equal(a.uniform(5), b.uniform(5))


def test_encoding_is_clipped_scaled_and_rounded_to_a_neighbour() -> None:
    x = torch.tensor([0.0, 0.5, -0.25, 3.0, -9.0, 0.123456])
    scale, value_range = 1000.0, 2.0
    got = fixed_point_encode(x, value_range, scale, rounding_stream(0, 0))
    exact = np.clip(x.double().numpy() / value_range, -1, 1) * scale
    assert got.dtype == np.int64
    assert np.all((got == np.floor(exact)) | (got == np.ceil(exact)))
    assert got[3] == scale and got[4] == -scale  # out-of-range values are clipped


def test_stochastic_rounding_is_unbiased() -> None:
    x = torch.full((200_000,), 0.3)
    got = fixed_point_encode(x, 1.0, 10.0, rounding_stream(1, 0))
    assert abs(got.mean() - 3.0) < 0.01
    y = torch.full((200_000,), 0.037)
    got = fixed_point_encode(y, 1.0, 10.0, rounding_stream(1, 1))
    assert set(np.unique(got)) == {0, 1} and abs(got.mean() - 0.37) < 0.005


def test_same_stream_position_gives_the_same_encoding() -> None:
    x = torch.randn(64) * 0.01
    a = fixed_point_encode(x, 0.05, 2**16, rounding_stream(3, 2, 5))
    b = fixed_point_encode(x, 0.05, 2**16, rounding_stream(3, 2, 5))
    c = fixed_point_encode(x, 0.05, 2**16, rounding_stream(3, 2, 6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize(("z", "scale", "dim", "t"), [(0.7, 2**16, 1024, 2), (1.3, 512.0, 10, 5)])
def test_skellam_shares_add_up_to_the_calibrated_variance(z, scale, dim, t) -> None:
    sensitivity = l2_sensitivity(scale, dim)
    assert sensitivity == pytest.approx(scale + math.sqrt(dim))
    # a Skellam(μ) share has variance 2μ; t shares (the guaranteed minimum) give (z·Δ₂)²
    assert t * 2 * skellam_share_mu(z, scale, dim, t) == pytest.approx((z * sensitivity) ** 2)


def test_encode_contribution_clips_encodes_then_adds_the_share() -> None:
    """The node's whole pre-mask pipeline is the composition of the in-process steps."""
    x = torch.randn(256) * 3.0
    kwargs = {"value_range": 0.5, "scale": 2.0**12}
    plain = encode_contribution(x, clip=None, rounding=rounding_stream(5, 1, 2), **kwargs)
    assert np.array_equal(plain, fixed_point_encode(x, 0.5, 2.0**12, rounding_stream(5, 1, 2)))
    clipped = encode_contribution(x, clip=0.5, rounding=rounding_stream(5, 1, 2), **kwargs)
    expected = fixed_point_encode(clip_l2(x, 0.5), 0.5, 2.0**12, rounding_stream(5, 1, 2))
    assert np.array_equal(clipped, expected)
    assert float(torch.linalg.vector_norm(clip_l2(x, 0.5))) <= 0.5
    from securedream.randomness import NoiseSource

    noisy = encode_contribution(
        x,
        clip=0.5,
        rounding=rounding_stream(5, 1, 2),
        noise=NoiseSource.from_seed(9, "share"),
        noise_multiplier=1.0,
        noise_shares=3,
        **kwargs,
    )
    mu = skellam_share_mu(1.0, 2.0**12, 256, 3)
    share = NoiseSource.from_seed(9, "share").skellam(256, mu)
    assert np.array_equal(noisy, expected + share)
