"""Shared pytest set-up: hypothesis profiles and CPU-only, single-threaded determinism."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "slow",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("SECUREDREAM_HYPOTHESIS_PROFILE", "default"))

# Small tensors run faster on one thread than on two on a 2-core machine, and a fixed thread count
# keeps CPU results bit-for-bit repeatable between runs of the suite.
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # protocols/ tests do not need torch
    pass
