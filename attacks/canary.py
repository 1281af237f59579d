"""Canary-client audit of the release mechanism (DESIGN.md §5): the one-release scope, and the
stacks, adversary and controls both scopes share. The default scope, the canary in every release
of a whole run against the run's ε, is :mod:`attacks.canary_run`.

A planted client (client 0) contributes ``C·u`` — the largest change one client may make to a
release, along a random unit direction ``u`` known to the auditor — in IN runs and a zero vector in
OUT runs (with the public-count normalisation, a zero contribution and an absent client give the
same sum). The other clients contribute fixed vectors the auditor knows. Each run passes the
contributions through the engine's own aggregation stack, built from the config by
``securedream.stack.build_aggregation`` (plain or secure sum, optionally wrapped in
central or distributed DP), and scores the run by

    score = Σ_releases ⟨release − known contributions, u⟩ / C

which is the optimal statistic for Gaussian noise: OUT scores are centred at 0, IN scores at the
number of releases. A threshold is chosen on separate calibration runs and the ε lower bound is
computed on fresh evaluation runs (``attacks.stats``). Every run gets fresh noise: the stack's
per-round noise key is derived from the run's own round index, and no round index is reused.

Secure aggregation. The pairwise masks of the protocol cancel exactly in Z_2^b, so the release of
a secure stack is a deterministic function of the clients' *encoded* inputs (fixed-point encoding,
stochastic rounding, and for distributed DP each client's Skellam share). The statistics therefore
run on :class:`MaskFreeSecureAggregator` — the engine's SecureAggregator with the same encoding,
rounding and noise code, minus the masking session — and the audit re-runs the first runs through
the full protocol and checks that the releases are bit-for-bit identical.

Theory: the ε of one audit run's releases (here: ``releases`` releases of one channel, not the
whole run), from the stack's own privacy ledger after the first run via ``_theory_epsilon`` (so
the accountant accounts exactly what was implemented: Gaussian with RDP/PRV for central, Skellam
with RDP for distributed). Without DP the theoretical ε is unbounded and the bound must reach the
ceiling the run count allows — the audit's positive control.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from attacks.stats import bound_at_threshold, choose_threshold, epsilon_ceiling
from securedream.aggregation.base import AggregateResult, Aggregator, Channel
from securedream.aggregation.secure import SecureAggregationSettings, SecureAggregator
from securedream.config import (
    RunConfig,
    apply_overrides,
    client_dp_off,
    config_from_dict,
    config_to_dict,
)
from securedream.privacy.noise import NoiseSource
from securedream.seeding import derive_seed, torch_generator
from securedream.stack import build_aggregation

Progress = Callable[[int], None]

SCOPES = ("run", "release")


def audited_adversary(placement: str) -> str:
    """Which party of privacy.json's ``epsilon_by_adversary`` the canary test models.

    The canary sees releases *with* all their noise: under central placement that is anyone who
    observes the noisy outputs ("observer"; the server itself sees the exact sum, so it is not the
    audited party); under distributed placement it is a party that knows none of the noise shares
    ("server").
    """
    return "observer" if placement == "central" else "server"


def _theory_epsilon(privacy: Any, adversary: str) -> float:
    """ε of the releases recorded in ``privacy``'s ledger against ``adversary``: the entry of
    ``epsilon_by_adversary`` that privacy.json shows for that party (same ledger code, same
    accountant), so the audit's theory and the user's report are one number."""
    return float(privacy.epsilon_by_adversary()[adversary])


@dataclass(frozen=True)
class CanarySettings:
    runs: int = 1_000_000  # evaluation runs per side (IN and OUT); see DEFAULT_CANARY_RUNS
    calibration_runs: int = 10_000  # per side, only used to choose the threshold
    dim: int = 16  # length of each release vector
    releases: int = 1  # releases per run; the canary is in each and the score sums them
    confidence: float = 0.95
    seed: int = 0
    channel: str = "dream_gradient"
    secure_check_runs: int = 16  # per side, re-run through the full protocol (secure stacks)
    # "run": the canary in every release of a whole run (attacks.canary_run); "release": the
    # fields above describe the audited releases (dim, releases, channel, calibration runs)
    scope: str = "run"
    # scope "run": whole runs per side through the real stack; 0 = enough for the noise check
    # (attacks.canary_run.mechanism_runs_for)
    mechanism_runs: int = 0


class _UnmaskedSession:
    """Stands in for ``protocols.InProcessSession``: sums the encoded inputs in Z_2^b directly.

    What the real protocol returns after unmasking is exactly this sum (masks cancel mod 2^b).
    """

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.dropped_clients: frozenset[int] = frozenset()

    def aggregate(self, inputs: Mapping[int, np.ndarray], *, drop: Mapping[int, str]) -> Any:
        if drop:
            raise RuntimeError("the canary audit runs without dropouts")
        total = np.zeros_like(next(iter(inputs.values())), dtype=np.int64)
        for vector in inputs.values():
            total += vector
        modulus = 1 << self.bits
        half = modulus >> 1
        wrapped = ((total + half) % modulus) - half if self.bits < 64 else total
        return _UnmaskedResult(wrapped.astype(np.int64), frozenset(inputs))

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class _UnmaskedResult:
    integer_sum: np.ndarray
    survivors: frozenset[int]
    bytes_up: Mapping[int, int] = dataclasses.field(default_factory=dict)
    bytes_down: Mapping[int, int] = dataclasses.field(default_factory=dict)


class MaskFreeSecureAggregator(SecureAggregator):
    """The engine's SecureAggregator (encoding, rounding, client noise) without the masking."""

    name = "secure-mask-free"

    def start_round(self, round_index: int, client_ids: list[int] | Any) -> None:
        super().start_round(round_index, client_ids)
        assert self.session is not None
        self.session.close()
        self.session = _UnmaskedSession(self.config.bits)  # type: ignore[assignment]


