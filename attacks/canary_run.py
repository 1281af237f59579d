"""Run-level canary audit (``--canary-scope run``, the default): the canary in every release.

The ε in privacy.json is the ε of a whole run: ``rounds`` × (the dream-step aggregates on the dream
channel + the soft-label aggregates on the logits channel), composed. This audit plants the canary
client in each of those releases, in the order the engine makes them (``release_plan`` and the
engine's snapshot steps), and scores a run by the sum over its releases of the per-release
projection scores ⟨release − known contributions, u⟩ / C — the likelihood-ratio statistic for a
composition of Gaussian releases (OUT scores ~ N(0, σ²), IN scores ~ N(T, σ²) for T releases).

It has two parts with different jobs; the docs (docs/audits.md) say which figure comes from which.

1. **Mechanism runs — the real implementation.** ``mechanism_runs`` whole runs per side (by default
   enough for ``MECHANISM_COORDINATES`` residual coordinates, 2 to 50) go through
   the engine's own aggregation stack, built from the run's config at the run's *real* release
   lengths (dream batch × pixels for dreams, dream batch × classes for soft labels), so z, the clip
   norms, the secure-aggregation threshold and fixed-point scale, and the privacy ledger are exactly
   those of the run. They give
   - ``eps_theory``: the stack's own ledger after one whole run — the number privacy.json shows for
     a run where every client takes part in every release;
   - the noise the engine says it added to each release (its noise log): the model's parameters;
   - the noise check: every coordinate of every release's residual (release − known contributions −
     the canary) against the logged std, per channel (millions of coordinates, so a shortfall of a
     fraction of a percent fails it);
   - the signal check: IN and OUT runs with the same noise keys and an oversized canary (4·C·u): the
     release difference along u must be C per release (clipping, encoding, decoding);
   - the secure-aggregation check: the first runs re-run through the full masking protocol give
     bit-identical releases.
2. **Statistics runs — a model of that mechanism.** ``runs`` runs per side, each scored as
   Σ_r (b + η_r), b = 1 (IN) or 0 (OUT), where η_r is the noise along u of release r, drawn with
   the engine's own samplers at the parameters the engine logged for that release: Gaussian of std
   σ_r / C_r (central), or the sum of the survivors' Skellam shares in fixed point divided by the
   scale s (distributed). For independent, identically distributed coordinates the noise along a
   unit vector has exactly this variance (and, for Gaussian noise, exactly this distribution).
   Left out: stochastic-rounding error of secure stacks (below 1/s per coordinate) — extra noise
   in the real mechanism, so leaving it out can only make the model easier to attack.

The threshold is chosen analytically from the accounted noise (shift T, std σ) before any run is
drawn: it depends on no score, so the bound stays valid whatever the score distributions are, and
no runs are spent on calibration.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from attacks.canary import (
    CanarySettings,
    _theory_epsilon,
    audit_config,
    audited_adversary,
    build_stack,
    mechanism_summary,
    negative_control_result,
    without_noise,
)
from attacks.stats import bound_at_threshold, epsilon_ceiling, gaussian_threshold
from securedream.aggregation.base import Aggregator, Channel
from securedream.config import RunConfig
from securedream.privacy.engine import release_plan
from securedream.privacy.noise import MAX_POISSON_MEAN, NoiseSource
from securedream.seeding import derive_seed, torch_generator

Progress = Callable[[int], None]

# the oversized canary of the signal check: clipping must bring it back to C
SIGNAL_CHECK_FACTOR = 4.0
# statistics runs drawn per batch (memory: one float64 per run and release)
MODEL_CHUNK = 8192
# automatic mechanism runs: enough whole runs for this many residual coordinates a side (the noise
# check then resolves a shortfall of ~0.1%), never fewer than 2 nor more than 50 a side
MECHANISM_COORDINATES = 2_500_000
MECHANISM_RUNS_RANGE = (2, 50)


# ------------------------------------------------------------------------------------------------
# the run's release sequence


@dataclass(frozen=True)
class Release:
    """One aggregate the server releases: round, channel, and the dream step it belongs to."""

    round: int
    channel: Channel
    step: int


def release_sequence(cfg: RunConfig) -> list[Release]:
    """Every release of a run, in the engine's order (``rounds.server.collaborative_dreaming``).

    Per round: one dream aggregate per global step, and a soft-label aggregate after each snapshot
    step. The counts are checked against ``release_plan`` (what the accountant is told).
    """
    from securedream.rounds.server import snapshot_steps

    plan = release_plan(cfg)
    dream = Channel(plan.dream_channel)
    snaps = snapshot_steps(cfg.dreams.global_steps, cfg.dreams.snapshots)
    out = []
    for r in range(cfg.rounds):
        for step in range(cfg.dreams.global_steps):
            out.append(Release(r, dream, step))
            if step in snaps:
                out.append(Release(r, Channel.LOGITS, step))
    if len(out) != plan.total(cfg.rounds):
        raise RuntimeError(
            f"release sequence has {len(out)} releases, the release plan {plan.total(cfg.rounds)}"
        )
    return out


@dataclass(frozen=True)
class ReleaseShapes:
    """The run's release lengths: what ``run_experiment`` passes to ``build_aggregation``."""

    dream_dim: int
    num_classes: int
    batch: int

    def dim(self, channel: Channel) -> int:
        return self.batch * self.num_classes if channel is Channel.LOGITS else self.dream_dim


