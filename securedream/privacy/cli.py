"""``securedream privacy epsilon|noise``: answer accounting questions without training."""

from __future__ import annotations

import argparse
import json
import math

from securedream.errors import ConfigError
from securedream.privacy.accounting import (
    GaussianRelease,
    gaussian_epsilon,
    noise_for_epsilon,
    opacus_version,
)
from securedream.privacy.engine import release_plan


def run_privacy_command(args: argparse.Namespace) -> int:
    from securedream.cli import _resolve

    cfg = _resolve(args)
    plan = release_plan(cfg)
    releases = args.releases if args.releases is not None else plan.total(cfg.rounds)
    if releases < 1:
        raise ConfigError("--releases", f"must be >= 1, got {releases}")
    delta = args.delta if args.delta is not None else cfg.privacy.delta
    if not 0 < delta < 1:
        raise ConfigError("--delta", f"must be in (0, 1), got {delta}")
    accountant = args.accountant or cfg.privacy.accountant
    result: dict[str, object] = {
        "releases": releases,
        "releases_per_round": plan.per_round() if args.releases is None else None,
        "rounds": cfg.rounds if args.releases is None else None,
        "delta": delta,
        "accountant": accountant,
        "accountant_library": f"opacus {opacus_version()}",
        "sample_rate": 1.0,
    }
    if args.privacy == "epsilon":
        z = (
            args.noise_multiplier
            if args.noise_multiplier is not None
            else cfg.privacy.noise_multiplier
        )
        if not (z > 0 and math.isfinite(z)):
            raise ConfigError("--noise-multiplier", f"must be a finite number > 0, got {z}")
        eps = gaussian_epsilon([GaussianRelease(z, releases)], delta, accountant)
        result.update(noise_multiplier=z, epsilon=eps)
        text = f"z = {z:g} over {releases} releases: ε = {eps:.4f} at δ = {delta:g} ({accountant})"
    else:
        target = args.target_epsilon
        if not (target > 0 and math.isfinite(target)):
            raise ConfigError("--target-epsilon", f"must be a finite number > 0, got {target}")
        z = noise_for_epsilon(target, delta, releases, accountant)
        eps = gaussian_epsilon([GaussianRelease(z, releases)], delta, accountant)
        result.update(target_epsilon=target, noise_multiplier=z, epsilon=eps)
        text = (
            f"ε = {target:g} over {releases} releases at δ = {delta:g} ({accountant}): "
            f"noise multiplier z = {z:.4f} (achieves ε = {eps:.4f})"
        )
    print(json.dumps(result, indent=2) if args.json else text)
    return 0
