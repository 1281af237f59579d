"""What CoDream-fast does not support yet, as (config key, reason): one home for the refusals.

Config validation calls :func:`unsupported` for ``method = "codream-fast"``, and so does the round
itself, because tools that derive configs with ``dataclasses.replace`` (``bench accuracy``) skip
validation: a run must never go ahead silently unprotected or with a mechanism quietly ignored.
No torch here, so the config layer can import it cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from securedream.config import RunConfig


def unsupported(cfg: RunConfig) -> tuple[str, str] | None:
    """The first setting CoDream-fast refuses in ``cfg``, or None when it can run it."""
    if cfg.privacy.placement != "off":
        return (
            "privacy.placement",
            'client-level DP is not implemented for method = "codream-fast" (its generator '
            "deltas would need their own clip, noise calibration and accounting); set "
            'privacy.placement = "off" — secure aggregation and privacy.sample_level (DP-SGD) '
            "work with it",
        )
    if cfg.privacy.feature_stats:
        return (
            "privacy.feature_stats",
            'is not wired into method = "codream-fast"; set it false',
        )
    if cfg.clients.population:
        return ("clients.population", 'does not run method = "codream-fast"; set it false')
    return None
