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

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from securedream.privacy.accounting import (
    RDP_ORDERS,
    GaussianRelease,
    SkellamRelease,
    gaussian_epsilon,
    skellam_rdp,
)

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


# --- distributed (Skellam) releases over sampled cohorts ------------------------------------------
#
# A private population run records every released cohort sum in a PrivacyLedger as a
# SkellamRelease whose ``shares`` is the cohort's size (each member added one noise share). A party
# that knows k shares (observer: 1, its own; server: 0; server + c colluders: c) faces the rest.
#
# Against the server (no amplification): a client takes part in at most J releases (the cap, or
# the binomial tail bound above); which ones is unknown to this ledger, so the bound composes, at
# every RDP order separately, the J most costly releases of the run. That dominates the RDP of any
# J-subset, so the (ε, δ − tail) conversion is an upper bound whatever cohorts the client joined.
#
# Against observers (amplification, fresh secret coins, no cap): under the zero-out relation the
# release is the mixture (1 − q)·A + q·B_x with A the release without the client (the same in both
# worlds) and B_x with it; under replace-one it is (1 − q)·A + q·B_y. The function
# F(P, Q) = ∫ p^α q^(1−α) is jointly convex for α > 1, so
#     exp((α − 1)·D_α(P‖Q)) ≤ (1 − q) + q·exp((α − 1)·ε_B(α)),
# where ε_B is the Skellam RDP of the release with the client in it (Agarwal et al. 2021). This
# bound holds for any mechanism, so it needs no Gaussian approximation of the Skellam noise and no
# assumption that the noise is the same with and without the client; it amplifies less than
# Opacus's (Gaussian-specific, add/remove) analysis. Observers get min(amplified, unamplified).


@dataclass(frozen=True)
class PopulationEpsilons:
    """ε of a population run's recorded releases against each party, and how it was obtained."""

    observer: float
    server: float
    server_colluders: float
    participations: int  # J: releases a client can have joined (cap or binomial tail)
    server_delta: float  # δ of the unamplified bounds (δ − tail without a cap)
    observer_amplified: bool

    def by_adversary(self) -> dict[str, float]:
        return {
            "observer": self.observer,
            "server": self.server,
            "server+colluders": self.server_colluders,
        }

    @property
    def total(self) -> float:
        """The largest ε among the parties the distributed placement protects against."""
        return max(self.observer, self.server, self.server_colluders)


def participations_for(
    units: int, q: float, max_participations: int, delta: float, tail: float = DEFAULT_TAIL
) -> tuple[int, float]:
    """(J, δ for the unamplified bounds): the cap, or the binomial tail bound with δ − tail."""
    if 0 < max_participations < units:
        return max_participations, delta
    joined = participation_bound(units, q, tail)
    if joined >= units:
        return units, delta
    if delta - tail <= 0:
        raise ValueError(f"delta ({delta}) must exceed the participation tail ({tail})")
    return joined, delta - tail


def _release_rdp(
    releases: Sequence[SkellamRelease], known: int, factor: float
) -> list[tuple[np.ndarray, int]] | None:
    """Per distinct release: (RDP of one such release at RDP_ORDERS, count); None: no noise left."""
    out = []
    for r in releases:
        if r.count <= 0:
            continue
        seen = r.seen_by(known, factor)
        if seen is None:
            return None
        out.append((skellam_rdp(RDP_ORDERS, dataclasses.replace(seen, count=1)), r.count))
    return out


def top_rdp(per_release: Sequence[tuple[np.ndarray, int]], joined: int) -> np.ndarray:
    """At each order, the sum of the ``joined`` largest per-release RDP values (with counts)."""
    orders = len(RDP_ORDERS)
    if not per_release or joined <= 0:
        return np.zeros(orders)
    values = np.stack([v for v, _ in per_release])  # [releases, orders]
    counts = np.array([c for _, c in per_release], dtype=np.float64)
    total = np.zeros(orders)
    for j in range(orders):
        order = np.argsort(-values[:, j], kind="stable")
        left = float(joined)
        for i in order:
            take = min(left, counts[i])
            total[j] += take * values[i, j]
            left -= take
            if left <= 0:
                break
    return total


def amplified_rdp(per_release: Sequence[tuple[np.ndarray, int]], q: float) -> np.ndarray:
    """RDP of every release under Poisson sampling at rate q, by the joint-convexity bound."""
    alpha = np.asarray(RDP_ORDERS, dtype=np.float64)
    total = np.zeros(len(alpha))
    if q >= 1.0:
        return sum((v * c for v, c in per_release), total)
    for values, count in per_release:
        mixed = np.logaddexp(math.log1p(-q), math.log(q) + (alpha - 1) * values)
        total += count * mixed / (alpha - 1)
    return total


def _to_epsilon(rdp: np.ndarray, delta: float) -> float:
    from opacus.accountants.analysis.rdp import get_privacy_spent

    if not np.any(rdp):
        return 0.0
    eps, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    return float(eps)


def population_epsilons(
    releases: Sequence[SkellamRelease],
    *,
    q: float,
    units: int,
    delta: float,
    colluders: int,
    max_participations: int = 0,
    sensitivity_factor: float = 1.0,
    sampling_secret: bool = True,
    tail: float = DEFAULT_TAIL,
) -> PopulationEpsilons:
    """ε against observer, server and server + ``colluders`` for Skellam cohort releases.

    ``releases``: every recorded release of the run (all channels), ``shares`` = cohort size;
    ``units``: cohort draws of the whole run (per-release sampling: its planned releases).
    """
    joined, server_delta = participations_for(units, q, max_participations, delta, tail)

    def unamplified(known: int) -> float:
        per = _release_rdp(releases, known, sensitivity_factor)
        return math.inf if per is None else _to_epsilon(top_rdp(per, joined), server_delta)

    server = unamplified(0)
    server_colluders = unamplified(colluders) if colluders > 0 else server
    observer = unamplified(1)
    amplified = sampling_secret and not (0 < max_participations < units) and q < 1.0
    if amplified:
        per = _release_rdp(releases, 1, sensitivity_factor)
        if per is not None:
            observer = min(observer, _to_epsilon(amplified_rdp(per, q), delta))
    return PopulationEpsilons(observer, server, server_colluders, joined, server_delta, amplified)