def audit_config(cfg: RunConfig, seed: int) -> RunConfig:
    """The run's config with the audit's seed (the seed changes no privacy parameter: z, clips,
    threshold and fixed-point scale depend on the rest of the config only)."""
    return config_from_dict(apply_overrides(config_to_dict(cfg), [f"seed={seed}"]))


def audit_noise(seed: int) -> Callable[[int], NoiseSource]:
    """Per-round DP noise keys derived from the audit's seed (see :func:`build_stack`)."""
    return lambda round_index: NoiseSource.from_seed(seed, "canary-dp", round_index)


def build_stack(
    cfg: RunConfig, dim: int, *, mask_free: bool, seed: int, num_classes: int | None = None
) -> tuple[Aggregator, Any]:
    """(aggregator, RunPrivacy or None) as the audit runs them.

    The config's own stack first (``build_aggregation``: same clips, z, secure-aggregation threshold
    and fixed-point scale, hence the same ε), then rebuilt with
    - no dropouts, planned or random, keeping the threshold t and degree the config derives
      (dropouts change the survivors of a release and so its noise under distributed DP; the audit
      audits the full-participation mechanism);
    - rounding and DP noise keys derived from the audit's seed whatever the config's key setting:
      the distributions are those of os.urandom keys, but runs are reproducible, so the
      full-protocol check can compare releases bit for bit;
    - the mask-free secure sum (:class:`MaskFreeSecureAggregator`) when ``mask_free``.
    """

    def secure(clients: int, configured: SecureAggregationSettings) -> Aggregator:
        derived = SecureAggregator(clients, configured)  # the t and degree the config derives
        settings = dataclasses.replace(
            configured,
            threshold=derived.threshold,
            degree=derived.config.k,
            dropout_rate=0.0,
            planned=(),
            secure_rounding=False,
            seed=seed,
            pipeline=not mask_free,  # nothing to prepare ahead without masks
        )
        kind = MaskFreeSecureAggregator if mask_free else SecureAggregator
        return kind(clients, settings)

    return build_aggregation(
        cfg,
        dim=dim,
        num_classes=num_classes or max(2, dim),
        secure=secure,
        noise_for_round=audit_noise(seed),
    )