def release_shapes(cfg: RunConfig) -> ReleaseShapes:
    from securedream.data import load_dataset

    data = load_dataset(
        cfg.data.dataset,
        seed=cfg.seed,
        test_size=cfg.data.test_size,
        root=cfg.data.root or None,
        download=cfg.data.download,
    )
    batch = cfg.dreams.batch_size
    return ReleaseShapes(batch * data.channels * data.image_size**2, data.num_classes, batch)


# ------------------------------------------------------------------------------------------------
# part 1: the real mechanism


@dataclass(frozen=True)
class ReleaseNoise:
    """What the engine logged for one release of the first mechanism run."""

    channel: str
    clip: float
    std: float  # noise std per coordinate, in release units (0 without DP)
    survivors: int
    scale: float | None  # fixed-point scale under distributed placement, else None

    def std_in_clip_units(self) -> float:
        return self.std / self.clip


@dataclass
class MechanismRun:
    scores: np.ndarray  # per-release projection scores, in units of C
    releases: list[torch.Tensor]
    # per channel: Σ (residual / logged std)² and the number of coordinates
    residual_sq: dict[str, float]
    residual_count: dict[str, int]


class RunMechanism:
    """The engine's stack at the run's real release lengths, the canary in every release."""

    def __init__(
        self,
        cfg: RunConfig,
        settings: CanarySettings,
        *,
        mask_free: bool = True,
        shapes: ReleaseShapes | None = None,
    ):
        """``shapes``: release lengths other than the run's (the noise-free positive control)."""
        self.settings = settings
        self.cfg = audit_config(cfg, derive_seed(settings.seed, "canary-run") % (2**31))
        self.sequence = release_sequence(self.cfg)
        self.shapes = shapes or release_shapes(self.cfg)
        self.stack, self.privacy = self.build(mask_free)
        self.private = self.privacy is not None
        p = self.cfg.privacy
        sa = self.cfg.secure_aggregation
        channels = sorted({r.channel for r in self.sequence}, key=lambda c: c.value)
        self.clip: dict[Channel, float] = {}
        self.direction: dict[Channel, torch.Tensor] = {}
        self.known: dict[Channel, torch.Tensor] = {}
        self.others: dict[Channel, dict[int, torch.Tensor]] = {}
        for ch in channels:
            logits = ch is Channel.LOGITS
            if self.private:  # the largest change one client can make: its clip norm
                clip = p.clip_logits if logits else p.clip_gradient
            elif sa.enabled:  # keep the canary inside the secure encoding's public range
                clip = sa.clip_logits if logits else sa.clip
            else:
                clip = 1.0
            dim = self.shapes.dim(ch)
            gen = torch_generator(settings.seed, "canary-run", "direction", ch.value)
            u = torch.randn(dim, generator=gen, dtype=torch.float64)
            self.clip[ch] = float(clip)
            self.direction[ch] = (u / torch.linalg.vector_norm(u)).to(torch.float32)
            others = {}
            for k in range(1, self.cfg.clients.count):
                g = torch_generator(settings.seed, "canary-run", "other", ch.value, k)
                v = torch.randn(dim, generator=g)
                others[k] = (v / torch.linalg.vector_norm(v) * (clip / 2)).to(torch.float32)
            self.others[ch] = others
            self.known[ch] = sum(others.values(), torch.zeros(dim))
        self.clients = list(range(self.cfg.clients.count))
        self.eps_theory: float | None = None
        self.adversary = audited_adversary(p.placement) if self.private else None
        self.noise: list[ReleaseNoise] = []

    def build(self, mask_free: bool) -> tuple[Aggregator, Any]:
        return build_stack(
            self.cfg,
            self.shapes.dream_dim,
            mask_free=mask_free,
            seed=self.cfg.seed,
            num_classes=self.shapes.num_classes,
        )

    def mechanism_runs(self) -> int:
        """``settings.mechanism_runs``, or the automatic count (``MECHANISM_COORDINATES``)."""
        if self.settings.mechanism_runs > 0:
            return self.settings.mechanism_runs
        per_run = sum(self.shapes.dim(r.channel) for r in self.sequence)
        low, high = MECHANISM_RUNS_RANGE
        return max(low, min(high, math.ceil(MECHANISM_COORDINATES / per_run)))

    def _scale(self) -> float | None:
        if not self.private or self.cfg.privacy.placement != "distributed":
            return None
        return self.privacy.secure_scale() if self.privacy is not None else None

    def run(
        self,
        planted: bool,
        run_index: int,
        stack: Aggregator | None = None,
        *,
        canary_factor: float = 1.0,
        keep_releases: bool = False,
    ) -> MechanismRun:
        """One whole run; its round indices ``run_index·rounds + r`` give fresh noise keys."""
        stack = stack or self.stack
        own = stack is self.stack
        scores = np.zeros(len(self.sequence))
        releases: list[torch.Tensor] = []
        sq: dict[str, float] = {}
        count: dict[str, int] = {}
        rounds = self.cfg.rounds
        for r in range(rounds):
            stack.start_round(run_index * rounds + r, self.clients)
            try:
                for i, rel in enumerate(self.sequence):
                    if rel.round != r:
                        continue
                    ch = rel.channel
                    canary = self.direction[ch] * (self.clip[ch] * canary_factor)
                    contributions = dict(self.others[ch])
                    contributions[0] = canary if planted else torch.zeros_like(canary)
                    total = stack.aggregate(contributions, channel=ch, step=rel.step).total
                    diff = total - self.known[ch]
                    scores[i] = float((diff * self.direction[ch]).sum()) / self.clip[ch]
                    if keep_releases:
                        releases.append(total)
                    if own and self.private:
                        std = stack.noise_std_log[-1]  # type: ignore[attr-defined]
                        signal = self.direction[ch] * self.clip[ch] if planted else 0.0
                        residual = (diff - signal).double() / std
                        sq[ch.value] = sq.get(ch.value, 0.0) + float((residual**2).sum())
                        count[ch.value] = count.get(ch.value, 0) + residual.numel()
            finally:
                stack.end_round()
        if own and self.eps_theory is None and self.private:
            self._record_first_run()
        return MechanismRun(scores, releases, sq, count)

    def _record_first_run(self) -> None:
        assert self.privacy is not None and self.adversary is not None
        self.eps_theory = _theory_epsilon(self.privacy, self.adversary)
        log = self.stack.noise_std_log  # type: ignore[attr-defined]
        survivors = self.stack.survivors  # type: ignore[attr-defined]
        scale = self._scale()
        self.noise = [
            ReleaseNoise(rel.channel.value, self.clip[rel.channel], log[i], survivors[i], scale)
            for i, rel in enumerate(self.sequence)
        ]

    def accounted_noise(self) -> list[ReleaseNoise]:
        """Per-release noise (from the first run's log); noise-free releases without DP."""
        if not self.private:
            return [
                ReleaseNoise(
                    rel.channel.value, self.clip[rel.channel], 0.0, len(self.clients), None
                )
                for rel in self.sequence
            ]
        if not self.noise:
            self.run(False, _FIRST_RUN_INDEX)
        return self.noise

    def signal_check(self) -> dict[str, Any]:
        """IN − OUT release along u with identical noise keys: the canary must move it by C.

        Under DP the planted canary is oversized (4·C·u), so clipping must bring it back to C;
        without DP nothing is clipped and the canary is C·u.
        """
        factor = SIGNAL_CHECK_FACTOR if self.private else 1.0
        stack, _ = self.build(mask_free=True)
        a = self.run(True, _SIGNAL_RUN_INDEX, stack, canary_factor=factor)
        stack, _ = self.build(mask_free=True)
        b = self.run(False, _SIGNAL_RUN_INDEX, stack, canary_factor=factor)
        shift = a.scores - b.scores
        tolerance = 1e-4
        if self.cfg.secure_aggregation.enabled:
            inner = getattr(stack, "inner", stack)
            scale = float(inner.encoding.scale)  # type: ignore[attr-defined]
            # stochastic rounding of the canary's coordinates moves the projection by ≤ √d / s
            tolerance += 2 * math.sqrt(max(self.shapes.dim(c) for c in self.clip)) / scale
        passed = bool(np.all(np.abs(shift - 1) <= tolerance))
        return {
            "expected": (
                f"a canary of {factor:g}·C moves each release by C along u (clipped, encoded and "
                "decoded), never more"
            ),
            "canary_factor": factor,
            "releases": int(shift.size),
            "shift_min": float(shift.min()),
            "shift_max": float(shift.max()),
            "tolerance": tolerance,
            "passed": passed,
        }

    def check_secure_identity(self, runs: int) -> dict[str, Any] | None:
        """The first ``runs`` runs of each side again, through the full masking protocol."""
        if not self.cfg.secure_aggregation.enabled or runs == 0:
            return None
        fast, _ = self.build(mask_free=True)
        full, _ = self.build(mask_free=False)
        identical = True
        max_diff = 0.0
        start = time.perf_counter()
        for i in range(2 * runs):
            a = self.run(i % 2 == 0, _MECHANISM_RUN_START + i, fast, keep_releases=True)
            b = self.run(i % 2 == 0, _MECHANISM_RUN_START + i, full, keep_releases=True)
            for x, y in zip(a.releases, b.releases, strict=True):
                identical = identical and torch.equal(x, y)
                max_diff = max(max_diff, float((x - y).abs().max()))
        return {
            "runs": 2 * runs,
            "releases_each": len(self.sequence),
            "identical": identical,
            "max_abs_difference": max_diff,
            "protocol_seconds_per_run": (time.perf_counter() - start) / (2 * runs),
        }


