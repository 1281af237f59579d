"""Audit settings: one frozen dataclass, every field with its allowed range and its CLI flag.

Errors are :class:`securedream.errors.ConfigError` naming the flag and the allowed range, so the
CLI prints them and exits with status 2 before anything runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from securedream.errors import ConfigError

ATTACKS = ("canary", "mia", "recon", "labels")
CHANNELS = ("dream_gradient", "logits")
CANARY_SCOPES = ("run", "release")
# evaluation runs per side when --canary-runs is not given: the run scope's runs are cheap
# statistics runs (attacks.canary_run), the release scope's go through the engine's stack
DEFAULT_CANARY_RUNS = {"run": 1_000_000, "release": 100_000}


def _spec(
    default: Any,
    flag: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    choices: tuple[Any, ...] | None = None,
    help: str = "",
) -> Any:
    meta = {
        "flag": flag,
        "low": low,
        "high": high,
        "low_open": low_open,
        "choices": choices,
        "help": help,
    }
    if isinstance(default, tuple):
        return field(default=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class AuditConfig:
    attacks: tuple[str, ...] = _spec(
        ATTACKS, "--attacks", choices=ATTACKS, help="comma-separated subset of " + ",".join(ATTACKS)
    )
    seed: int = _spec(0, "--seed", 0, 2**31 - 1, help="the audit's own seed (not the run's)")
    confidence: float = _spec(
        0.95,
        "--confidence",
        0.5,
        0.9999,
        help="confidence of every interval and of the ε lower bound",
    )
    # canary audit
    canary_scope: str = _spec(
        "run",
        "--canary-scope",
        choices=CANARY_SCOPES,
        help="run: the canary in every release of a whole run, bound against the run's ε; "
        "release: the --canary-releases releases of one channel",
    )
    canary_runs: int | None = _spec(
        None,
        "--canary-runs",
        10,
        10_000_000,
        help="evaluation runs per side (IN and OUT); default "
        + ", ".join(f"{n:_} for scope {s}" for s, n in DEFAULT_CANARY_RUNS.items()),
    )
    canary_mechanism_runs: int | None = _spec(
        None,
        "--canary-mechanism-runs",
        1,
        100_000,
        help="scope run: whole runs per side through the engine's real stack (the checks); "
        "default: enough for 2.5 million noise coordinates a side, between 2 and 50",
    )
    canary_calibration_runs: int = _spec(
        10_000,
        "--canary-calibration-runs",
        10,
        10_000_000,
        help="scope release: runs per side used only to choose the threshold",
    )
    canary_dim: int = _spec(
        16, "--canary-dim", 1, 1_000_000, help="scope release: length of each release"
    )
    canary_releases: int = _spec(
        1,
        "--canary-releases",
        1,
        100_000,
        help="scope release: releases per run (canary in each; scores summed)",
    )
    canary_channel: str = _spec(
        "dream_gradient",
        "--canary-channel",
        choices=CHANNELS,
        help="scope release: whose clip norm C the canary uses",
    )
    control_runs: int = _spec(
        1000, "--control-runs", 10, 1_000_000, help="runs per side of the canary controls"
    )
    secure_check_runs: int = _spec(
        16, "--secure-check-runs", 0, 100_000, help="runs per side re-run through the full protocol"
    )
    # membership inference
    shadows: int = _spec(8, "--shadows", 1, 10_000, help="shadow runs of the whole pipeline")
    candidates: int = _spec(
        1024, "--candidates", 2, 10_000_000, help="samples planted as dreams (half members)"
    )
    match_labels: bool = _spec(
        True, "--no-label-matching", help="subsample non-members to the members' label mix"
    )
    # reconstruction
    inversion_images: int = _spec(32, "--inversion-images", 1, 4096)
    inversion_steps: int = _spec(
        300, "--inversion-steps", 0, 1_000_000, help="0 skips the white-box inversion"
    )
    inversion_client: int = _spec(0, "--inversion-client", 0, 100_000)
    gallery: int = _spec(12, "--gallery", 1, 200, help="closest pairs shown per gallery")
    recon_permutations: int = _spec(
        1000, "--recon-permutations", 1, 1_000_000, help="re-splits in the reconstruction null"
    )

    def resolved_canary_runs(self) -> int:
        """``--canary-runs``, or the scope's default when it was not given."""
        return self.canary_runs or DEFAULT_CANARY_RUNS[self.canary_scope]

    def needs_target(self) -> bool:
        return any(a in self.attacks for a in ("mia", "recon", "labels"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _range_text(meta: dict[str, Any]) -> str:
    left = "(" if meta["low_open"] else "["
    return f"{left}{meta['low']}, {meta['high']}]"


def validate(cfg: AuditConfig) -> AuditConfig:
    """Check every field; raises ConfigError naming the flag and the allowed values."""
    for f in fields(cfg):
        meta = f.metadata
        value = getattr(cfg, f.name)
        flag = meta["flag"]
        if f.name == "attacks":
            if not value:
                raise ConfigError(flag, f"must name at least one of {list(ATTACKS)}")
            bad = [a for a in value if a not in ATTACKS]
            if bad:
                raise ConfigError(flag, f"{bad[0]!r} is not one of {list(ATTACKS)}")
            if len(set(value)) != len(value):
                raise ConfigError(flag, f"lists an attack twice: {','.join(value)}")
            continue
        if isinstance(value, bool) or value is None:
            continue
        if meta["choices"] is not None:
            if value not in meta["choices"]:
                raise ConfigError(flag, f"must be one of {list(meta['choices'])}, got {value!r}")
            continue
        low, high = meta["low"], meta["high"]
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(flag, f"must be in {_range_text(dict(meta))}, got {value!r}")
    if cfg.canary_calibration_runs > 10 * cfg.resolved_canary_runs():
        raise ConfigError(
            "--canary-calibration-runs",
            f"must be at most 10 × --canary-runs = {10 * cfg.resolved_canary_runs()}",
        )
    return cfg


def parse_attacks(text: str) -> tuple[str, ...]:
    items = tuple(a.strip() for a in text.split(",") if a.strip())
    if not items:
        raise ConfigError("--attacks", f"must name at least one of {list(ATTACKS)}, got {text!r}")
    return items


def flag_help(name: str) -> str:
    f = next(f for f in fields(AuditConfig) if f.name == name)
    meta = f.metadata
    bits = [meta["help"]] if meta["help"] else []
    if meta["low"] is not None:
        bits.append(f"range {_range_text(dict(meta))}")
    if f.default is not None:
        default = f.default if not isinstance(f.default, tuple) else ",".join(f.default)
        bits.append(f"default {default}")
    return "; ".join(bits)