def mechanism_summary(cfg: RunConfig, privacy: Any) -> dict[str, Any]:
    p = cfg.privacy
    return {
        "aggregation": "secure" if cfg.secure_aggregation.enabled else "plain",
        "dp_placement": p.placement,
        "noise_multiplier": privacy.noise_multiplier if privacy is not None else 0.0,
        "clip_gradient": p.clip_gradient,
        "clip_logits": p.clip_logits,
        "accountant": p.accountant if privacy is not None else None,
        "delta": p.delta,
        "clients": cfg.clients.count,
        "min_survivors": privacy.min_survivors if privacy is not None else None,
        "secure_bits": cfg.secure_aggregation.bits if cfg.secure_aggregation.enabled else None,
    }


class CanaryExperiment:
    """IN/OUT runs of one release mechanism with a planted canary client."""

    def __init__(self, cfg: RunConfig, settings: CanarySettings, *, mask_free: bool = True):
        self.settings = settings
        self.channel = Channel(settings.channel)
        self.cfg = audit_config(cfg, derive_seed(settings.seed, "canary") % (2**31))
        self.stack, self.privacy = build_stack(
            self.cfg, settings.dim, mask_free=mask_free, seed=self.cfg.seed
        )
        self.private = self.privacy is not None
        p = self.cfg.privacy
        # the largest change one client can make: its clip norm under DP; otherwise a unit vector
        # (any size is distinguishable without noise)
        self.clip = (
            (p.clip_logits if self.channel is Channel.LOGITS else p.clip_gradient)
            if self.private
            else 1.0
        )
        if self.cfg.secure_aggregation.enabled and not self.private:
            # keep the canary inside the secure encoding's public range
            sa = self.cfg.secure_aggregation
            self.clip = sa.clip_logits if self.channel is Channel.LOGITS else sa.clip
        gen = torch_generator(settings.seed, "canary", "direction")
        u = torch.randn(settings.dim, generator=gen, dtype=torch.float64)
        self.direction = (u / torch.linalg.vector_norm(u)).to(torch.float32)
        self.canary = self.direction * self.clip
        self.clients = list(range(self.cfg.clients.count))
        # the other clients: fixed, known vectors of norm C/2 (clipping never changes them)
        self.others = {}
        for k in self.clients[1:]:
            v = torch.randn(settings.dim, generator=torch_generator(settings.seed, "other", k))
            self.others[k] = (v / torch.linalg.vector_norm(v) * (self.clip / 2)).to(torch.float32)
        self.known = sum(self.others.values(), torch.zeros(settings.dim))
        self.eps_theory: float | None = None
        self.adversary = audited_adversary(p.placement) if self.private else None
        self.expected_score_std: float | None = None
        self._next_round = 0

    def _run(
        self, planted: bool, round_index: int, stack: Aggregator | None = None
    ) -> tuple[float, list[torch.Tensor]]:
        stack = stack or self.stack
        contributions = dict(self.others)
        contributions[0] = self.canary.clone() if planted else torch.zeros(self.settings.dim)
        stack.start_round(round_index, self.clients)
        score = 0.0
        releases = []
        try:
            for step in range(self.settings.releases):
                result: AggregateResult = stack.aggregate(
                    dict(contributions), channel=self.channel, step=step
                )
                releases.append(result.total)
                score += float(((result.total - self.known) * self.direction).sum()) / self.clip
        finally:
            stack.end_round()
        if self.eps_theory is None and self.private:
            self.eps_theory = _theory_epsilon(self.privacy, self.adversary)
            # the noise std the engine says it added to each release, in units of C
            log = self.stack.noise_std_log[-self.settings.releases :]  # type: ignore[attr-defined]
            self.expected_score_std = math.sqrt(sum((s / self.clip) ** 2 for s in log))
        return score, releases

    def scores(self, planted: bool, count: int, progress: Progress | None = None) -> np.ndarray:
        out = np.empty(count)
        for i in range(count):
            out[i], _ = self._run(planted, self._next_round)
            self._next_round += 1
            if progress is not None:
                progress(1)
        return out

    def check_secure_identity(self, runs: int) -> dict[str, Any] | None:
        """Re-run the first ``runs`` rounds of each side through the full protocol stack."""
        if not self.cfg.secure_aggregation.enabled or runs == 0:
            return None
        fast, _ = build_stack(self.cfg, self.settings.dim, mask_free=True, seed=self.cfg.seed)
        full, _ = build_stack(self.cfg, self.settings.dim, mask_free=False, seed=self.cfg.seed)
        max_diff = 0.0
        identical = True
        start = time.perf_counter()
        for i in range(2 * runs):
            _, a = self._run(i % 2 == 0, i, fast)
            _, b = self._run(i % 2 == 0, i, full)
            for x, y in zip(a, b, strict=True):
                identical = identical and torch.equal(x, y)
                max_diff = max(max_diff, float((x - y).abs().max()))
        return {
            "runs": 2 * runs,
            "identical": identical,
            "max_abs_difference": max_diff,
            "protocol_seconds_per_run": (time.perf_counter() - start) / (2 * runs),
        }