# fixed run indices: no two runs of the audit share a round index (so no two share noise keys),
# except the signal check's pair, which shares them on purpose (on stacks of its own)
_FIRST_RUN_INDEX = 0
_MECHANISM_RUN_START = 1
_SIGNAL_RUN_INDEX = 10**8


def residual_noise_check(runs: list[MechanismRun], confidence: float) -> dict[str, Any] | None:
    """Per-coordinate noise of the real releases against the std the engine logged, per channel.

    Each coordinate of (release − known contributions − canary) / logged std should have variance
    1 (slightly more on secure stacks: stochastic rounding). The interval is the χ² interval of the
    pooled std at ``confidence`` (Bonferroni over channels); *less* noise than logged fails — the
    model and the theory would both be wrong —, more is reported (safe, costs utility).
    """
    from scipy.stats import chi2

    channels = sorted({c for r in runs for c in r.residual_count})
    if not channels:
        return None
    alpha = (1 - confidence) / len(channels)
    per: dict[str, Any] = {}
    for ch in channels:
        n = sum(r.residual_count.get(ch, 0) for r in runs)
        ratio = math.sqrt(sum(r.residual_sq.get(ch, 0.0) for r in runs) / n)
        low = ratio * math.sqrt(n / chi2.ppf(1 - alpha / 2, n))
        high = ratio * math.sqrt(n / chi2.ppf(alpha / 2, n))
        per[ch] = {"coordinates": n, "ratio": ratio, "ratio_interval": [low, high]}
    worst = min(per.values(), key=lambda v: v["ratio_interval"][1])
    passed = all(v["ratio_interval"][1] >= 1.0 for v in per.values())
    if not passed:
        status = "LESS noise than accounted: the theoretical ε does not hold"
    elif all(v["ratio_interval"][0] > 1.0 for v in per.values()):
        status = "more noise than accounted (safe for privacy, costs utility)"
    else:
        status = "consistent with the accounted noise"
    return {
        "what": "per-coordinate noise of the real mechanism runs' releases / the std it logged",
        "ratio": worst["ratio"],
        "ratio_interval": worst["ratio_interval"],
        "by_channel": per,
        "confidence": confidence,
        "status": status,
        "passed": passed,
    }


