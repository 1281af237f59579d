"""Builds the aggregation stack a config asks for: plain or secure, optionally wrapped in DP."""

from __future__ import annotations

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
from securedream.privacy.engine import RunPrivacy


def build_aggregation(
    cfg: RunConfig, *, dim: int, num_classes: int
) -> tuple[Aggregator, RunPrivacy | None]:
    """The aggregator for a run, and its privacy façade when DP is on."""
    sa = cfg.secure_aggregation
    privacy = None
    if cfg.privacy.placement != "off":
        threshold = _secure_threshold(cfg) if sa.enabled else None
        privacy = RunPrivacy(cfg, dim=dim, num_classes=num_classes, secure_threshold=threshold)
    inner: Aggregator
    if sa.enabled:
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
            threshold=sa.threshold or None,
            degree=sa.neighbours or None,
            bits=sa.bits,
            ranges=ranges,
            scale=scale,
            dropout_rate=sa.dropout_rate,
            planned=parse_dropouts(sa.dropouts, cfg.clients.count),
            seed=cfg.seed,
            secure_rounding=sa.secure_rounding,
        )
        try:
            inner = SecureAggregator(cfg.clients.count, settings)
        except protocols.ConfigError as exc:
            raise ConfigError("secure_aggregation", str(exc)) from exc
    else:
        inner = PlainAggregator()
    if privacy is None:
        return inner, None
    return privacy.wrap(inner), privacy


def _secure_threshold(cfg: RunConfig) -> int:
    """The protocol's threshold t for this config (derived by protocols when not given)."""
    sa = cfg.secure_aggregation
    if cfg.clients.count < 2:
        raise ConfigError("secure_aggregation.enabled", "needs clients.count >= 2")
    try:
        return protocols.SecAggConfig(
            num_clients=cfg.clients.count,
            graph=sa.graph,
            degree=sa.neighbours or None,
            threshold=sa.threshold or None,
            dropout_rate=min(sa.dropout_rate, 0.5),
        ).t
    except protocols.ConfigError as exc:
        raise ConfigError("secure_aggregation", str(exc)) from exc
