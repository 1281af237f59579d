"""``securedream privacy epsilon|noise``: answer accounting questions without training."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from securedream.errors import ConfigError
from securedream.privacy.accounting import (
    GaussianRelease,
    gaussian_epsilon,
    noise_for_epsilon,
    opacus_version,
)
from securedream.privacy.engine import release_plan


def run_privacy_command(args: argparse.Namespace) -> int:
    from securedream.config_args import config_from_args

    cfg = config_from_args(args)
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
        z = noise_for_epsilon(target, delta, releases, accountant, key="--target-epsilon")
        eps = gaussian_epsilon([GaussianRelease(z, releases)], delta, accountant)
        result.update(target_epsilon=target, noise_multiplier=z, epsilon=eps)
        text = (
            f"ε = {target:g} over {releases} releases at δ = {delta:g} ({accountant}): "
            f"noise multiplier z = {z:.4f} (achieves ε = {eps:.4f})"
        )
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


def add_adversaries_parser(privacy_sub: Any) -> None:
    """``securedream privacy adversaries``: the run's ε against each party, before running it."""
    p = privacy_sub.add_parser(
        "adversaries",
        help="ε of a whole run against the observer, the server and the server with colluders",
    )
    from securedream.config_args import add_config_arguments

    add_config_arguments(p, "demo")
    p.add_argument(
        "--survivors",
        type=int,
        metavar="N",
        help="clients in every release (default: clients.count, i.e. no dropout)",
    )
    p.add_argument("--json", action="store_true")


def run_adversaries_command(args: argparse.Namespace) -> int:
    """Plan every release of the config's run at ``--survivors`` and account it per party.

    The same calibration, fixed-point scale and ledger as a real run (``RunPrivacy``), with the
    releases recorded as the run would record them, without training anything.
    """
    from securedream.config_args import config_from_args
    from securedream.data.datasets import load_dataset
    from securedream.stack import build_aggregation

    cfg = config_from_args(args)
    if cfg.privacy.placement == "off":
        raise ConfigError("privacy.placement", 'set "central" or "distributed" to account it')
    data = load_dataset(
        cfg.data.dataset,
        seed=cfg.seed,
        test_size=cfg.data.test_size,
        root=cfg.data.root or None,
        download=False,
    )
    dim = cfg.dreams.batch_size * data.channels * data.image_size**2
    _, privacy = build_aggregation(cfg, dim=dim, num_classes=data.num_classes)
    assert privacy is not None
    survivors = cfg.clients.count if args.survivors is None else args.survivors
    if not privacy.min_survivors <= survivors <= cfg.clients.count:
        raise ConfigError(
            "--survivors",
            f"must be in [{privacy.min_survivors}, {cfg.clients.count}] (fewer is refused)",
        )
    ledger = privacy.planned_run(survivors)
    by_adversary = privacy.epsilon_by_adversary(ledger)
    result: dict[str, Any] = {
        "placement": cfg.privacy.placement,
        "neighbouring": cfg.privacy.neighbouring,
        "noise_multiplier": privacy.noise_multiplier,
        "target_epsilon": cfg.privacy.target_epsilon or None,
        "releases": {name: c.releases for name, c in ledger.channels.items()},
        "clients": cfg.clients.count,
        "survivors": survivors,
        "min_survivors": privacy.min_survivors,
        "colluders": privacy.colluders,
        "noise_shares": privacy.noise_shares if cfg.privacy.placement == "distributed" else None,
        "delta": cfg.privacy.delta,
        "accountant": cfg.privacy.accountant,
        "epsilon_by_adversary": {
            k: v if math.isfinite(v) else None for k, v in by_adversary.items()
        },
        "epsilon_total": privacy.epsilon_total(ledger),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    eps = ", ".join(
        f"{k} {v:.4g}" if math.isfinite(v) else f"{k} no DP" for k, v in by_adversary.items()
    )
    print(
        f"{cfg.privacy.placement}, z = {privacy.noise_multiplier:.5g}, {survivors} of "
        f"{cfg.clients.count} clients in every release, {privacy.colluders} colluders "
        f"({cfg.privacy.neighbouring}, δ = {cfg.privacy.delta:g}): ε {eps}; "
        f"total {result['epsilon_total']:.4g}"
    )
    return 0
