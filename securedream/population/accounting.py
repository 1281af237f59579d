"""Client-level ε under Poisson client sampling, per adversary.

Amplification by subsampling needs the adversary not to know who was sampled. That holds for
*observers* of the released dreams and soft labels (other clients, third parties), provided the
cohorts are drawn from randomness they cannot predict (a CSPRNG, not a stream derived from a
published seed). It never holds for the *server*: it forms the cohorts and sees who answered.
Against the server a client's guarantee is the unamplified composition of the releases it took part
in, which is bounded either by a participation cap the client enforces itself (holds even against a
server that picks cohorts adversarially) or, for an honestly sampling server without a cap, by a
binomial tail: the client joins at most ``Binomial(units, q).ppf(1 − tail)`` cohorts except with
probability ``tail``, which is added to δ (the server's ε is computed at δ − tail).

A "unit" is one cohort draw: one release with per-release sampling; one round (all its releases
share the cohort, so they compose into one Gaussian of multiplier z/√releases_per_round) with per-
round sampling. A participation cap counts units.

A cap with amplification is *not* claimed for observers: the cap makes a client's inclusion depend
on its own earlier (hidden) inclusions, which the standard amplification analysis (independent fresh
coins per step, as Opacus assumes) does not cover. With an effective cap, observers get the server's
number (an observer knows at most what the server knows, so that bound holds for them too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from securedream.privacy.accounting import GaussianRelease, gaussian_epsilon

DEFAULT_TAIL = 1e-6


@dataclass(frozen=True)
class SampledAccounting:
    """ε per adversary plus how each was obtained (for privacy.json)."""

    observer: float
    server: float
    server_participations: int
    server_delta: float
    observer_amplified: bool

    def by_adversary(self) -> dict[str, float]:
        return {"observer": self.observer, "server": self.server}


def participation_bound(units: int, q: float, tail: float) -> int:
    """Smallest m with P(Binomial(units, q) > m) ≤ tail (exact binomial tail)."""
    from scipy.stats import binom

    if q >= 1.0:
        return units
    m = int(binom.ppf(1.0 - tail, units, q))
    while m < units and binom.sf(m, units, q) > tail:
        m += 1
    return min(m, units)


def sampled_accounting(
    z: float,
    q: float,
    releases: int,
    *,
    delta: float,
    accountant: str = "rdp",
    max_participations: int = 0,
    releases_per_unit: int = 1,
    sampling_secret: bool = True,
    tail: float = DEFAULT_TAIL,
) -> SampledAccounting:
    """ε against observers and against the server for ``releases`` Gaussian releases of
    multiplier ``z`` (sensitivity-normalised), cohorts Poisson-sampled at rate ``q``.

    ``releases_per_unit`` > 1 means per-round sampling with that many releases per round
    (``releases`` must be a multiple). ``max_participations`` = 0 means no cap.
    ``sampling_secret`` False (cohorts from a seed-derived stream) removes amplification.
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q: must be in (0, 1], got {q}")
    if releases < 0 or releases_per_unit < 1 or releases % releases_per_unit:
        raise ValueError(
            f"releases ({releases}) must be a non-negative multiple of releases_per_unit "
            f"({releases_per_unit})"
        )
    units = releases // releases_per_unit
    z_unit = z / math.sqrt(releases_per_unit)  # r Gaussians on one cohort = one Gaussian
    cap = max_participations if 0 < max_participations < units else 0
    if cap:
        joined, server_delta = cap, delta
    else:
        joined = participation_bound(units, q, tail)
        server_delta = delta - tail if joined < units else delta
        if server_delta <= 0:
            raise ValueError(f"delta ({delta}) must exceed the participation tail ({tail})")
    server = gaussian_epsilon([GaussianRelease(z_unit, joined, 1.0)], server_delta, accountant)
    amplified = sampling_secret and not cap and q < 1.0
    if amplified:
        observer = gaussian_epsilon([GaussianRelease(z_unit, units, q)], delta, accountant)
        observer = min(observer, server)  # both bounds hold for an observer
    else:
        observer = server
    return SampledAccounting(observer, server, joined, server_delta, amplified)


def sampled_epsilons(
    z: float,
    q: float,
    releases: int,
    max_participations: int,
    delta: float,
    accountant: str = "rdp",
    **kwargs: object,
) -> dict[str, float]:
    """{"observer": ε, "server": ε}: the per-adversary numbers of :func:`sampled_accounting`."""
    return sampled_accounting(
        z,
        q,
        releases,
        delta=delta,
        accountant=accountant,
        max_participations=max_participations,
        **kwargs,  # type: ignore[arg-type]
    ).by_adversary()
