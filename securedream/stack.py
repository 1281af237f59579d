"""The composition root of the aggregation stack: plain or secure sum, optionally wrapped in DP.

Why one builder: the stack's parameters (secure-aggregation threshold, survivor floor, fixed-point
scale, clipping ranges, noise calibration) depend on each other, and every engine and audit must
release exactly what the config's stack releases. So :func:`plan_stack` computes them once, and
:func:`build_aggregation` is the only place a stack is assembled. Callers that need another sum
underneath (Flower's remote secure sum, the audit's mask-free sum) inject a factory for the inner
aggregator instead of taking a built stack apart; a node reads its own copy of the parameters from
the plan. It lives above ``aggregation`` and ``privacy`` so neither imports the other's builder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import protocols
from securedream.aggregation.base import Aggregator
from securedream.aggregation.plain import PlainAggregator
from securedream.aggregation.secure import (
    SecureAggregationSettings,
    SecureAggregator,
    parse_dropouts,
)
from securedream.config import RunConfig
from securedream.errors import ConfigError
from securedream.privacy.aggregator import DPSettings
from securedream.privacy.engine import RunPrivacy
from securedream.randomness import NoiseSource

SecureFactory = Callable[[int, SecureAggregationSettings], Aggregator]


@dataclass(frozen=True)
class StackPlan:
    """Every parameter of a config's stack: the secure sum's settings and the DP façade."""

    clients: int
    secure: SecureAggregationSettings | None
    privacy: RunPrivacy | None

    @property
    def dp(self) -> DPSettings | None:
        return self.privacy.dp_settings() if self.privacy is not None else None


def plan_stack(cfg: RunConfig, *, dim: int, num_classes: int) -> StackPlan:
    """The stack's parameters for a run whose dream batch has ``dim`` coordinates."""
    sa = cfg.secure_aggregation
    privacy = None
    threshold = secure_threshold(cfg) if sa.enabled else None
    if cfg.privacy.placement != "off":
        privacy = RunPrivacy(cfg, dim=dim, num_classes=num_classes, secure_threshold=threshold)
    if not sa.enabled:
        return StackPlan(cfg.clients.count, None, privacy)
    if cfg.clients.count < 2:
        raise ConfigError("secure_aggregation.enabled", "needs clients.count >= 2")
    ranges = {"dream": sa.clip, "logits": sa.clip_logits}
    if privacy is not None:  # clipped contributions have every coordinate within ±C
        ranges = {"dream": cfg.privacy.clip_gradient, "logits": cfg.privacy.clip_logits}
    scale = sa.scale or None
    if privacy is not None and cfg.privacy.placement == "distributed":
        scale = privacy.secure_scale()
    settings = SecureAggregationSettings(
        graph=sa.graph,
        threshold=threshold,
        degree=sa.neighbours or None,
        bits=sa.bits,
        ranges=ranges,
        scale=scale,
        dropout_rate=sa.dropout_rate,
        planned=parse_dropouts(sa.dropouts, cfg.clients.count),
        seed=cfg.seed,
        secure_rounding=sa.secure_rounding,
        min_survivors=survivor_floor(cfg, threshold),
    )
    return StackPlan(cfg.clients.count, settings, privacy)


def build_aggregation(
    cfg: RunConfig | StackPlan,
    *,
    dim: int = 0,
    num_classes: int = 0,
    secure: SecureFactory = SecureAggregator,
    plain: Callable[[], Aggregator] = PlainAggregator,
    noise_for_round: Callable[[int], NoiseSource] | None = None,
) -> tuple[Aggregator, RunPrivacy | None]:
    """The aggregator for a run (from its config or its plan), and its privacy façade when DP is on.

    ``secure`` / ``plain`` make the inner sum (default: the in-process ones); ``noise_for_round``
    replaces the DP noise keys (the audit's reproducible keys).
    """
    plan = cfg if isinstance(cfg, StackPlan) else plan_stack(cfg, dim=dim, num_classes=num_classes)
    inner: Aggregator
    if plan.secure is not None:
        try:
            inner = secure(plan.clients, plan.secure)
        except protocols.ConfigError as exc:
            raise ConfigError("secure_aggregation", str(exc)) from exc
    else:
        inner = plain()
    if plan.privacy is None:
        return inner, None
    return plan.privacy.wrap(inner, noise_for_round), plan.privacy


def survivor_floor(cfg: RunConfig, threshold: int | None) -> int:
    """Fewest survivors whose sum is released; an aggregation with fewer is refused.

    With secure aggregation: never 1 (the "sum" of one client is that client's contribution in
    the clear), never below the protocol threshold t, never below ``privacy.min_survivors``.
    Without it every client takes part in every sum and the server sees each contribution anyway.
    """
    asked = cfg.privacy.min_survivors if cfg.privacy.placement != "off" else 0
    if threshold is None:
        return max(1, asked)
    return max(2, threshold, asked)


def secure_threshold(cfg: RunConfig) -> int:
    """The protocol's threshold t for this config.

    A derived t is raised to the survivor floor (at least 2, at least ``privacy.min_survivors``)
    where the sharing graph allows it, so the protocol itself cannot unmask a sum of fewer
    survivors: with 2 clients t becomes 2, and a dropout aborts the aggregation instead of
    releasing the one survivor's contribution. An explicit t below 2 is refused.
    """
    sa = cfg.secure_aggregation
    if cfg.clients.count < 2:
        raise ConfigError("secure_aggregation.enabled", "needs clients.count >= 2")
    if sa.threshold == 1:
        raise ConfigError(
            "secure_aggregation.threshold",
            "must be >= 2 (or 0 = derived): with t = 1 a sum of one survivor is that client's "
            "contribution in the clear",
        )
    derived = _protocol_config(cfg, sa.threshold or None)
    if sa.threshold:
        return derived.t
    wanted = survivor_floor(cfg, derived.t)
    if derived.t < wanted <= derived.k + 1:
        return _protocol_config(cfg, wanted).t
    return derived.t


def _protocol_config(cfg: RunConfig, threshold: int | None) -> protocols.SecAggConfig:
    sa = cfg.secure_aggregation
    try:
        return protocols.SecAggConfig(
            num_clients=cfg.clients.count,
            graph=sa.graph,
            degree=sa.neighbours or None,
            threshold=threshold,
            dropout_rate=min(sa.dropout_rate, 0.5),
        )
    except protocols.ConfigError as exc:
        raise ConfigError("secure_aggregation", str(exc)) from exc
