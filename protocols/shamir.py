"""Shamir t-of-n secret sharing of 32-byte secrets over GF(p), p = 2^256 + 297.

Why this field: p is the smallest prime above 2^256, so *every* 32-byte string (X25519 private key,
self-mask seed) is a field element without reduction or bias, and a share value always fits in 33
bytes. Share indices are the holders' client ids plus one, so index 0 -- where the secret lives --
is never emitted.

Why it is fast: reconstruction is a dot product with Lagrange coefficients at 0, and those depend
only on the *set* of indices used. The server reconstructs hundreds of secrets per aggregation from
the same responders, so coefficients are cached per index set (LRU); the server also always picks
the ``t`` smallest available indices, which makes cache hits the common case.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

from protocols import keys
from protocols.errors import ConfigError, InvalidShare

#: The field modulus: smallest prime above 2^256 (2^256 + 297).
PRIME = (1 << 256) + 297
SECRET_BYTES = 32
SHARE_BYTES = 33
#: Largest share index (holders are client ids + 1, ids are 32-bit).
MAX_INDEX = (1 << 32) - 1


def _check_indices(indices: Iterable[int], *, what: str) -> tuple[int, ...]:
    out = tuple(indices)
    seen: set[int] = set()
    for i in out:
        if not isinstance(i, int) or isinstance(i, bool):
            raise InvalidShare(f"{what}: share index {i!r} is not an integer")
        if i == 0:
            raise InvalidShare(f"{what}: share index 0 is reserved for the secret")
        if not 1 <= i <= MAX_INDEX:
            raise InvalidShare(f"{what}: share index {i} outside [1, {MAX_INDEX}]")
        if i in seen:
            raise InvalidShare(f"{what}: duplicate share index {i}")
        seen.add(i)
    return out


def split(secret: bytes, threshold: int, indices: Sequence[int]) -> dict[int, int]:
    """Share ``secret`` so that any ``threshold`` of the shares at ``indices`` reconstruct it.

    Coefficients come from :mod:`secrets` (the OS CSPRNG).
    """
    if len(secret) != SECRET_BYTES:
        raise ConfigError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    idx = _check_indices(indices, what="split")
    if not 1 <= threshold <= len(idx):
        raise ConfigError(
            f"threshold must be in [1, {len(idx)}] (number of holders), got {threshold}"
        )
    coeffs = [int.from_bytes(secret, "big")]
    coeffs.extend(_random_coefficient() for _ in range(threshold - 1))
    high_to_low = coeffs[::-1]
    shares: dict[int, int] = {}
    for x in idx:
        acc = 0
        for c in high_to_low:  # Horner: x is small, so acc * x stays cheap
            acc = (acc * x + c) % PRIME
        shares[x] = acc
    return shares


def _random_coefficient() -> int:
    """Uniform in [0, p): ``secrets.randbelow`` (OS CSPRNG); under the test-vector seam, rejection
    sampling of 257-bit big-endian draws from that seam's source."""
    source = keys.deterministic_source()
    if source is None:
        return secrets.randbelow(PRIME)
    while True:
        value = int.from_bytes(source(33), "big") & ((1 << 257) - 1)
        if value < PRIME:
            return value


def _batch_inverse(values: list[int]) -> list[int]:
    """Montgomery's trick: all inverses for one modular exponentiation."""
    prefix = [1] * (len(values) + 1)
    for i, v in enumerate(values):
        prefix[i + 1] = prefix[i] * v % PRIME
    inv = pow(prefix[-1], -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = prefix[i] * inv % PRIME
        inv = inv * values[i] % PRIME
    return out


@lru_cache(maxsize=512)
def lagrange_at_zero(indices: tuple[int, ...]) -> tuple[int, ...]:
    """Coefficients l_i with f(0) = sum_i l_i f(x_i) for the (distinct, nonzero) ``indices``.

    l_i = prod_{j != i} x_j / (x_j - x_i). Numerators share the full product; the denominators are
    products of small integers (computed by ``math.prod`` in C) followed by one batch inversion.
    """
    total = math.prod(indices) % PRIME
    dens = []
    for i, xi in enumerate(indices):
        d = math.prod([xj - xi for xj in indices[:i]]) * math.prod(
            [xj - xi for xj in indices[i + 1 :]]
        )
        dens.append(d * xi % PRIME)
    return tuple(total * inv % PRIME for inv in _batch_inverse(dens))


def reconstruct(shares: Mapping[int, int], threshold: int) -> bytes:
    """Recover the 32-byte secret from at least ``threshold`` shares (uses the ``threshold``
    smallest indices, so that the cached coefficients are reused across secrets)."""
    idx = _check_indices(shares.keys(), what="reconstruct")
    if threshold < 1:
        raise ConfigError(f"threshold must be >= 1, got {threshold}")
    if len(idx) < threshold:
        raise InvalidShare(f"reconstruct: {len(idx)} shares, threshold is {threshold}")
    chosen = tuple(sorted(idx)[:threshold])
    for i in chosen:
        if not 0 <= shares[i] < PRIME:
            raise InvalidShare(f"reconstruct: share {i} is not a field element")
    coeffs = lagrange_at_zero(chosen)
    value = sum(c * shares[i] for c, i in zip(coeffs, chosen, strict=True)) % PRIME
    if value >= 1 << 256:
        raise InvalidShare("reconstruct: shares are inconsistent (value does not fit 32 bytes)")
    return value.to_bytes(SECRET_BYTES, "big")


def share_to_bytes(value: int) -> bytes:
    """Fixed 33-byte big-endian encoding of a share value."""
    if not 0 <= value < PRIME:
        raise InvalidShare("share value is not a field element")
    return value.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    """Decode a 33-byte share value, rejecting non-field elements."""
    if len(data) != SHARE_BYTES:
        raise InvalidShare(f"share value must be {SHARE_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise InvalidShare("share value is not a field element (>= p)")
    return value
