"""Runs the requested audits on a run (or on a config, training the target run first).

``run_audit`` returns one nested dict: every figure with its interval and parameters (what
audit.json holds), plus arrays under ``_``-prefixed keys for the plots. Controls are collected
under ``controls`` and summarised in ``status`` / ``failed_controls``.
"""

from __future__ import annotations

import importlib.metadata
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from attacks.canary import CanarySettings, run_canary_audit
from attacks.config import AuditConfig
from attacks.controls import (
    canary_controls,
    failed_controls,
    mia_negative_control,
    mia_positive_control,
)
from attacks.membership.audit import MembershipSettings, run_membership_audit, train_shadows
from attacks.membership.targets import load_target, require_codream
from attacks.reconstruction.audit import (
    ReconstructionSettings,
    reconstruction_controls,
    run_reconstruction_audit,
)
from attacks.reconstruction.inversion import InversionSettings
from attacks.reconstruction.labels import label_inference
from securedream.config import RunConfig, apply_overrides, config_from_dict, config_to_dict


@contextmanager
def _bar(total: int, desc: str, enabled: bool) -> Iterator[Any]:
    bar = tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, file=sys.stderr)
    try:
        yield bar.update
    finally:
        bar.close()


def versions() -> dict[str, str]:
    out = {}
    for name in ("securedream", "torch", "opacus", "numpy", "scipy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def canary_settings(audit: AuditConfig) -> CanarySettings:
    return CanarySettings(
        runs=audit.resolved_canary_runs(),
        calibration_runs=audit.canary_calibration_runs,
        dim=audit.canary_dim,
        releases=audit.canary_releases,
        confidence=audit.confidence,
        seed=audit.seed,
        channel=audit.canary_channel,
        secure_check_runs=audit.secure_check_runs,
        scope=audit.canary_scope,
        mechanism_runs=audit.canary_mechanism_runs or 0,
    )


def run_audit(
    audit: AuditConfig,
    *,
    cfg: RunConfig | None = None,
    run_dir: str | Path | None = None,
    out: str | Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Audit ``run_dir`` (a finished run) or ``cfg`` (trained into ``out/target-run`` if needed)."""
    if (cfg is None) == (run_dir is None):
        raise ValueError("give exactly one of cfg or run_dir")
    out = Path(out)
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    results: dict[str, Any] = {"attacks": list(audit.attacks), "controls": {}}
    if run_dir is not None:
        from securedream.runs import RunFolder

        cfg = RunFolder(run_dir).load_config()
    assert cfg is not None
    require_codream(cfg)
    torch.manual_seed(audit.seed)  # nothing should read it; fixed anyway for reproducibility

    universe = target = exp = None
    if audit.needs_target():
        if run_dir is None:
            from securedream.engines.inprocess import run_experiment

            run_dir = out / "target-run"
            t0 = time.perf_counter()
            # the audits need the trained models and dreams: always checkpoint the target
            cfg = config_from_dict(apply_overrides(config_to_dict(cfg), ["output.checkpoint=true"]))
            run_experiment(cfg, run_dir, progress=progress)
            seconds["target_run"] = time.perf_counter() - t0
        universe, target, exp = load_target(run_dir)
        results["target_run"] = _target_summary(run_dir)
        results["_universe_pixels"] = universe.pixels()
    results["source"] = {"run": str(run_dir) if run_dir is not None else None}

    if "canary" in audit.attacks:
        t0 = time.perf_counter()
        settings = canary_settings(audit)
        if settings.scope == "run":
            total = 2 * (settings.runs + (settings.mechanism_runs or 50))
        else:
            total = 2 * (settings.runs + settings.calibration_runs)
        with _bar(total, "canary runs", progress) as step:
            canary = run_canary_audit(cfg, settings, progress=step)
        with _bar(6 * audit.control_runs, "canary controls", progress) as step:
            controls = canary_controls(cfg, settings, audit.control_runs, step)
        if canary["noise_check"] is not None:
            controls["noise_check"] = {
                "expected": (
                    "per-coordinate noise of the real releases not below the noise the engine "
                    "logs and accounts for"
                    if settings.scope == "run"
                    else "OUT-score spread not below the noise the engine accounts for"
                ),
                **canary["noise_check"],
            }
        if canary.get("signal_check") is not None:
            controls["signal_check"] = canary["signal_check"]
        if canary["secure_identity"] is not None:
            controls["secure_identity"] = {
                "expected": "releases bit-identical to the full secure aggregation protocol's",
                **canary["secure_identity"],
                "passed": bool(canary["secure_identity"]["identical"]),
            }
        results["canary"] = canary
        results["controls"]["canary"] = controls
        seconds["canary"] = time.perf_counter() - t0

    if "mia" in audit.attacks:
        assert universe is not None and target is not None and exp is not None
        t0 = time.perf_counter()
        mia_settings = MembershipSettings(
            shadows=audit.shadows,
            candidates=audit.candidates,
            confidence=audit.confidence,
            seed=audit.seed,
            match_labels=audit.match_labels,
        )
        with _bar(audit.shadows * cfg.rounds, "shadow rounds", progress) as step:
            shadows = train_shadows(
                target.cfg, universe, len(exp.shards[0].indices), mia_settings, step
            )
        seconds["shadows"] = time.perf_counter() - t0
        results["mia"] = run_membership_audit(universe, target, shadows, mia_settings)
        results["mia"]["shadow_seconds_each"] = seconds["shadows"] / max(1, audit.shadows)
        results["controls"]["mia"] = {
            "positive": mia_positive_control(
                universe, target, seed=audit.seed, confidence=audit.confidence
            ),
            "negative": mia_negative_control(universe, target, seed=audit.seed),
        }
        seconds["mia"] = time.perf_counter() - t0

    if "recon" in audit.attacks:
        assert universe is not None and target is not None
        t0 = time.perf_counter()
        if audit.inversion_steps > 0 and audit.inversion_client >= cfg.clients.count:
            from securedream.errors import ConfigError

            raise ConfigError(
                "--inversion-client", f"must be in [0, {cfg.clients.count - 1}] for this run"
            )
        recon_settings = ReconstructionSettings(
            confidence=audit.confidence,
            seed=audit.seed,
            gallery=audit.gallery,
            permutations=audit.recon_permutations,
            inversion=InversionSettings(
                images=audit.inversion_images,
                steps=audit.inversion_steps,
                client=audit.inversion_client,
                seed=audit.seed,
            ),
            run_inversion=audit.inversion_steps > 0,
        )
        results["recon"] = run_reconstruction_audit(universe, target, recon_settings)
        results["controls"]["recon"] = reconstruction_controls(universe, target, recon_settings)
        seconds["recon"] = time.perf_counter() - t0

    if "labels" in audit.attacks:
        assert universe is not None and target is not None
        t0 = time.perf_counter()
        results["labels"] = label_inference(target, universe.num_classes, audit.seed)
        seconds["labels"] = time.perf_counter() - t0

    failed = failed_controls(results)
    results["failed_controls"] = failed
    results["status"] = "controls_failed" if failed else "ok"
    seconds["total"] = time.perf_counter() - started
    results["seconds"] = seconds
    results["config"] = config_to_dict(cfg)
    results["audit_settings"] = audit.to_dict()
    results["versions"] = versions()
    return results


def _target_summary(run_dir: str | Path) -> dict[str, Any]:
    import json

    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return {"path": str(run_dir)}
    summary = json.loads(path.read_text("utf-8"))
    keep = (
        "final_mean_accuracy",
        "final_std_accuracy",
        "final_client_accuracy",
        "rounds",
        "privacy",
    )
    return {"path": str(run_dir), **{k: summary.get(k) for k in keep}}