# ------------------------------------------------------------------------------------------------
# part 2: the statistics runs (model)


def model_scores(
    noise: list[ReleaseNoise],
    planted: bool,
    count: int,
    source: NoiseSource,
    progress: Progress | None = None,
) -> np.ndarray:
    """``count`` run scores Σ_r (b + η_r), η_r the release's noise along u (see module doc)."""
    out = np.empty(count)
    done = 0
    while done < count:
        n = min(MODEL_CHUNK, count - done)
        total = np.full(n, float(len(noise)) if planted else 0.0)
        for rel in noise:
            if rel.std <= 0:
                continue
            if rel.scale is None:  # central: Gaussian, std σ/C along any unit vector
                total += source.gaussian(n, rel.std_in_clip_units())
            else:  # distributed: the survivors' Skellam shares, in fixed point
                total += _skellam_sum(source, n, rel) / rel.scale
        out[done : done + n] = total
        done += n
        if progress is not None:
            progress(n)
    return out


def _skellam_sum(source: NoiseSource, count: int, rel: ReleaseNoise) -> np.ndarray:
    """The sum of ``rel.survivors`` Skellam(μ) shares: one Skellam(survivors·μ) draw (sums of
    independent Skellam variables are Skellam), share by share only where that mean would be
    too large for the exact sampler."""
    assert rel.scale is not None
    mu_share = (rel.std_in_clip_units() * rel.scale) ** 2 / (2 * rel.survivors)
    if mu_share * rel.survivors <= MAX_POISSON_MEAN:
        return source.skellam(count, mu_share * rel.survivors)
    total = np.zeros(count, dtype=np.int64)
    for _ in range(rel.survivors):
        total += source.skellam(count, mu_share)
    return total


