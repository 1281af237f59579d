"""The privacy façade of a run: resolves the noise, wraps the aggregator, keeps the budget, reports.

Like Opacus's ``PrivacyEngine``, this is one object over small parts (clipping, noise, accounting,
report) so each part stays replaceable and testable.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
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
from securedream.privacy.adversaries import (
    SENSITIVITY_FACTOR,
    Adversary,
    adversaries,
    epsilon_by_adversary,
    protected_epsilon,
)
from securedream.privacy.aggregator import DPAggregator, DPSettings
from securedream.randomness import NoiseSource


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


class ReproducibleNoiseWarning(UserWarning):
    """The run's DP noise keys derive from its seed: anyone holding the config can remove it."""


def refuse_for_deployment(cfg: RunConfig) -> None:
    """Refuse reproducible noise for anything that is not an in-process research run.

    In a deployment every node holds the same config and so the seed: with noise keys derived from
    it, the server and every client can regenerate the noise and subtract it.
    """
    if cfg.privacy.placement != "off" and cfg.privacy.reproducible_noise:
        raise ConfigError(
            "privacy.reproducible_noise",
            "must be false in a deployment: every node holds the seed and could regenerate and "
            "subtract the noise; reproducible noise is for in-process research runs only",
        )


class RunPrivacy:
    """Client-level DP for one run (placement central or distributed).

    Survivors: a sum is released only with at least ``min_survivors`` clients (with secure
    aggregation never fewer than 2 or the protocol threshold t). Colluders: up to ``colluders``
    clients (default t − 1) may tell the server their own noise shares. Distributed noise shares
    are calibrated so that the shares left to the worst protected party after the tolerated
    dropouts, ``noise_shares = min_survivors − max(colluders, 1)``, reach the target (the 1: a
    client observer always knows its own share).
    """

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
        self.sensitivity_factor = SENSITIVITY_FACTOR[p.neighbouring]
        if secure_threshold is None:
            self.min_survivors = max(1, p.min_survivors)
        else:
            self.min_survivors = max(2, secure_threshold, p.min_survivors)
        if p.colluders >= 0:
            self.colluders = p.colluders
        else:
            self.colluders = secure_threshold - 1 if secure_threshold else 0
        self.noise_shares = self.min_survivors
        if p.placement == "distributed":
            if not cfg.secure_aggregation.enabled or secure_threshold is None:
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
                    f"must be in [0, clients.count={cfg.clients.count}], got {self.min_survivors}",
                )
            self.noise_shares = self.min_survivors - max(self.colluders, 1)
            if self.noise_shares < 1:
                raise ConfigError(
                    "privacy.colluders",
                    f"{self.colluders} colluders leave no honest noise share among the fewest "
                    f"survivors ({self.min_survivors}); use fewer colluders or raise "
                    "privacy.min_survivors",
                )
        if p.noise_multiplier <= 0 and p.target_epsilon <= 0:
            raise ConfigError(
                "privacy.noise_multiplier",
                "set noise_multiplier > 0 or target_epsilon > 0 when placement is not off",
            )
        if p.reproducible_noise:
            warnings.warn(
                ReproducibleNoiseWarning(
                    "privacy.reproducible_noise = true: DP noise keys derive from the run seed, so "
                    "anyone holding the config can regenerate and subtract the noise; the ε "
                    "figures hold only against parties without the seed (research runs only)"
                ),
                stacklevel=2,
            )
        self.ledger = PrivacyLedger(p.accountant, p.delta)
        self.noise_multiplier = (
            p.noise_multiplier if p.target_epsilon <= 0 else self._noise_for_target()
        )
        self.epsilon_per_round: list[dict[str, float]] = []
        self.aggregator: DPAggregator | None = None

    # --- adversaries --------------------------------------------------------------------------
    def adversaries(self) -> tuple[Adversary, ...]:
        return adversaries(self.cfg.privacy.placement, self.colluders)

    def epsilon_by_adversary(self, ledger: PrivacyLedger | None = None) -> dict[str, float]:
        """ε of all releases so far (all channels composed) against each party; inf: no DP."""
        return epsilon_by_adversary(
            ledger or self.ledger,
            self.cfg.privacy.placement,
            self.colluders,
            self.cfg.privacy.neighbouring,
        )

    def epsilon_total(self, ledger: PrivacyLedger | None = None) -> float:
        """The largest ε among the parties the placement claims to protect against."""
        return protected_epsilon(
            self.epsilon_by_adversary(ledger), self.cfg.privacy.placement, self.colluders
        )

    def channel_epsilon(self, channel: str) -> float:
        """ε of one channel's releases against the worst protected party."""
        one = PrivacyLedger(self.ledger.accountant, self.ledger.delta)
        one.channels[channel] = self.ledger.channel(channel)
        return self.epsilon_total(one)

    # --- calibration --------------------------------------------------------------------------
    def _noise_for_target(self) -> float:
        p = self.cfg.privacy
        releases = self.plan.total(self.cfg.rounds)
        # z relative to C; the mechanism's sensitivity is factor·C (replace-one: 2C)
        z = self.sensitivity_factor * noise_for_epsilon(
            p.target_epsilon, p.delta, releases, p.accountant
        )
        if p.placement == "central":
            return z
        # Skellam is a little worse than Gaussian at the same variance: raise z until it fits.
        for _ in range(200):
            if self._projected_distributed_epsilon(z, self.cfg.rounds) <= p.target_epsilon:
                return z
            z *= 1.01
        raise ConfigError("privacy.target_epsilon", f"cannot reach ε = {p.target_epsilon}")

    def _skellam_release(self, z: float, dim: int, survivors: int, scale: float) -> SkellamRelease:
        """``survivors`` shares of the calibrated per-client Skellam noise, zero-out units."""
        sensitivity = l2_sensitivity(scale, dim)
        mu_share = skellam_share_mu(z, scale, dim, self.noise_shares)
        return SkellamRelease(
            mu_share * survivors, sensitivity, sensitivity * math.sqrt(dim), 1, survivors
        )

    def _planned_ledger(
        self, z: float, rounds: int, ledger: PrivacyLedger, survivors: int | None = None
    ) -> PrivacyLedger:
        """``ledger`` plus ``rounds`` planned rounds with ``survivors`` clients in each release
        (default: the fewest that is released, the worst case)."""
        ledger = ledger.copy()
        if self.cfg.privacy.placement == "central":
            for channel, count in self.plan.per_round().items():
                ledger.record_gaussian(channel, z, count * rounds)
            return ledger
        from securedream.privacy.aggregator import distributed_scale

        sa = self.cfg.secure_aggregation
        scale = distributed_scale(z, self.cfg.clients.count, self.noise_shares, sa.bits, self.dim)
        for channel, count in self.plan.per_round().items():
            dim = self.logit_dim if channel == Channel.LOGITS.value else self.dim
            r = self._skellam_release(z, dim, survivors or self.min_survivors, scale)
            ledger.record_skellam(channel, dataclasses.replace(r, count=count * rounds))
        return ledger

    def planned_run(self, survivors: int) -> PrivacyLedger:
        """Every release of the configured run as it would be recorded with ``survivors`` clients
        in each (the fixed-point scale and calibration of this run)."""
        ledger = PrivacyLedger(self.cfg.privacy.accountant, self.cfg.privacy.delta)
        return self._planned_ledger(self.noise_multiplier, self.cfg.rounds, ledger, survivors)

    def _projected_distributed_epsilon(self, z: float, rounds: int) -> float:
        empty = PrivacyLedger(self.cfg.privacy.accountant, self.cfg.privacy.delta)
        return self.epsilon_total(self._planned_ledger(z, rounds, empty))

    def secure_scale(self) -> float | None:
        """Fixed-point scale the secure aggregator must use (distributed placement only)."""
        if self.cfg.privacy.placement != "distributed":
            return None
        from securedream.privacy.aggregator import distributed_scale

        sa = self.cfg.secure_aggregation
        return distributed_scale(
            self.noise_multiplier, self.cfg.clients.count, self.noise_shares, sa.bits, self.dim
        )

    # --- wiring -------------------------------------------------------------------------------
    def dp_settings(self) -> DPSettings:
        """The clip, noise and survivor parameters of every release of this run."""
        p = self.cfg.privacy
        return DPSettings(
            placement=p.placement,
            noise_multiplier=self.noise_multiplier,
            clip_gradient=p.clip_gradient,
            clip_logits=p.clip_logits,
            min_survivors=self.min_survivors,
            noise_shares=self.noise_shares,
        )

    def wrap(
        self,
        inner: Aggregator,
        noise_for_round: Callable[[int], NoiseSource] | None = None,
    ) -> DPAggregator:
        """The DP aggregator around ``inner`` (the only place one is made: ``securedream.stack``).

        ``noise_for_round`` replaces the run's noise keys (the audit's reproducible keys).
        """
        p = self.cfg.privacy
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
        self.aggregator = DPAggregator(
            inner, self.dp_settings(), self.ledger, noise_for_round or self.noise_for_round
        )
        return self.aggregator

    def noise_for_round(self, round_index: int) -> NoiseSource:
        """Per-round noise key: fresh from os.urandom, or from (seed, round) for research runs."""
        if self.cfg.privacy.reproducible_noise:
            return NoiseSource.from_seed(self.cfg.seed, "dp", round_index)
        return NoiseSource.from_os()

    # --- checkpoint ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "channels": {
                name: {
                    "gaussian": [[r.noise_multiplier, r.count, r.sample_rate] for r in c.gaussian],
                    "skellam": [
                        [r.mu, r.l2_sensitivity, r.l1_sensitivity, r.count, r.shares]
                        for r in c.skellam
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
                # a release without its share count (older checkpoints) is read as one share:
                # every party that knows a share then gets no DP from it (conservative)
                [
                    SkellamRelease(*r[:3], int(r[3]), int(r[4]) if len(r) > 4 else 1)
                    for r in c["skellam"]
                ],
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
        """ε against the worst protected party after one more round at the fewest survivors."""
        return self.epsilon_total(self._planned_ledger(self.noise_multiplier, 1, self.ledger))

    def end_round(self) -> dict[str, float]:
        spent = {name: self.channel_epsilon(name) for name in self.ledger.channels}
        spent["total"] = self.epsilon_total()
        self.epsilon_per_round.append(spent)
        return spent

    # --- report -------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        from securedream.privacy.report import build_report

        return build_report(self)
