"""Shamir t-of-n over GF(2^256 + 297)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import shamir
from protocols.errors import ConfigError, InvalidShare

PRIME = shamir.PRIME


def _is_probable_prime(n: int, rounds: int = 40) -> bool:
    d, r = n - 1, 0
    while d % 2 == 0:
        d //= 2
        r += 1
    rng = random.Random(1234)
    for _ in range(rounds):
        a = rng.randrange(2, n - 2)
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_field_is_prime_and_holds_every_32_byte_secret() -> None:
    assert PRIME == 2**256 + 297
    assert _is_probable_prime(PRIME)
    assert all(not _is_probable_prime(2**256 + k) for k in range(1, 297, 2))
    secret = b"\xff" * 32
    shares = shamir.split(secret, 3, [1, 2, 3])
    assert shamir.reconstruct(shares, 3) == secret


@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(1, 12),
    data=st.data(),
)
def test_any_t_shares_in_any_order_reconstruct(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    indices = data.draw(st.lists(st.integers(1, 2**32 - 1), min_size=n, max_size=n, unique=True))
    shares = shamir.split(secret, t, indices)
    assert set(shares) == set(indices) and 0 not in shares
    subset = data.draw(st.permutations(indices))[: data.draw(st.integers(t, n))]
    assert shamir.reconstruct({i: shares[i] for i in subset}, t) == secret


@given(
    secret=st.binary(min_size=32, max_size=32),
    candidate=st.binary(min_size=32, max_size=32),
    t=st.integers(2, 8),
)
def test_t_minus_1_shares_are_consistent_with_every_secret(
    secret: bytes, candidate: bytes, t: int
) -> None:
    """For any candidate secret there is a degree t-1 polynomial through (0, candidate) and the
    t - 1 observed shares, so t - 1 shares carry no information about the secret."""
    shares = shamir.split(secret, t, list(range(1, t + 1)))
    seen = {i: shares[i] for i in range(1, t)}  # t - 1 shares
    points = {0: int.from_bytes(candidate, "big"), **seen}
    xs = tuple(points)

    def interpolate(x: int) -> int:
        total = 0
        for xi in xs:
            num = den = 1
            for xj in xs:
                if xj != xi:
                    num = num * (x - xj) % PRIME
                    den = den * (xi - xj) % PRIME
            total += points[xi] * num * pow(den, -1, PRIME)
        return total % PRIME

    forged = {**seen, t: interpolate(t)}
    assert shamir.reconstruct(forged, t) == candidate


def test_fewer_than_t_shares_refused() -> None:
    shares = shamir.split(b"a" * 32, 3, [1, 2, 3, 4])
    with pytest.raises(InvalidShare, match="threshold is 3"):
        shamir.reconstruct({1: shares[1], 2: shares[2]}, 3)


@pytest.mark.parametrize(
    ("indices", "match"),
    [
        ([0, 1, 2], "index 0"),
        ([1, 1, 2], "duplicate"),
        ([1, 2, 2**32], "outside"),
        ([1, -2, 3], "outside"),
    ],
)
def test_bad_indices_rejected_by_split(indices: list[int], match: str) -> None:
    with pytest.raises(InvalidShare, match=match):
        shamir.split(b"a" * 32, 2, indices)


@pytest.mark.parametrize(
    ("shares", "match"),
    [({0: 1, 1: 1}, "index 0"), ({1: 1, 2**32: 1}, "outside"), ({-1: 1, 1: 1}, "outside")],
)
def test_bad_indices_rejected_by_reconstruct(shares: dict[int, int], match: str) -> None:
    with pytest.raises(InvalidShare, match=match):
        shamir.reconstruct(shares, 2)


def test_bad_values_and_config_rejected() -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        shamir.split(b"short", 2, [1, 2])
    with pytest.raises(ConfigError, match="threshold"):
        shamir.split(b"a" * 32, 3, [1, 2])
    with pytest.raises(InvalidShare, match="field element"):
        shamir.reconstruct({1: PRIME, 2: 0}, 2)
    with pytest.raises(InvalidShare):
        shamir.share_from_bytes(b"\xff" * 33)
    with pytest.raises(InvalidShare):
        shamir.share_from_bytes(b"\x00" * 32)
    assert shamir.share_from_bytes(shamir.share_to_bytes(12345)) == 12345


def test_inconsistent_shares_detected_when_value_exceeds_32_bytes() -> None:
    shares = shamir.split(b"\xff" * 32, 2, [1, 2])
    # f(0) = 2 f(1) - f(2): lowering f(2) by one lifts the "secret" to 2^256, not 32 bytes
    bad = {1: shares[1], 2: (shares[2] - 1) % PRIME}
    with pytest.raises(InvalidShare, match="inconsistent"):
        shamir.reconstruct(bad, 2)


def test_lagrange_coefficients_cached_per_index_set() -> None:
    shamir.lagrange_at_zero.cache_clear()
    secrets_ = [bytes([i]) * 32 for i in range(20)]
    idx = list(range(1, 61))
    all_shares = [shamir.split(s, 31, idx) for s in secrets_]
    for s, shares in zip(secrets_, all_shares, strict=True):
        assert shamir.reconstruct(shares, 31) == s
    info = shamir.lagrange_at_zero.cache_info()
    assert info.misses == 1 and info.hits == 19


def test_large_threshold_reconstruct_is_fast_after_caching() -> None:
    """ANCHORS: naive n = 1000, t = 501 reconstruct ~108 ms; cached coefficients make the
    per-secret cost a dot product."""
    import time

    secret = b"z" * 32
    shares = shamir.split(secret, 501, range(1, 1001))
    shamir.reconstruct(shares, 501)  # warm the cache
    t0 = time.perf_counter()
    for _ in range(20):
        assert shamir.reconstruct(shares, 501) == secret
    per_secret = (time.perf_counter() - t0) / 20
    assert per_secret < 0.02