def score_std(noise: list[ReleaseNoise]) -> float:
    return math.sqrt(sum(r.std_in_clip_units() ** 2 for r in noise))


# ------------------------------------------------------------------------------------------------
# the audit


def run_canary_run_audit(
    cfg: RunConfig, settings: CanarySettings, *, progress: Progress | None = None
) -> dict[str, Any]:
    """Run-scope audit: mechanism runs, model statistics, analytic threshold, bound, theory."""
    start = time.perf_counter()
    mech = RunMechanism(cfg, settings)
    delta = mech.cfg.privacy.delta
    # part 1: the real mechanism (the first run also fills the ledger and the noise log)
    first = mech.run(False, _FIRST_RUN_INDEX)
    runs_out = [first]
    runs_in = []
    per_side = mech.mechanism_runs()
    for i in range(per_side):
        runs_in.append(mech.run(True, _MECHANISM_RUN_START + 2 * i))
        if i + 1 < per_side:
            runs_out.append(mech.run(False, _MECHANISM_RUN_START + 2 * i + 1))
        if progress is not None:
            progress(2)
    noise = mech.accounted_noise()
    shift = float(len(noise))
    sigma = score_std(noise)
    # part 2: statistics on the model, threshold from the accounted noise alone
    threshold = gaussian_threshold(
        shift,
        sigma,
        runs_in=settings.runs,
        runs_out=settings.runs,
        delta=delta,
        confidence=settings.confidence,
    )
    seed_in = NoiseSource.from_seed(settings.seed, "canary-run-model", "in")
    seed_out = NoiseSource.from_seed(settings.seed, "canary-run-model", "out")
    ev_in = model_scores(noise, True, settings.runs, seed_in, progress)
    ev_out = model_scores(noise, False, settings.runs, seed_out, progress)
    bound = bound_at_threshold(
        ev_in, ev_out, threshold, delta=delta, confidence=settings.confidence
    )
    ceiling = epsilon_ceiling(settings.runs, delta=delta, confidence=settings.confidence)
    mech_in = np.array([r.scores.sum() for r in runs_in]) if runs_in else np.zeros(0)
    mech_out = np.array([r.scores.sum() for r in runs_out])
    per_channel: dict[str, dict[str, int]] = {}
    for rel in mech.sequence:
        per_channel.setdefault(rel.channel.value, {"releases": 0, "dim": 0})
        per_channel[rel.channel.value]["releases"] += 1
        per_channel[rel.channel.value]["dim"] = mech.shapes.dim(rel.channel)
    z = mech.privacy.noise_multiplier if mech.private else 0.0
    p = mech.cfg.privacy
    accountant = p.accountant if p.placement == "central" else "rdp"
    return {
        "scope": "run",
        "adversary": mech.adversary,
        "eps_lower_bound": bound.eps_lower_bound,
        "eps_theory": mech.eps_theory,
        "eps_theory_note": (
            f"{accountant} accountant over the run's {len(noise)} releases at z = {z:.6g}, from "
            f"the engine's own ledger after one whole run (privacy.json's ε for the "
            f"{mech.adversary}, every client in every release)"
            if mech.private
            else "no DP noise: the theoretical ε is unbounded"
        ),
        "eps_ceiling": ceiling,
        "runs": settings.runs,
        "calibration_runs": 0,
        "threshold_method": "analytic: from the accounted noise, before any run (no calibration)",
        "confidence": settings.confidence,
        "delta": delta,
        "releases_per_run": len(noise),
        "releases_by_channel": per_channel,
        "dim": mech.shapes.dream_dim,
        "channel": "all",
        "canary_norm": {ch.value: c for ch, c in mech.clip.items()},
        "threshold": threshold,
        "test": bound.to_dict(),
        "mechanism": mechanism_summary(mech.cfg, mech.privacy),
        "statistics": (
            "model: per release, the canary's shift C plus the release's noise along u drawn with "
            "the engine's samplers at the std the engine logged; checked against the real "
            "mechanism by mechanism_runs (noise, signal, secure identity)"
        ),
        "score_summary": {
            "in_mean": float(ev_in.mean()),
            "in_std": float(ev_in.std()),
            "out_mean": float(ev_out.mean()),
            "out_std": float(ev_out.std()),
            "expected_gaussian_shift_over_std": shift / sigma if sigma > 0 else None,
        },
        "mechanism_runs": {
            "runs_per_side": per_side,
            "in_mean": float(mech_in.mean()) if mech_in.size else None,
            "in_std": float(mech_in.std()) if mech_in.size > 1 else None,
            "out_mean": float(mech_out.mean()),
            "out_std": float(mech_out.std()) if mech_out.size > 1 else None,
            "expected_std": sigma,
        },
        "noise_check": residual_noise_check([*runs_in, *runs_out], settings.confidence),
        "signal_check": mech.signal_check(),
        "secure_identity": mech.check_secure_identity(min(settings.secure_check_runs, per_side)),
        "seed": settings.seed,
        "seconds": time.perf_counter() - start,
        "_scores": {"in": ev_in, "out": ev_out},
    }


