"""The command-line arguments that choose a run's config, and the config they resolve to.

Why a module of its own: every command that runs or inspects a config (``securedream run``, the
benches, ``securedream privacy``, the audit) takes the same ``--config/--preset/--seed/--device/
--set`` arguments. Keeping them below the CLI lets those commands import them without importing
the CLI module that imports them back.
"""

from __future__ import annotations

import argparse

from securedream.config import RunConfig, resolve_config
from securedream.errors import ConfigError


def add_config_arguments(parser: argparse.ArgumentParser, default_preset: str | None) -> None:
    parser.add_argument("--config", metavar="FILE.toml", help="configuration file")
    parser.add_argument(
        "--preset", metavar="NAME", help=f"shipped preset (default: {default_preset})"
    )
    parser.add_argument("--seed", type=int, metavar="N", help="override the config's seed")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), help="override the device")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set clients.count=8 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The config the arguments of :func:`add_config_arguments` name (file or preset, overrides)."""
    if args.config is not None and args.preset is not None:
        raise ConfigError(
            "--preset", "give either --config or --preset, not both (a config file is a whole run)"
        )
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.device is not None:
        overrides.append(f'device="{args.device}"')
    return resolve_config(config_path=args.config, preset=args.preset, overrides=overrides)
