"""Privacy accounting for client-level DP releases, with Opacus's accountants.

Every aggregate the server sees is a release: each dream-step aggregate and each soft-label
aggregate. All clients take part in every release (no client sampling), so each release is a
Gaussian (or Skellam) mechanism at sample rate 1, and a run is their composition.

- Gaussian releases (central placement): Opacus's ``RDPAccountant`` or ``PRVAccountant``, chosen
  explicitly (Opacus's own defaults differ between ``get_noise_multiplier``, RDP, and
  ``PrivacyEngine``, PRV; we never rely on either default).
- Skellam releases (distributed placement, integer noise): the RDP bound of Agarwal, Kairouz and
  Liu (NeurIPS 2021, Thm. 3.5) for symmetric Skellam with parameter μ (variance 2μ) and L1/L2
  sensitivities Δ1, Δ2:
      ε(α) ≤ α·Δ2²/(4μ) + min( ((2α−1)·Δ2² + 6·Δ1)/(16μ²), 3·Δ1/(4μ) ),
  composed additively per order and converted to (ε, δ) with Opacus's RDP conversion. The PRV
  accountant has no Skellam support, so distributed placement requires ``accountant = "rdp"``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version

import numpy as np

ACCOUNTANTS = ("rdp", "prv")
# Opacus's default RDP orders, extended upwards for the very small ε(α) of heavily noised releases.
RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512, 1024]
)


def opacus_version() -> str:
    return version("opacus")


@dataclass(frozen=True)
class GaussianRelease:
    """``count`` releases of the Gaussian mechanism with noise multiplier z = σ / Δ2."""

    noise_multiplier: float
    count: int
    sample_rate: float = 1.0


@dataclass(frozen=True)
class SkellamRelease:
    """``count`` releases of symmetric Skellam noise Sk(μ) on integer vectors (integer units).

    ``shares``: how many independent client shares of equal parameter μ/shares make up the
    noise. A party that knows k of them (its own, or colluders') faces Sk(μ·(shares − k)/shares).
    """

    mu: float
    l2_sensitivity: float
    l1_sensitivity: float
    count: int
    shares: int = 1

    def seen_by(self, known_shares: int, sensitivity_factor: float = 1.0) -> SkellamRelease | None:
        """The release as a party knowing ``known_shares`` shares faces it; None: no noise left.

        ``sensitivity_factor`` scales both sensitivities (2 for the replace-one relation).
        """
        left = self.shares - known_shares
        if left <= 0:
            return None
        return SkellamRelease(
            self.mu * left / self.shares,
            self.l2_sensitivity * sensitivity_factor,
            self.l1_sensitivity * sensitivity_factor,
            self.count,
            left,
        )


def skellam_rdp(orders: Sequence[float], release: SkellamRelease) -> np.ndarray:
    """RDP of ``release.count`` Skellam releases at each order (Agarwal et al. 2021, Thm. 3.5)."""
    alpha = np.asarray(orders, dtype=np.float64)
    mu, d2, d1 = release.mu, release.l2_sensitivity, release.l1_sensitivity
    first = alpha * d2 * d2 / (4 * mu)
    second = np.minimum(((2 * alpha - 1) * d2 * d2 + 6 * d1) / (16 * mu * mu), 3 * d1 / (4 * mu))
    return release.count * (first + second)


def gaussian_epsilon(releases: Sequence[GaussianRelease], delta: float, accountant: str) -> float:
    """ε of a composition of Gaussian releases, through the named Opacus accountant."""
    _check_accountant(accountant)
    history = [(r.noise_multiplier, r.sample_rate, r.count) for r in releases if r.count > 0]
    if not history:
        return 0.0
    if any(z <= 0 for z, _, _ in history):
        return math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PRV at sample rate 1 logs divide-by-zero warnings
        if accountant == "rdp":
            from opacus.accountants import RDPAccountant

            acc = RDPAccountant()
            acc.history = list(history)
            return float(acc.get_epsilon(delta=delta, alphas=list(RDP_ORDERS)))
        from opacus.accountants import PRVAccountant

        acc = PRVAccountant()
        acc.history = list(history)
        return float(acc.get_epsilon(delta=delta))


def skellam_epsilon(releases: Sequence[SkellamRelease], delta: float) -> float:
    """ε of a composition of Skellam releases via RDP and Opacus's RDP→(ε, δ) conversion."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    live = [r for r in releases if r.count > 0]
    if not live:
        return 0.0
    rdp = np.sum([skellam_rdp(RDP_ORDERS, r) for r in live], axis=0)
    eps, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    return float(eps)


def noise_for_epsilon(
    target_epsilon: float,
    delta: float,
    releases: int,
    accountant: str,
    sample_rate: float = 1.0,
    *,
    key: str = "privacy.target_epsilon",
) -> float:
    """The noise multiplier z that spends ``target_epsilon`` over ``releases`` Gaussian releases."""
    _check_accountant(accountant)
    if target_epsilon <= 0 or not math.isfinite(target_epsilon):
        raise ValueError(f"target_epsilon must be a positive finite number, got {target_epsilon}")
    if releases < 1:
        raise ValueError(f"releases must be >= 1, got {releases}")
    from opacus.accountants.utils import MAX_SIGMA, get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=releases,
                    accountant=accountant,
                    epsilon_tolerance=0.005,
                )
            )
        except ValueError as exc:
            if "budget is too low" not in str(exc):
                raise
    from opacus.accountants.utils import create_accountant

    from securedream.errors import ConfigError

    acc = create_accountant(mechanism=accountant)  # as get_noise_multiplier runs it
    acc.history = [(MAX_SIGMA, sample_rate, releases)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        smallest = float(acc.get_epsilon(delta=delta))

    raise ConfigError(
        key,
        f"{target_epsilon:g} is too small for {releases} releases at δ = {delta:g} "
        f"({accountant}): the smallest reachable ε is about {smallest:.3g} (Opacus searches "
        f"noise multipliers up to {MAX_SIGMA:g})",
    )


def _check_accountant(name: str) -> None:
    if name not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {list(ACCOUNTANTS)}, got {name!r}")


@dataclass
class ChannelLedger:
    """Releases made on one channel, for the per-channel and total ε."""

    gaussian: list[GaussianRelease] = field(default_factory=list)
    skellam: list[SkellamRelease] = field(default_factory=list)

    @property
    def releases(self) -> int:
        return sum(r.count for r in self.gaussian) + sum(r.count for r in self.skellam)


class PrivacyLedger:
    """Records every release per channel and answers ε per channel and in total.

    Gaussian and Skellam releases are never mixed in one run (placement is either central or
    distributed), so the total is computed by the matching accountant over all channels.
    """

    def __init__(self, accountant: str, delta: float) -> None:
        _check_accountant(accountant)
        self.accountant = accountant
        self.delta = delta
        self.channels: dict[str, ChannelLedger] = {}

    def channel(self, name: str) -> ChannelLedger:
        return self.channels.setdefault(name, ChannelLedger())

    def record_gaussian(self, channel: str, noise_multiplier: float, count: int = 1) -> None:
        ledger = self.channel(channel)
        if ledger.gaussian and ledger.gaussian[-1].noise_multiplier == noise_multiplier:
            last = ledger.gaussian[-1]
            ledger.gaussian[-1] = GaussianRelease(noise_multiplier, last.count + count)
        else:
            ledger.gaussian.append(GaussianRelease(noise_multiplier, count))

    def record_skellam(self, channel: str, release: SkellamRelease) -> None:
        ledger = self.channel(channel)
        if ledger.skellam:
            last = ledger.skellam[-1]
            if (last.mu, last.l2_sensitivity, last.l1_sensitivity, last.shares) == (
                release.mu,
                release.l2_sensitivity,
                release.l1_sensitivity,
                release.shares,
            ):
                ledger.skellam[-1] = dataclasses.replace(last, count=last.count + release.count)
                return
        ledger.skellam.append(release)

    def copy(self) -> PrivacyLedger:
        clone = PrivacyLedger(self.accountant, self.delta)
        for name, ledger in self.channels.items():
            clone.channels[name] = ChannelLedger(list(ledger.gaussian), list(ledger.skellam))
        return clone

    def view(self, known_shares: int, sensitivity_factor: float = 1.0) -> PrivacyLedger | None:
        """The releases as a party that knows ``known_shares`` noise shares of each faces them.

        Gaussian releases (central noise, one share the server adds) are kept when the party
        knows no share. Sensitivities are scaled by ``sensitivity_factor`` (replace-one: 2),
        which for a Gaussian release divides the noise multiplier. None when some release has
        no noise left for this party (no DP against it).
        """
        out = PrivacyLedger(self.accountant, self.delta)
        for name, ledger in self.channels.items():
            target = out.channel(name)
            if ledger.gaussian and known_shares > 0:
                return None
            for g in ledger.gaussian:
                target.gaussian.append(
                    GaussianRelease(g.noise_multiplier / sensitivity_factor, g.count, g.sample_rate)
                )
            for r in ledger.skellam:
                seen = r.seen_by(known_shares, sensitivity_factor)
                if seen is None:
                    return None
                target.skellam.append(seen)
        return out

    def epsilon(self, channels: Sequence[str] | None = None) -> float:
        """ε of the releases on ``channels`` (all channels when None), composed."""
        names = list(self.channels) if channels is None else list(channels)
        gaussian = [r for n in names for r in self.channel(n).gaussian]
        skellam = [r for n in names for r in self.channel(n).skellam]
        if gaussian and skellam:
            raise ValueError(
                "a ledger mixes Gaussian and Skellam releases; account them separately"
            )
        if skellam:
            return skellam_epsilon(skellam, self.delta)
        return gaussian_epsilon(gaussian, self.delta, self.accountant)
