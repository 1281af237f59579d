"""Shared helpers for the attacks tests: tiny trained runs, cached once per test process."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from securedream.config import RunConfig, resolve_config

TINY = [
    "rounds=1",
    "dreams.global_steps=3",
    "clients.local_epochs=1",
    "clients.warmup_epochs=1",
    "output.dream_grid=false",
]


def tiny_config(*extra: str) -> RunConfig:
    """The smoke preset (digits 8x8, 2 clients) cut to one round of three dream steps."""
    return resolve_config(preset="smoke", overrides=[*TINY, *extra])


@functools.cache
def trained_run(*extra: str) -> Path:
    """A finished tiny run folder (trained once per process for each set of overrides)."""
    from securedream.engines.inprocess import run_experiment

    folder = Path(tempfile.mkdtemp(prefix="securedream-attacks-")) / "run"
    run_experiment(tiny_config(*extra), folder, progress=False)
    return folder


SECURE_DP = (
    "secure_aggregation.enabled=true",
    'privacy.placement="distributed"',
    "privacy.noise_multiplier=1.0",
)
