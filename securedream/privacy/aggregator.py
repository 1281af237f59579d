"""Client-level differential privacy around any Aggregator.

Per release (one dream-step aggregate or one soft-label aggregate):

1. each client's whole contribution is clipped to L2 norm C (per channel), so adding or removing one
   client changes the sum by at most C;
2. noise of standard deviation z·C is added to the sum:
   - ``central``: by the server, after the (secure) sum, as Gaussian noise;
   - ``distributed``: by the clients, before masking, as integer Skellam noise in the secure
     aggregation's fixed-point domain, each client adding the share calibrated so that
     ``noise_shares`` shares together reach z·Δ. ``noise_shares`` is what is left of the fewest
     survivors a sum is released with (``min_survivors``) once the tolerated colluders (who know
     their own shares) are taken out, so the target holds against the server with them;
3. a sum of fewer than ``min_survivors`` clients is refused, never released;
4. the server divides by the public client count (done by the server loop, never by survivors);
5. the release is recorded in the privacy ledger with the noise actually present and the number
   of shares it is made of (so ε can be read for parties that know some of them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from securedream.aggregation.base import AggregateResult, Aggregator, Channel
from securedream.aggregation.secure import SecureAggregator
from securedream.contribution import clip_l2, l2_sensitivity, skellam_share_mu
from securedream.errors import SecureDreamError
from securedream.privacy.accounting import PrivacyLedger, SkellamRelease
from securedream.randomness import NoiseSource

# Skellam tails beyond this many standard deviations are never reached in practice (< 1e-20 per
# coordinate); the fixed-point scale leaves this much headroom so noisy shares cannot overflow.
NOISE_HEADROOM_SIGMAS = 10.0
# Largest Skellam parameter of one client's noise share (see distributed_scale).
MAX_SHARE_MU = 2.0**40


@dataclass(frozen=True)
class DPSettings:
    placement: str  # "central" or "distributed"
    noise_multiplier: float
    clip_gradient: float
    clip_logits: float
    min_survivors: int
    noise_shares: int = 0  # distributed: shares calibrated to reach z·Δ; 0 = min_survivors

    @property
    def calibration_shares(self) -> int:
        return self.noise_shares or self.min_survivors

    def clip_for(self, channel: Channel) -> float:
        return self.clip_logits if channel is Channel.LOGITS else self.clip_gradient


def distributed_scale(
    noise_multiplier: float, num_clients: int, noise_shares: int, bits: int, dim_hint: int
) -> float:
    """Largest power-of-two scale s that satisfies two limits.

    Overflow: in units of C, one client's encoded contribution has |q_i| ≤ s and its noise share
    has std z·(s + √d)/√(noise_shares); the protocol requires every input within
    (2^(b−1) − 1) / n so that n of them cannot overflow.
    Exact sampling: the share's Skellam parameter μ = (z·(s + √d))² / (2·noise_shares) stays at
    most ``MAX_SHARE_MU`` so the Poisson sampler keeps integer resolution in float64.
    A finer scale buys nothing once the rounding step 1/s is far below the noise.
    """
    bound = ((1 << (bits - 1)) - 1) // num_clients
    root_d = math.sqrt(dim_hint)
    per_unit = 1.0 + NOISE_HEADROOM_SIGMAS * noise_multiplier / math.sqrt(noise_shares)
    extra = NOISE_HEADROOM_SIGMAS * noise_multiplier * root_d / math.sqrt(noise_shares)
    s = (bound - extra) / per_unit
    if noise_multiplier > 0:
        s = min(s, math.sqrt(2.0 * noise_shares * MAX_SHARE_MU) / noise_multiplier - root_d)
    if s < 16:
        raise SecureDreamError(
            f"distributed DP: noise_multiplier {noise_multiplier} with {num_clients} clients does "
            f"not fit {bits}-bit secure aggregation (scale would be {s:.3g}); use "
            "secure_aggregation.bits = 64"
        )
    return math.ldexp(1.0, math.floor(math.log2(min(s, 2.0**40))))


class DPAggregator(Aggregator):
    """Clip, sum through ``inner``, add noise, record the release."""

    name = "dp"

    def __init__(
        self,
        inner: Aggregator,
        settings: DPSettings,
        ledger: PrivacyLedger,
        noise_for_round: Callable[[int], NoiseSource],
    ) -> None:
        if settings.placement not in ("central", "distributed"):
            raise SecureDreamError(
                f"DP placement must be central or distributed, got {settings.placement!r}"
            )
        if settings.placement == "distributed" and not isinstance(inner, SecureAggregator):
            raise SecureDreamError(
                "privacy.placement = distributed needs secure_aggregation.enabled = true: without "
                "masking the server would see each client's contribution with only its own share "
                "of the noise"
            )
        self.inner = inner
        self.settings = settings
        self.ledger = ledger
        self.noise_for_round = noise_for_round
        self.noise = noise_for_round(0)
        self.name = f"dp-{settings.placement}+{inner.name}"
        self.survivors: list[int] = []
        self.noise_std_log: list[float] = []
        self._central_noise_seconds = 0.0
        if settings.placement == "distributed":
            assert isinstance(inner, SecureAggregator)
            inner.integer_noise = self._client_noise_share

    # Aggregator protocol, delegated
    def start_round(self, round_index: int, client_ids: Sequence[int]) -> None:
        self.noise = self.noise_for_round(round_index)
        self.inner.start_round(round_index, client_ids)

    def end_round(self) -> None:
        self.inner.end_round()

    def active_clients(self, client_ids: Sequence[int]) -> list[int]:
        return self.inner.active_clients(client_ids)

    @property
    def seconds(self) -> float:
        return float(getattr(self.inner, "seconds", 0.0))

    @property
    def noise_seconds(self) -> float:
        """Sampling DP noise: the server's (central) plus the clients' shares (distributed)."""
        return self._central_noise_seconds + float(getattr(self.inner, "noise_seconds", 0.0))

    # ------------------------------------------------------------------------------------------
    def _integer_mu(self, dim: int) -> float:
        """Skellam parameter of one client's share, in the secure aggregation's integer units."""
        assert isinstance(self.inner, SecureAggregator)
        return skellam_share_mu(
            self.settings.noise_multiplier,
            self.inner.encoding.scale,
            dim,
            self.settings.calibration_shares,
        )

    def _client_noise_share(self, count: int, channel: Channel, step: int) -> np.ndarray:
        return self.noise.skellam(count, self._integer_mu(count))

    def aggregate(
        self, contributions: Mapping[int, torch.Tensor], *, channel: Channel, step: int
    ) -> AggregateResult:
        """Clip each contribution (what each client does), sum through ``inner``, finish."""
        clip = self.settings.clip_for(channel)
        clipped = {c: clip_l2(v, clip) for c, v in contributions.items()}
        result = self.inner.aggregate(clipped, channel=channel, step=step)
        return self.finish(result, channel=channel)

    def finish(self, result: AggregateResult, *, channel: Channel) -> AggregateResult:
        """Refuse a sum of too few survivors, add central noise, record the release."""
        clip = self.settings.clip_for(channel)
        z = self.settings.noise_multiplier
        survivors = len(result.contributors)
        self._check_survivors(survivors)
        if self.settings.placement == "central":
            std = z * clip
            start = time.perf_counter()
            noise = self.noise.gaussian(result.total.numel(), std)
            noisy = result.total + torch.from_numpy(noise).to(result.total).reshape(
                result.total.shape
            )
            self._central_noise_seconds += time.perf_counter() - start
            self.ledger.record_gaussian(channel.value, z)
            self.noise_std_log.append(std)
            self.survivors.append(survivors)
            return replace(result, total=noisy)

        dim = result.total.numel()
        mu_share = self._integer_mu(dim)
        sensitivity = l2_sensitivity(self.inner.encoding.scale, dim)  # type: ignore[attr-defined]
        self.ledger.record_skellam(
            channel.value,
            SkellamRelease(
                mu=mu_share * survivors,
                l2_sensitivity=sensitivity,
                l1_sensitivity=sensitivity * math.sqrt(dim),
                count=1,
                shares=survivors,
            ),
        )
        scale = self.inner.encoding.scale  # type: ignore[attr-defined]
        self.noise_std_log.append(math.sqrt(2 * mu_share * survivors) / scale * clip)
        self.survivors.append(survivors)
        return result

    def _check_survivors(self, survivors: int) -> None:
        # the secure aggregator refuses such sums itself; this stays as a hard stop for any inner
        # aggregator, not an assumption about it
        if survivors < self.settings.min_survivors:
            raise SecureDreamError(
                f"DP: only {survivors} survivors < privacy minimum "
                f"{self.settings.min_survivors}; the aggregate is not released"
            )
