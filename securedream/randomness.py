"""Keyed randomness: an AES-CTR keystream and the samplers drawn from it (never numpy/random RNGs).

Why a module of its own: secure aggregation's stochastic rounding, a client's distributed-DP
noise share and the server's central DP noise all draw from the same kind of keyed stream, and
none of them should import another's package for it (``aggregation`` and ``contribution`` use it
for rounding, ``privacy`` for noise). ``securedream.privacy.noise`` re-exports it for DP callers.

Two key sources: ``NoiseSource.from_os()`` (a fresh 32-byte key from ``os.urandom``: what a
deployment must use) and ``NoiseSource.from_seed(seed, ...)`` (a key derived from the run seed, so a
research run is reproducible; anyone who knows the seed can subtract the noise, and the privacy
report says so). Both go through the same sampler code.

Samplers:

- ``gaussian``: Box–Muller on 53-bit uniforms. Floating-point Gaussian noise is what Opacus adds
  too; its least-significant bits are not perfectly private (Mironov 2012), which matters only
  against an adversary who sees the raw floats of the release.
- ``skellam``: integer noise, the difference of two Poisson(μ) variables, sampled exactly with
  Hörmann's PTRS transformed rejection (valid for μ ≥ 10; smaller μ uses inversion). Sums of
  independent Skellam variables are Skellam, so per-client shares add up to the calibrated total
  (the distributed mechanism of Agarwal, Kairouz and Liu, NeurIPS 2021).
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
from scipy.special import gammaln

from protocols.prg import expand

_TWO_53 = float(1 << 53)


# Above this mean, k ≈ μ ± 10σ no longer has integer resolution to spare in float64 (2^53 ≈ 9e15);
# the distributed-DP layer chooses its fixed-point scale so shares stay far below it.
MAX_POISSON_MEAN = 2.0**50


def _stirling_error(k: np.ndarray) -> np.ndarray:
    """log k! − (k log k − k + ½ log 2πk), by its asymptotic series (k ≥ 15: error < 1e-16)."""
    inv = 1.0 / k
    inv2 = inv * inv
    return inv * (1 / 12 - inv2 * (1 / 360 - inv2 * (1 / 1260 - inv2 / 1680)))


def poisson_log_pmf(k: np.ndarray, mu: float) -> np.ndarray:
    """log P(K = k) for K ~ Poisson(μ), without the catastrophic cancellation of
    −μ + k·log μ − log k! at large μ (each term ~ μ log μ while their sum is O(log μ)):
    log p = (k − μ) − k·log1p((k − μ)/μ) − ½ log(2πk) − stirling_error(k)."""
    k = np.asarray(k, dtype=np.float64)
    out = np.full(k.shape, -np.inf)
    small = (k >= 0) & (k < 15)
    large = k >= 15
    if small.any():
        ks = k[small]
        out[small] = -mu + ks * math.log(mu) - gammaln(ks + 1)
    if large.any():
        kl = k[large]
        diff = kl - mu
        out[large] = (
            diff - kl * np.log1p(diff / mu) - 0.5 * np.log(2 * np.pi * kl) - _stirling_error(kl)
        )
    return out


class NoiseSource:
    """A stream of uniform variates from AES-CTR under a per-call subkey."""

    def __init__(self, key: bytes, *, secure: bool) -> None:
        if len(key) != 32:
            raise ValueError(f"NoiseSource key must be 32 bytes, got {len(key)}")
        self._key = key
        self._counter = 0
        self.secure = secure

    @classmethod
    def from_os(cls) -> NoiseSource:
        return cls(os.urandom(32), secure=True)

    @classmethod
    def from_seed(cls, seed: int, *labels: object, position: int = 0) -> NoiseSource:
        """The seeded stream of ``labels``, after its first ``position`` calls."""
        text = "/".join(["securedream-dp-noise", str(seed), *map(str, labels)]).encode()
        source = cls(hashlib.sha256(text).digest(), secure=False)
        source._counter = int(position)
        return source

    def _subkey(self) -> bytes:
        self._counter += 1
        return hashlib.sha256(self._key + self._counter.to_bytes(8, "big")).digest()[:16]

    def uniform(self, count: int) -> np.ndarray:
        """``count`` doubles uniform in the open interval (0, 1)."""
        if count == 0:
            return np.zeros(0)
        words = expand(self._subkey(), count, np.uint64)
        return ((words >> np.uint64(11)).astype(np.float64) + 0.5) / _TWO_53

    def gaussian(self, count: int, std: float) -> np.ndarray:
        if std < 0 or not math.isfinite(std):
            raise ValueError(f"gaussian std must be finite and >= 0, got {std}")
        half = (count + 1) // 2
        u1, u2 = self.uniform(half), self.uniform(half)
        radius = np.sqrt(-2.0 * np.log(u1))
        normals = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])
        return normals[:count] * std

    def poisson(self, count: int, mu: float) -> np.ndarray:
        if mu < 0 or not math.isfinite(mu):
            raise ValueError(f"poisson mean must be finite and >= 0, got {mu}")
        if mu == 0:
            return np.zeros(count, dtype=np.int64)
        if mu < 10:
            return self._poisson_inversion(count, mu)
        return self._poisson_ptrs(count, mu)

    def skellam(self, count: int, mu: float) -> np.ndarray:
        """Symmetric Skellam: Poisson(μ) − Poisson(μ), variance 2μ, as int64."""
        return self.poisson(count, mu) - self.poisson(count, mu)

    # --- Poisson samplers ---------------------------------------------------------------------
    def _poisson_inversion(self, count: int, mu: float) -> np.ndarray:
        """Sequential search of the CDF; exact, fast for small means."""
        u = self.uniform(count)
        k = np.zeros(count, dtype=np.int64)
        p = np.full(count, math.exp(-mu))
        cdf = p.copy()
        active = u > cdf
        while active.any():
            k[active] += 1
            p[active] *= mu / k[active]
            cdf[active] += p[active]
            active &= u > cdf
            if k.max() > 1000:  # cdf rounding can stall far in the tail; mass there is < 1e-300
                break
        return k

    def _poisson_ptrs(self, count: int, mu: float) -> np.ndarray:
        """Hörmann (1993) PTRS, vectorised: redraw only the rejected positions."""
        if mu > MAX_POISSON_MEAN:
            raise ValueError(
                f"poisson mean {mu:.4g} exceeds {MAX_POISSON_MEAN:.4g}: float64 can no longer "
                "place every integer near the mean, so the sample would not be exact"
            )
        slam = math.sqrt(mu)
        b = 0.931 + 2.53 * slam
        a = -0.059 + 0.02483 * b
        invalpha = 1.1239 + 1.1328 / (b - 3.4)
        vr = 0.9277 - 3.6224 / (b - 2)
        out = np.empty(count, dtype=np.int64)
        todo = np.arange(count)
        while todo.size:
            n = todo.size
            u = self.uniform(n) - 0.5
            v = self.uniform(n)
            us = 0.5 - np.abs(u)
            k = np.floor((2 * a / us + b) * u + mu + 0.43)
            quick = (us >= 0.07) & (v <= vr)
            with np.errstate(divide="ignore", invalid="ignore"):
                log_v = np.log(v * invalpha / (a / (us * us) + b))
                bound = poisson_log_pmf(k, mu)
            slow_ok = (k >= 0) & ~((us < 0.013) & (v > us)) & (log_v <= bound)
            accept = quick | slow_ok
            out[todo[accept]] = k[accept].astype(np.int64)
            todo = todo[~accept]
        return out