def run_negative_control(
    cfg: RunConfig, settings: CanarySettings, progress: Progress | None = None
) -> dict[str, Any]:
    """OUT against OUT (statistics runs, analytic threshold): the bound must be 0."""
    mech = RunMechanism(cfg, settings)
    noise = mech.accounted_noise()
    delta = mech.cfg.privacy.delta
    sigma = score_std(noise)
    t = gaussian_threshold(
        float(len(noise)),
        sigma,
        runs_in=settings.runs,
        runs_out=settings.runs,
        delta=delta,
        confidence=settings.confidence,
    )
    a = model_scores(noise, False, settings.runs, NoiseSource.from_seed(settings.seed, "neg", 0))
    b = model_scores(noise, False, settings.runs, NoiseSource.from_seed(settings.seed, "neg", 1))
    if progress is not None:
        progress(2 * settings.runs)
    bound = bound_at_threshold(a, b, t, delta=delta, confidence=settings.confidence)
    return negative_control_result(bound.eps_lower_bound, settings.runs)


def run_positive_control(
    cfg: RunConfig, settings: CanarySettings, progress: Progress | None = None
) -> dict[str, Any]:
    """The real stack without noise, the run's whole release sequence: the bound must reach the
    ceiling. Releases have length ``settings.dim`` (16) instead of the run's: without noise the
    length changes nothing the test sees, and the control stays cheap for long runs."""
    shapes = ReleaseShapes(settings.dim, settings.dim, 1)
    mech = RunMechanism(without_noise(cfg), settings, shapes=shapes)
    s_in = np.array([mech.run(True, i).scores.sum() for i in range(settings.runs)])
    s_out = np.array(
        [mech.run(False, settings.runs + i).scores.sum() for i in range(settings.runs)]
    )
    if progress is not None:
        progress(2 * settings.runs)
    delta = mech.cfg.privacy.delta
    t = len(mech.sequence) / 2  # no noise: IN scores are T, OUT scores 0
    bound = bound_at_threshold(s_in, s_out, t, delta=delta, confidence=settings.confidence)
    ceiling = epsilon_ceiling(settings.runs, delta=delta, confidence=settings.confidence)
    return {
        "expected": "without noise the ε lower bound reaches the ceiling the run count allows",
        "eps_lower_bound": bound.eps_lower_bound,
        "eps_ceiling": ceiling,
        "runs": settings.runs,
        "releases_each": len(mech.sequence),
        "passed": bound.eps_lower_bound >= ceiling - 1e-9,
    }
