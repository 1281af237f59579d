"""Secure and private population runs: one secure-aggregation session per sampled cohort.

Every release (a dream-step aggregate or a soft-label aggregate) is summed over that release's
Poisson cohort only. :class:`CohortSecureAggregator` runs one pairwise-masking session of the
cohort's m members per release (``securedream.aggregation.secure.SecureAggregator``, the same
protocol code as every other run), wrapped, when DP is on, in the same
:class:`~securedream.privacy.aggregator.DPAggregator` that clips each contribution and makes each
member add its Skellam noise share before masking. The server only learns the noisy cohort sum; it
divides by the public expected cohort q·N (the server loop does that).

:class:`PopulationPrivacy` calibrates the shares and accounts the run per adversary
(:func:`securedream.population.accounting.population_epsilons`): the server knows the cohorts, so
against it a client's ε is the unamplified composition of the releases it can have joined; only
observers get amplification by sampling, and only with secret cohort coins (os.urandom) and no
participation cap.

Noise shares: a cohort sum is released only with at least ``min_survivors`` members (smaller
cohorts are skipped: nothing of them is released). Each member's share is calibrated so that
``noise_shares = min_survivors − max(colluders, 1)`` shares reach the target, so the guarantee
holds for the fewest members a released sum can have, against the server with ``colluders``
clients (and against a client observer, which knows its own share).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

import protocols
from securedream.aggregation.base import AggregateResult, Aggregator, Channel
from securedream.aggregation.secure import SecureAggregationSettings, SecureAggregator
from securedream.config import RunConfig
from securedream.errors import ConfigError
from securedream.population.accounting import (
    DEFAULT_TAIL,
    PopulationEpsilons,
    participations_for,
    population_epsilons,
)
from securedream.population.votes import vote_sensitivity
from securedream.privacy.accounting import (
    PrivacyLedger,
    SkellamRelease,
    noise_for_epsilon,
    opacus_version,
)
from securedream.privacy.adversaries import SENSITIVITY_FACTOR
from securedream.privacy.aggregator import DPAggregator, DPSettings, distributed_scale
from securedream.privacy.noise import NoiseSource

# sessions per round are numbered round·SESSIONS_PER_ROUND + release (rounding-key labels)
SESSIONS_PER_ROUND = 1_000_000


def default_min_survivors(cfg: RunConfig) -> int:
    """Fewest members of a released cohort sum: 2 without DP (a "sum" of one is that client's
    contribution in the clear); with DP ``privacy.min_survivors``, or half the expected cohort."""
    if cfg.privacy.placement == "off":
        return 2
    if cfg.privacy.min_survivors:
        return max(2, cfg.privacy.min_survivors)
    return max(2, math.ceil(cfg.clients.sample_rate * cfg.clients.count / 2))


def cohort_threshold(cfg: RunConfig, members: int, floor: int) -> int:
    """The protocol threshold t of a cohort session of ``members`` clients.

    Explicit ``secure_aggregation.threshold``, or derived by ``protocols`` with its default dropout
    tolerance and raised to the survivor floor where the graph allows it. Where that t does not fit
    the session's own graph (no simulated dropouts, so a sparser Harary graph for small cohorts),
    the session's derived t is used.
    """
    sa = cfg.secure_aggregation

    def config(t: int | None, **dropout: float) -> protocols.SecAggConfig:
        return protocols.SecAggConfig(
            num_clients=members,
            graph=sa.graph,
            degree=sa.neighbours or None,
            threshold=t,
            **dropout,
        )

    try:
        derived = config(sa.threshold or None)
        t = derived.t
        wanted = min(floor, members)
        if not sa.threshold and derived.t < wanted <= derived.k + 1:
            t = config(wanted).t
        try:
            return config(t, dropout_rate=0.0).t  # as SecureAggregator builds the session
        except protocols.ConfigError:
            if sa.threshold:
                raise
            return config(None, dropout_rate=0.0).t
    except protocols.ConfigError as exc:
        raise ConfigError("secure_aggregation", f"cohort of {members}: {exc}") from exc


class PopulationPrivacy:
    """Calibration, ledger and per-adversary ε of a distributed-DP population run."""

    def __init__(self, cfg: RunConfig, *, dream_dim: int, label_dim: int, dreams: int) -> None:
        p, c = cfg.privacy, cfg.clients
        self.cfg = cfg
        self.dream_dim = dream_dim
        self.label_dim = label_dim
        self.votes = cfg.dreams.soft_labels == "votes"
        # one-hot votes over B dreams have L2 norm exactly √B: the sensitivity, with no clipping
        self.clip_labels = vote_sensitivity(dreams) if self.votes else p.clip_logits
        self.q = c.sample_rate
        self.releases_per_round = cfg.dreams.global_steps + cfg.dreams.snapshots
        self.units = cfg.rounds * self.releases_per_round
        self.min_survivors = default_min_survivors(cfg)
        if self.min_survivors > c.count:
            raise ConfigError(
                "privacy.min_survivors", f"must be in [0, clients.count={c.count}] for a population"
            )
        self.threshold = cohort_threshold(cfg, self.min_survivors, self.min_survivors)
        self.colluders = p.colluders if p.colluders >= 0 else self.threshold - 1
        if self.colluders >= self.threshold:
            raise ConfigError(
                "privacy.colluders",
                f"{self.colluders} colluders reach the secure-aggregation threshold t = "
                f"{self.threshold} of the smallest released cohort ({self.min_survivors}), so "
                "they could unmask single contributions; use fewer colluders",
            )
        self.noise_shares = self.min_survivors - max(self.colluders, 1)
        if self.noise_shares < 1:
            raise ConfigError(
                "privacy.colluders",
                f"{self.colluders} colluders leave no honest noise share among the fewest "
                f"members of a released cohort ({self.min_survivors}); use fewer colluders or "
                "raise privacy.min_survivors",
            )
        self.factor = SENSITIVITY_FACTOR[p.neighbouring]
        self.sampling_secret = not p.reproducible_noise
        self.ledger = PrivacyLedger("rdp", p.delta)
        self.skipped = 0
        self.noise_multiplier = p.noise_multiplier if p.target_epsilon <= 0 else self._calibrate()
        self.scale = self._scale(self.noise_multiplier)
        self.epsilon_per_round: list[dict[str, float | None]] = []

    # --- calibration ----------------------------------------------------------------------------
    def _scale(self, z: float) -> float:
        sa = self.cfg.secure_aggregation
        return distributed_scale(
            z, self.cfg.clients.count, self.noise_shares, sa.bits, self.dream_dim
        )

    def _release(self, z: float, scale: float, dim: int, members: int) -> SkellamRelease:
        """One cohort release of ``members`` shares, in integer units (as DPAggregator records)."""
        from securedream.contribution import l2_sensitivity, skellam_share_mu

        sensitivity = l2_sensitivity(scale, dim)
        mu = skellam_share_mu(z, scale, dim, self.noise_shares)
        return SkellamRelease(mu * members, sensitivity, sensitivity * math.sqrt(dim), 1, members)

    def planned(self, z: float, members: int | None = None) -> PopulationEpsilons:
        """ε of the whole configured run with every release made by ``members`` (default: the
        fewest a released cohort can have, the worst case)."""
        scale = self._scale(z)
        m = members or self.min_survivors
        rounds = self.cfg.rounds
        releases = [
            dataclasses.replace(
                self._release(z, scale, self.dream_dim, m),
                count=rounds * self.cfg.dreams.global_steps,
            ),
            dataclasses.replace(
                self._release(z, scale, self.label_dim, m), count=rounds * self.cfg.dreams.snapshots
            ),
        ]
        return self._epsilons(releases)

    def _calibrate(self) -> float:
        """Smallest z (1 % steps from the Gaussian estimate) whose planned ε meets the target
        against every protected party."""
        p = self.cfg.privacy
        joined, delta = participations_for(
            self.units, self.q, self.cfg.clients.max_participations, p.delta
        )
        z = self.factor * noise_for_epsilon(p.target_epsilon, delta, joined, "rdp")
        for _ in range(400):
            if self.planned(z).total <= p.target_epsilon:
                return z
            z *= 1.01
        raise ConfigError("privacy.target_epsilon", f"cannot reach ε = {p.target_epsilon}")

    # --- accounting -----------------------------------------------------------------------------
    def _epsilons(self, releases: Sequence[SkellamRelease]) -> PopulationEpsilons:
        return population_epsilons(
            releases,
            q=self.q,
            units=self.units,
            delta=self.cfg.privacy.delta,
            colluders=self.colluders,
            max_participations=self.cfg.clients.max_participations,
            sensitivity_factor=self.factor,
            sampling_secret=self.sampling_secret,
            tail=DEFAULT_TAIL,
        )

    def recorded(self) -> list[SkellamRelease]:
        return [r for ch in self.ledger.channels.values() for r in ch.skellam]

    def spent(self) -> PopulationEpsilons:
        """ε of the releases recorded so far."""
        return self._epsilons(self.recorded())

    def end_round(self) -> dict[str, float | None]:
        eps = self.spent()
        row = {k: _json(v) for k, v in eps.by_adversary().items()}
        self.epsilon_per_round.append(row)
        return row

    # --- wiring ---------------------------------------------------------------------------------
    def wrap(self, inner: SecureAggregator, session: int) -> DPAggregator:
        p = self.cfg.privacy
        settings = DPSettings(
            placement="distributed",
            noise_multiplier=self.noise_multiplier,
            clip_gradient=p.clip_gradient,
            clip_logits=self.clip_labels,
            min_survivors=self.min_survivors,
            noise_shares=self.noise_shares,
        )

        def noise(_: int) -> NoiseSource:
            if p.reproducible_noise:
                return NoiseSource.from_seed(self.cfg.seed, "dp", session)
            return NoiseSource.from_os()

        return DPAggregator(inner, settings, self.ledger, noise)

    # --- report ---------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        p, c = self.cfg.privacy, self.cfg.clients
        eps = self.spent()
        return {
            "engine": "population",
            "unit": "client",
            "neighbouring": p.neighbouring,
            "sensitivity_factor": self.factor,
            "placement": "distributed",
            "mechanism": (
                "each sampled client clips its contribution, adds a Skellam noise share in the "
                "fixed-point domain and masks it; one secure-aggregation session per release over "
                "that release's cohort; the server divides the noisy sum by q·N"
            ),
            "population": c.count,
            "sample_rate": self.q,
            "sampling": c.sampling,
            "expected_cohort": self.q * c.count,
            "cohort_coins": "os.urandom" if self.sampling_secret else "seed-derived (reproducible)",
            "max_participations": c.max_participations,
            "clip": {"dream": p.clip_gradient, "soft_labels": self.clip_labels},
            "soft_labels": self.cfg.dreams.soft_labels,
            "noise_multiplier": self.noise_multiplier,
            "target_epsilon": p.target_epsilon or None,
            "fixed_point_scale": self.scale,
            "min_survivors": self.min_survivors,
            "colluders": self.colluders,
            "noise_shares": self.noise_shares,
            "cohort_threshold_at_min_survivors": self.threshold,
            "releases_planned": self.units,
            "releases_recorded": sum(r.count for r in self.recorded()),
            "releases_skipped_small_cohort": self.skipped,
            "participation_bound": eps.participations,
            "participation_tail": DEFAULT_TAIL if eps.server_delta < p.delta else 0.0,
            "delta": p.delta,
            "server_delta": eps.server_delta,
            "accountant": "rdp (Skellam bound of Agarwal et al. 2021, Opacus RDP conversion)",
            "opacus_version": opacus_version(),
            "observer_amplified": eps.observer_amplified,
            "epsilon_by_adversary": {k: _json(v) for k, v in eps.by_adversary().items()},
            "epsilon_total": _json(eps.total),
            "epsilon_planned_worst_case": {
                k: _json(v) for k, v in self.planned(self.noise_multiplier).by_adversary().items()
            },
            "epsilon_per_round": self.epsilon_per_round,
            "how": {
                "server": (
                    "no amplification (the server forms the cohorts): the J most costly recorded "
                    "releases composed at every RDP order, J = participation_bound, at "
                    "server_delta; J is the cap max_participations (enforced by the client, holds "
                    "against any cohort choice) or, without a cap, the binomial tail bound, which "
                    "assumes the server samples the cohorts as configured"
                ),
                "server+colluders": "as server, with the colluders' own noise shares removed",
                "observer": (
                    "min of the server-style bound less the observer's own share and, with "
                    "secret coins and no cap, Poisson amplification by the joint-convexity bound "
                    "log(1 − q + q·exp((α−1)·ε(α)))/(α−1) per release, composed over all releases"
                ),
            },
            "skellam_releases": [
                {
                    "mu": r.mu,
                    "shares": r.shares,
                    "l2": r.l2_sensitivity,
                    "l1": r.l1_sensitivity,
                    "count": r.count,
                }
                for r in self.recorded()
            ],
            "not_protected": [
                f"a server colluding with more than {self.colluders} clients",
                "participation: the server forms the cohorts and knows who answered each release",
                *(
                    []
                    if 0 < c.max_participations < self.units
                    else [
                        "a server that puts a client in more cohorts than sampling would: without "
                        "clients.max_participations the server's ε assumes honest sampling"
                    ]
                ),
                "the dreams and the soft labels are broadcast to every client",
                "a client's own trained model (never released, but kept by the client)",
                "local training is not sample-level private",
            ]
            + (
                [
                    "anyone holding the config: privacy.reproducible_noise derives the noise keys "
                    "and the cohorts from the seed (research only; no amplification claimed)"
                ]
                if p.reproducible_noise
                else []
            ),
        }


def _json(eps: float) -> float | None:
    return eps if math.isfinite(eps) else None


class CohortSecureAggregator(Aggregator):
    """One secure-aggregation session (optionally with distributed DP) per cohort release.

    Client ids of the cohort are renumbered 0..m−1 for the session and mapped back in the result.
    A cohort smaller than the survivor floor (or empty) releases nothing: the sum is zero and no
    contributor is named.
    """

    name = "cohort-secure"

    def __init__(
        self,
        cfg: RunConfig,
        shapes: Mapping[Channel, tuple[int, ...]],
        privacy: PopulationPrivacy | None,
    ) -> None:
        sa = cfg.secure_aggregation
        self.cfg = cfg
        self.shapes = dict(shapes)
        self.privacy = privacy
        self.floor = privacy.min_survivors if privacy else default_min_survivors(cfg)
        ranges = {"dream": sa.clip, "logits": sa.clip_logits}
        if privacy is not None:
            ranges = {"dream": cfg.privacy.clip_gradient, "logits": privacy.clip_labels}
        elif cfg.dreams.soft_labels == "votes":
            ranges["logits"] = 1.0  # one-hot votes: every entry is 0 or 1
        self.settings = SecureAggregationSettings(
            graph=sa.graph,
            threshold=sa.threshold or None,
            degree=sa.neighbours or None,
            bits=sa.bits,
            ranges=ranges,
            scale=privacy.scale if privacy else (sa.scale or None),
            seed=cfg.seed,
            secure_rounding=sa.secure_rounding,
            min_survivors=self.floor,
        )
        self.round_index = 0
        self.release = 0
        self.seconds = 0.0
        self.noise_seconds = 0.0
        self.sessions = 0

    def start_round(self, round_index: int, client_ids: Sequence[int]) -> None:
        self.round_index = round_index
        self.release = 0

    def aggregate(
        self, contributions: Mapping[int, torch.Tensor], *, channel: Channel, step: int
    ) -> AggregateResult:
        session = self.round_index * SESSIONS_PER_ROUND + self.release
        self.release += 1
        ids = sorted(contributions)
        if len(ids) < self.floor:
            if self.privacy is not None:
                self.privacy.skipped += 1
            return AggregateResult(total=torch.zeros(self.shapes[channel]), contributors=())
        settings = dataclasses.replace(
            self.settings, threshold=cohort_threshold(self.cfg, len(ids), self.floor)
        )
        inner = SecureAggregator(len(ids), settings)
        stack: Aggregator = inner if self.privacy is None else self.privacy.wrap(inner, session)
        stack.start_round(session, list(range(len(ids))))
        try:
            local = {i: contributions[k] for i, k in enumerate(ids)}
            result = stack.aggregate(local, channel=channel, step=step)
        finally:
            stack.end_round()
            self.seconds += inner.seconds
            self.noise_seconds += inner.noise_seconds
            self.sessions += 1
        return AggregateResult(
            total=result.total,
            contributors=tuple(ids[i] for i in result.contributors),
            bytes_up={ids[i]: n for i, n in result.bytes_up.items()},
            bytes_down={ids[i]: n for i, n in result.bytes_down.items()},
        )
