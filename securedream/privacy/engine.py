"""The privacy façade of a run: resolves the noise, wraps the aggregator, keeps the budget, reports.

Like Opacus's ``PrivacyEngine``, this is one object over small parts (clipping, noise, accounting,
report) so each part stays replaceable and testable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from securedream.aggregation.base import Aggregator, Channel
from securedream.aggregation.secure import SecureAggregator
from securedream.config import RunConfig
from securedream.contribution import l2_sensitivity, skellam_share_mu
from securedream.errors import ConfigError, SecureDreamError
from securedream.privacy.accounting import (
    PrivacyLedger,
    SkellamRelease,
    noise_for_epsilon,
)
from securedream.privacy.aggregator import DPAggregator, DPSettings
from securedream.privacy.noise import NoiseSource


class PrivacyBudgetExhausted(SecureDreamError):
    """The next round would spend more than ``privacy.max_epsilon``; the run stops before it."""


@dataclass(frozen=True)
class ReleasePlan:
    """Releases per round on each channel; known from the config before the run starts."""

    dream_channel: str
    dream_releases: int
    logit_releases: int

    def per_round(self) -> dict[str, int]:
        return {self.dream_channel: self.dream_releases, Channel.LOGITS.value: self.logit_releases}

    def total(self, rounds: int) -> int:
        return rounds * (self.dream_releases + self.logit_releases)


def release_plan(cfg: RunConfig) -> ReleasePlan:
    channel = Channel.DREAM_GRADIENT if cfg.dreams.local_steps == 1 else Channel.DREAM_DELTA
    return ReleasePlan(channel.value, cfg.dreams.global_steps, cfg.dreams.snapshots)


def dream_dim(cfg: RunConfig, channels: int, image_size: int) -> int:
    return cfg.dreams.batch_size * channels * image_size * image_size


class RunPrivacy:
    """Client-level DP for one run (placement central or distributed)."""

    def __init__(
        self, cfg: RunConfig, *, dim: int, num_classes: int, secure_threshold: int | None = None
    ) -> None:
        p = cfg.privacy
        if p.placement == "off":
            raise ValueError("RunPrivacy is only built when privacy.placement is not off")
        self.cfg = cfg
        self.plan = release_plan(cfg)
        self.dim = dim
        self.logit_dim = cfg.dreams.batch_size * num_classes
        # distributed noise is calibrated for the fewest clients whose sum can ever be unmasked:
        # the secure aggregation threshold t unless the user asks for more
        self.min_survivors = p.min_survivors or secure_threshold or cfg.clients.count
        if p.placement == "distributed":
            if not cfg.secure_aggregation.enabled:
                raise ConfigError(
                    "privacy.placement",
                    "distributed needs secure_aggregation.enabled = true",
                )
            if p.accountant != "rdp":
                raise ConfigError(
                    "privacy.accountant",
                    'distributed (Skellam) noise is accounted with RDP; set accountant = "rdp"',
                )
            if self.min_survivors > cfg.clients.count:
                raise ConfigError(
                    "privacy.min_survivors",
                    f"must be in [1, clients.count={cfg.clients.count}], got {self.min_survivors}",
                )
        if p.noise_multiplier <= 0 and p.target_epsilon <= 0:
            raise ConfigError(
                "privacy.noise_multiplier",
                "set noise_multiplier > 0 or target_epsilon > 0 when placement is not off",
            )
        self.ledger = PrivacyLedger(p.accountant, p.delta)
        self.noise_multiplier = (
            p.noise_multiplier if p.target_epsilon <= 0 else self._noise_for_target()
        )
        self.epsilon_per_round: list[dict[str, float]] = []
        self.aggregator: DPAggregator | None = None

    # --- calibration --------------------------------------------------------------------------
    def _noise_for_target(self) -> float:
        p = self.cfg.privacy
        releases = self.plan.total(self.cfg.rounds)
        z = noise_for_epsilon(p.target_epsilon, p.delta, releases, p.accountant)
        if p.placement == "central":
            return z
        # Skellam is a little worse than Gaussian at the same variance: raise z until it fits.
        for _ in range(200):
            if self._projected_distributed_epsilon(z, self.cfg.rounds) <= p.target_epsilon:
                return z
            z *= 1.01
        raise ConfigError("privacy.target_epsilon", f"cannot reach ε = {p.target_epsilon}")

    def _skellam_release(self, z: float, dim: int, survivors: int, scale: float) -> SkellamRelease:
        sensitivity = l2_sensitivity(scale, dim)
        mu_share = skellam_share_mu(z, scale, dim, self.min_survivors)
        return SkellamRelease(mu_share * survivors, sensitivity, sensitivity * math.sqrt(dim), 1)

    def _projected_distributed_epsilon(self, z: float, rounds: int) -> float:
        from securedream.privacy.accounting import skellam_epsilon
        from securedream.privacy.aggregator import distributed_scale

        sa = self.cfg.secure_aggregation
        scale = distributed_scale(z, self.cfg.clients.count, self.min_survivors, sa.bits, self.dim)
        releases = []
        for dim, count in (
            (self.dim, self.plan.dream_releases),
            (self.logit_dim, self.plan.logit_releases),
        ):
            r = self._skellam_release(z, dim, self.min_survivors, scale)
            releases.append(
                SkellamRelease(r.mu, r.l2_sensitivity, r.l1_sensitivity, count * rounds)
            )
        return skellam_epsilon(releases, self.cfg.privacy.delta)

    def secure_scale(self) -> float | None:
        """Fixed-point scale the secure aggregator must use (distributed placement only)."""
        if self.cfg.privacy.placement != "distributed":
            return None
        from securedream.privacy.aggregator import distributed_scale

        sa = self.cfg.secure_aggregation
        return distributed_scale(
            self.noise_multiplier, self.cfg.clients.count, self.min_survivors, sa.bits, self.dim
        )

    # --- wiring -------------------------------------------------------------------------------
    def wrap(self, inner: Aggregator) -> DPAggregator:
        p = self.cfg.privacy
        settings = DPSettings(
            placement=p.placement,
            noise_multiplier=self.noise_multiplier,
            clip_gradient=p.clip_gradient,
            clip_logits=p.clip_logits,
            min_survivors=self.min_survivors,
        )
        if (
            isinstance(inner, SecureAggregator)
            and inner.threshold < self.min_survivors
            and (p.placement == "distributed")
        ):
            raise ConfigError(
                "secure_aggregation.threshold",
                f"must be >= privacy.min_survivors = {self.min_survivors} in distributed mode "
                f"(got t = {inner.threshold}) so no under-noised sum can be unmasked",
            )
        self.aggregator = DPAggregator(inner, settings, self.ledger, self.noise_for_round)
        return self.aggregator

    def noise_for_round(self, round_index: int) -> NoiseSource:
        """Per-round noise key: fresh from os.urandom, or from (seed, round) for research runs."""
        if self.cfg.privacy.secure_noise:
            return NoiseSource.from_os()
        return NoiseSource.from_seed(self.cfg.seed, "dp", round_index)

    # --- checkpoint ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "channels": {
                name: {
                    "gaussian": [[r.noise_multiplier, r.count, r.sample_rate] for r in c.gaussian],
                    "skellam": [
                        [r.mu, r.l2_sensitivity, r.l1_sensitivity, r.count] for r in c.skellam
                    ],
                }
                for name, c in self.ledger.channels.items()
            },
            "epsilon_per_round": self.epsilon_per_round,
            "survivors": list(self.aggregator.survivors) if self.aggregator else [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from securedream.privacy.accounting import ChannelLedger, GaussianRelease

        self.ledger.channels = {
            name: ChannelLedger(
                [GaussianRelease(z, int(n), q) for z, n, q in c["gaussian"]],
                [SkellamRelease(mu, d2, d1, int(n)) for mu, d2, d1, n in c["skellam"]],
            )
            for name, c in state["channels"].items()
        }
        self.epsilon_per_round = list(state["epsilon_per_round"])
        if self.aggregator is not None:
            self.aggregator.survivors = list(state["survivors"])

    # --- budget -------------------------------------------------------------------------------
    def check_budget(self, round_index: int) -> None:
        """Refuse to start a round whose releases would push ε past ``max_epsilon``."""
        cap = self.cfg.privacy.max_epsilon
        if cap <= 0:
            return
        projected = self.projected_epsilon_after_next_round()
        if projected > cap:
            raise PrivacyBudgetExhausted(
                f"privacy budget: round {round_index + 1} would bring ε to {projected:.3f} > "
                f"privacy.max_epsilon = {cap} (δ = {self.cfg.privacy.delta}); stopping before it"
            )

    def projected_epsilon_after_next_round(self) -> float:
        ledger = self.ledger.copy()
        if self.cfg.privacy.placement == "central":
            for channel, count in self.plan.per_round().items():
                ledger.record_gaussian(channel, self.noise_multiplier, count)
        else:
            scale = self.secure_scale()
            assert scale is not None
            for channel, count in self.plan.per_round().items():
                dim = self.logit_dim if channel == Channel.LOGITS.value else self.dim
                r = self._skellam_release(self.noise_multiplier, dim, self.min_survivors, scale)
                ledger.record_skellam(
                    channel, SkellamRelease(r.mu, r.l2_sensitivity, r.l1_sensitivity, count)
                )
        return ledger.epsilon()

    def end_round(self) -> dict[str, float]:
        spent = {name: self.ledger.epsilon([name]) for name in self.ledger.channels}
        spent["total"] = self.ledger.epsilon()
        self.epsilon_per_round.append(spent)
        return spent

    # --- report -------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        from securedream.privacy.report import build_report

        return build_report(self)