def run_canary_audit(
    cfg: RunConfig,
    settings: CanarySettings,
    *,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The full audit: calibrate, evaluate, bound, theory, identity check; JSON-able result.

    ``settings.scope == "run"`` hands over to :mod:`attacks.canary_run` (imported here: it builds
    on this module).
    """
    _validate(settings)
    if settings.scope == "run":
        from attacks.canary_run import run_canary_run_audit

        return run_canary_run_audit(cfg, settings, progress=progress)
    start = time.perf_counter()
    exp = CanaryExperiment(cfg, settings)
    delta = exp.cfg.privacy.delta
    cal_in = exp.scores(True, settings.calibration_runs, progress)
    cal_out = exp.scores(False, settings.calibration_runs, progress)
    threshold = choose_threshold(
        cal_in,
        cal_out,
        delta=delta,
        confidence=settings.confidence,
        eval_in=settings.runs,
        eval_out=settings.runs,
    )
    ev_in = exp.scores(True, settings.runs, progress)
    ev_out = exp.scores(False, settings.runs, progress)
    bound = bound_at_threshold(
        ev_in, ev_out, threshold, delta=delta, confidence=settings.confidence
    )
    identity = exp.check_secure_identity(settings.secure_check_runs)
    z = exp.privacy.noise_multiplier if exp.private else 0.0
    ceiling = epsilon_ceiling(settings.runs, delta=delta, confidence=settings.confidence)
    result: dict[str, Any] = {
        "scope": "release",
        "adversary": exp.adversary,
        "eps_lower_bound": bound.eps_lower_bound,
        "eps_theory": exp.eps_theory,
        "eps_theory_note": (
            f"{exp.cfg.privacy.accountant if exp.cfg.privacy.placement == 'central' else 'rdp'} "
            f"accountant over {settings.releases} release(s) at z = {z:.6g}"
            if exp.private
            else "no DP noise: the theoretical ε is unbounded"
        ),
        "eps_ceiling": ceiling,
        "runs": settings.runs,
        "calibration_runs": settings.calibration_runs,
        "threshold_method": "chosen on separate calibration runs",
        "confidence": settings.confidence,
        "delta": delta,
        "releases_per_run": settings.releases,
        "dim": settings.dim,
        "channel": settings.channel,
        "canary_norm": exp.clip,
        "threshold": threshold,
        "test": bound.to_dict(),
        "mechanism": mechanism_summary(exp.cfg, exp.privacy),
        "score_summary": {
            "in_mean": float(ev_in.mean()),
            "in_std": float(ev_in.std()),
            "out_mean": float(ev_out.mean()),
            "out_std": float(ev_out.std()),
            "expected_gaussian_shift_over_std": (
                math.sqrt(settings.releases) / z if exp.private and z > 0 else None
            ),
        },
        "noise_check": noise_check(ev_out, exp.expected_score_std, settings.confidence),
        "secure_identity": identity,
        "seed": settings.seed,
        "seconds": time.perf_counter() - start,
        "_scores": {"in": ev_in, "out": ev_out},  # arrays: left out of audit.json, plotted
    }
    return result


def noise_check(
    out_scores: np.ndarray, expected_std: float | None, confidence: float
) -> dict[str, Any] | None:
    """Observed spread of OUT scores against the noise the engine reports having added.

    Less noise than accounted would make the theoretical ε wrong (a privacy bug); more noise is
    safe but costs utility. The interval on std ratio is the χ² interval of a normal sample's std.
    """
    if expected_std is None or expected_std <= 0 or out_scores.size < 2:
        return None
    from scipy.stats import chi2

    n = out_scores.size
    observed = float(out_scores.std(ddof=1))
    alpha = 1 - confidence
    low = observed * math.sqrt((n - 1) / chi2.ppf(1 - alpha / 2, n - 1)) / expected_std
    high = observed * math.sqrt((n - 1) / chi2.ppf(alpha / 2, n - 1)) / expected_std
    if high < 1.0:
        status = "LESS noise than accounted: the theoretical ε does not hold"
    elif low > 1.0:
        status = "more noise than accounted (safe for privacy, costs utility)"
    else:
        status = "consistent with the accounted noise"
    return {
        "expected_std": expected_std,
        "observed_std": observed,
        "ratio": observed / expected_std,
        "ratio_interval": [low, high],
        "confidence": confidence,
        "status": status,
        "passed": high >= 1.0,
    }


def canary_negative_control(
    cfg: RunConfig, settings: CanarySettings, progress: Progress | None = None
) -> dict[str, Any]:
    """OUT against OUT (the canary is never planted): the bound must be 0."""
    exp = CanaryExperiment(cfg, settings)
    delta = exp.cfg.privacy.delta
    a = exp.scores(False, settings.calibration_runs, progress)
    b = exp.scores(False, settings.calibration_runs, progress)
    t = choose_threshold(a, b, delta=delta, confidence=settings.confidence, eval_in=settings.runs)
    bound = bound_at_threshold(
        exp.scores(False, settings.runs, progress),
        exp.scores(False, settings.runs, progress),
        t,
        delta=delta,
        confidence=settings.confidence,
    )
    return negative_control_result(bound.eps_lower_bound, settings.runs)


def negative_control_result(eps_lower_bound: float, runs: int) -> dict[str, Any]:
    return {
        "expected": "ε lower bound = 0 when no run contains the canary",
        "eps_lower_bound": eps_lower_bound,
        "runs": runs,
        "passed": eps_lower_bound == 0.0,
    }


def without_noise(cfg: RunConfig) -> RunConfig:
    """The same config with DP off: the positive control's mechanism."""
    raw = client_dp_off(apply_overrides(config_to_dict(cfg), ['privacy.placement="off"']))
    return config_from_dict(raw)


def canary_positive_control(
    cfg: RunConfig, settings: CanarySettings, progress: Progress | None = None
) -> dict[str, Any]:
    """The same mechanism without noise (plain sum): the bound must reach the run-count ceiling."""
    result = run_canary_audit(
        without_noise(cfg), dataclasses.replace(settings, secure_check_runs=0), progress=progress
    )
    ceiling = result["eps_ceiling"]
    return {
        "expected": "without noise the ε lower bound reaches the ceiling the run count allows",
        "eps_lower_bound": result["eps_lower_bound"],
        "eps_ceiling": ceiling,
        "runs": settings.runs,
        "passed": result["eps_lower_bound"] >= ceiling - 1e-9,
    }


def _validate(settings: CanarySettings) -> None:
    if settings.scope not in SCOPES:
        raise ValueError(f"canary scope must be one of {list(SCOPES)}, got {settings.scope!r}")
    if settings.mechanism_runs < 0:
        raise ValueError("canary mechanism runs must be >= 0 (0 = automatic)")
    if settings.runs < 1 or settings.calibration_runs < 1:
        raise ValueError("canary runs and calibration runs must be >= 1")
    if settings.dim < 1 or settings.releases < 1:
        raise ValueError("canary dim and releases must be >= 1")
    if settings.channel not in {c.value for c in Channel}:
        raise ValueError(f"canary channel must be one of {[c.value for c in Channel]}")
