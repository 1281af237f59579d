"""Float <-> Z_{2^b} encoding: round trip within n * Delta, overflow rule, input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocols import SecAggConfig
from protocols.encoding import (
    EncodingParams,
    decode_integer_sum,
    decode_sum,
    encode,
    encode_integers,
    max_safe_scale,
)
from protocols.errors import ConfigError, EncodingError

floats = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)


@given(
    bits=st.sampled_from([32, 64]),
    n=st.integers(1, 20),
    clip=st.floats(0.01, 100),
    data=st.data(),
)
def test_float_round_trip_within_n_delta(
    bits: int, n: int, clip: float, data: st.DataObject
) -> None:
    d = data.draw(st.integers(1, 50))
    scale = max_safe_scale(n, bits, clip)
    params = EncodingParams(n, bits, clip, scale)
    xs = [data.draw(hnp.arrays(np.float64, d, elements=floats)) for _ in range(n)]
    total = np.zeros(d, dtype=np.uint32 if bits == 32 else np.uint64)
    for x in xs:
        total += encode(x, params)
    decoded = decode_sum(total, params)
    exact = np.sum([np.clip(x, -clip, clip) for x in xs], axis=0)
    err = np.max(np.abs(decoded - exact))
    # n * Delta, plus float64 round-off of the exact reference and of the final division
    assert err <= params.error_bound() + 1e-12 * max(1.0, n * clip) * 4


@given(
    n=st.integers(1, 10),
    weights=st.lists(st.floats(0, 4), min_size=1, max_size=10),
    data=st.data(),
)
def test_weighted_round_trip_within_n_delta(
    n: int, weights: list[float], data: st.DataObject
) -> None:
    params = EncodingParams(len(weights), 32, 1.0, max_safe_scale(len(weights), 32, 1.0, 4.0), 4.0)
    xs = [data.draw(hnp.arrays(np.float64, 8, elements=floats)) for _ in weights]
    total = np.zeros(8, dtype=np.uint32)
    for w, x in zip(weights, xs, strict=True):
        total += encode(x, params, w)
    exact = sum(w * np.clip(x, -1, 1) for w, x in zip(weights, xs, strict=True))
    assert np.max(np.abs(decode_sum(total, params) - exact)) <= params.error_bound() + 1e-9


def test_small_weights_keep_absolute_precision() -> None:
    """Weight is applied before rounding but on the clipped float, so weight 1/1000 still has
    absolute error below Delta (Flower quantises first and loses precision: ANCHORS)."""
    params = EncodingParams(1, 32, 8.0, 2.0**22, 1.0)
    x = np.linspace(-8, 8, 10_000)
    got = decode_sum(encode(x, params, 1e-3), params)
    assert np.max(np.abs(got - 1e-3 * x)) < params.delta


def test_stochastic_rounding_is_unbiased() -> None:
    params = EncodingParams(1, 32, 1.0, 1.0)  # Delta = 1: 0.3 rounds to 0 or 1
    x = np.full(200_000, 0.3)
    q = decode_sum(encode(x, params), params)
    assert set(np.unique(q)) == {0.0, 1.0}
    assert abs(q.mean() - 0.3) < 0.005  # ~5 sigma
    assert not np.array_equal(encode(x[:1000], params), encode(x[:1000], params))


def test_negative_values_wrap_and_decode() -> None:
    params = EncodingParams(3, 32, 10.0, 4.0)
    total = encode(np.array([-10.0, 2.5]), params) + encode(np.array([-10.0, -5.0]), params)
    assert total.dtype == np.uint32
    assert np.allclose(decode_sum(total, params), [-20.0, -2.5], atol=2 * params.delta)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_rejected(bad: float) -> None:
    params = EncodingParams(2)
    with pytest.raises(EncodingError, match="NaN or infinite"):
        encode(np.array([0.0, bad]), params)


def test_shape_dtype_weight_validation() -> None:
    params = EncodingParams(2, max_weight=2.0)
    with pytest.raises(EncodingError, match="1-D"):
        encode(np.zeros((2, 2)), params)
    with pytest.raises(EncodingError, match="numeric"):
        encode(np.array(["a"]), params)
    with pytest.raises(EncodingError, match="weight"):
        encode(np.zeros(2), params, 2.5)
    with pytest.raises(EncodingError, match="weight"):
        encode(np.zeros(2), params, -1.0)
    with pytest.raises(EncodingError, match="weight"):
        encode(np.zeros(2), params, math.nan)


def test_overflow_refused_with_numbers() -> None:
    with pytest.raises(ConfigError) as exc:
        EncodingParams(1000, 32, 8.0, 2.0**22)
    msg = str(exc.value)
    assert "1000 * 33554432" in msg and "2^31 - 1 = 2147483647" in msg and "bits=64" in msg
    # the same through the session config, and the safe scale fits exactly
    with pytest.raises(ConfigError, match="overflow"):
        SecAggConfig(1000, clip=8.0, scale=2.0**22)
    ok = EncodingParams(1000, 32, 8.0, max_safe_scale(1000, 32, 8.0))
    assert 1000 * ok.per_client_bound <= 2**31 - 1
    assert 1000 * math.ceil(8.0 * 2 * ok.scale) > 2**31 - 1  # the next power of two overflows


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_clients": 0}, "num_clients"),
        ({"num_clients": 2, "bits": 16}, "bits"),
        ({"num_clients": 2, "clip": 0.0}, "clip"),
        ({"num_clients": 2, "scale": math.inf}, "scale"),
        ({"num_clients": 2, "max_weight": -1.0}, "max_weight"),
        ({"num_clients": 2, "bits": 64, "scale": 2.0**41}, "2\\^40"),
    ],
)
def test_encoding_params_validated(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        EncodingParams(**kwargs)


def test_integer_path_and_bounds() -> None:
    params = EncodingParams(4, 32)
    x = np.array([-5, 0, 7], dtype=np.int64)
    total = encode_integers(x, params) + encode_integers(-2 * x, params)
    assert np.array_equal(decode_integer_sum(total, 32), -x)
    with pytest.raises(EncodingError, match="exceeds"):
        encode_integers(np.array([params.integer_bound + 1]), params)
    with pytest.raises(EncodingError, match="integer dtype"):
        encode_integers(np.array([1.0]), params)
    p64 = EncodingParams(4, 64)
    big = np.array([p64.integer_bound, -p64.integer_bound], dtype=np.int64)
    assert np.array_equal(decode_integer_sum(encode_integers(big, p64), 64), big)
