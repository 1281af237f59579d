"""``securedream audit``: run the privacy audits on a run folder or a config and write a report.

    securedream audit --run RUN_DIR --out AUDIT_DIR [--attacks canary,mia,recon,labels]
    securedream audit --preset smoke [--set KEY=VALUE ...] --out AUDIT_DIR
    securedream audit --config FILE.toml --out AUDIT_DIR --canary-runs 20000 --shadows 16

With ``--config``/``--preset`` the target run is trained first (into AUDIT_DIR/target-run) unless
only the canary audit is asked for (it needs no training). Exit status: 0 when the audit ran and
every control behaved; 2 for a bad argument (the message names it and the allowed range; nothing
is written); 3 when a control failed (the report is written, and says so at the top).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from attacks.config import (
    ATTACKS,
    CANARY_SCOPES,
    CHANNELS,
    AuditConfig,
    flag_help,
    parse_attacks,
    validate,
)
from securedream.errors import ConfigError, SecureDreamError

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_CONTROLS_FAILED = 3


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error raises instead of exiting, so main() returns 2 itself."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError("arguments", message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="securedream audit",
        description="Privacy audits of dream sharing: canary audit of the release mechanism, "
        "membership inference, reconstruction, label inference. See docs/audits.md.",
    )
    src = p.add_argument_group("what to audit (one of --run, --config, --preset)")
    src.add_argument(
        "--run", metavar="DIR", help="a finished run folder (its config and checkpoint)"
    )
    src.add_argument("--config", metavar="FILE.toml", help="a run configuration (trained first)")
    src.add_argument("--preset", metavar="NAME", help="a shipped preset (trained first)")
    src.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a run config key, as in `securedream run` (not with --run)",
    )
    p.add_argument("--out", metavar="DIR", required=True, help="audit folder to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing audit in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--threads",
        default="1",
        metavar="N",
        help="torch CPU threads (default 1: the audit's tensors are small, and more threads "
        "than free cores slow it down many times over; 0 = torch's default); range [0, 1024]",
    )
    p.add_argument("--attacks", default=",".join(ATTACKS), help=flag_help("attacks"))
    ints = (
        ("--seed", "seed"),
        ("--canary-runs", "canary_runs"),
        ("--canary-mechanism-runs", "canary_mechanism_runs"),
        ("--canary-calibration-runs", "canary_calibration_runs"),
        ("--canary-dim", "canary_dim"),
        ("--canary-releases", "canary_releases"),
        ("--control-runs", "control_runs"),
        ("--secure-check-runs", "secure_check_runs"),
        ("--shadows", "shadows"),
        ("--candidates", "candidates"),
        ("--inversion-images", "inversion_images"),
        ("--inversion-steps", "inversion_steps"),
        ("--inversion-client", "inversion_client"),
        ("--gallery", "gallery"),
        ("--recon-permutations", "recon_permutations"),
    )
    for flag, name in ints:
        p.add_argument(flag, dest=name, metavar="N", help=flag_help(name))
    p.add_argument("--confidence", dest="confidence", metavar="C", help=flag_help("confidence"))
    p.add_argument(
        "--canary-scope",
        dest="canary_scope",
        metavar="|".join(CANARY_SCOPES),
        help=flag_help("canary_scope"),
    )
    p.add_argument(
        "--canary-channel",
        dest="canary_channel",
        metavar="|".join(CHANNELS),
        help=flag_help("canary_channel"),
    )
    p.add_argument(
        "--no-label-matching",
        dest="match_labels",
        action="store_false",
        default=True,
        help="compare members with all non-members (label skew then inflates the loss attack)",
    )
    return p


def _number(flag: str, text: str | None, kind: type) -> int | float | None:
    if text is None:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(
            flag, f"must be {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None
    return value


def audit_config_from_args(args: argparse.Namespace) -> AuditConfig:
    values: dict[str, object] = {
        "attacks": parse_attacks(args.attacks),
        "match_labels": args.match_labels,
    }
    for name in (
        "seed",
        "canary_runs",
        "canary_mechanism_runs",
        "canary_calibration_runs",
        "canary_dim",
        "canary_releases",
        "control_runs",
        "secure_check_runs",
        "shadows",
        "candidates",
        "inversion_images",
        "inversion_steps",
        "inversion_client",
        "gallery",
        "recon_permutations",
    ):
        flag = "--" + name.replace("_", "-")
        value = _number(flag, getattr(args, name), int)
        if value is not None:
            values[name] = value
    conf = _number("--confidence", args.confidence, float)
    if conf is not None:
        values["confidence"] = conf
    if args.canary_channel is not None:
        values["canary_channel"] = args.canary_channel
    if args.canary_scope is not None:
        values["canary_scope"] = args.canary_scope
    return validate(AuditConfig(**values))  # type: ignore[arg-type]


def _check_sources(args: argparse.Namespace) -> None:
    given = [
        f
        for f, v in (("--run", args.run), ("--config", args.config), ("--preset", args.preset))
        if v
    ]
    if len(given) > 1:
        raise ConfigError(
            given[1], f"give one of --run, --config, --preset (got {', '.join(given)})"
        )
    if args.run and args.overrides:
        raise ConfigError(
            "--set", "cannot be combined with --run: a finished run is audited as it was trained"
        )
    if args.run and not (Path(args.run) / "config.toml").is_file():
        raise ConfigError("--run", f"{args.run} is not a run folder (no config.toml)")
    from securedream.runs.folder import check_out_path

    out = check_out_path(args.out)
    if (out / "audit.json").exists() and not args.force:
        raise ConfigError(
            "--out", f"{out} already holds an audit; choose another folder or pass --force"
        )


def _resolve(args: argparse.Namespace, audit: AuditConfig):  # type: ignore[no-untyped-def]
    """The run config to audit; all checks that need it happen here, before anything runs."""
    from attacks.membership.targets import require_codream
    from securedream.config import resolve_config
    from securedream.runs import RunFolder

    if args.run:
        cfg = RunFolder(args.run).load_config()
    else:
        preset = args.preset or ("demo" if args.config is None else None)
        cfg = resolve_config(config_path=args.config, preset=preset, overrides=args.overrides)
        existing = Path(args.out) / "target-run" / "config.toml"
        if audit.needs_target() and existing.exists() and not args.force:
            raise ConfigError(
                "--out", f"{existing.parent} already holds a run; pass --force or another --out"
            )
    require_codream(cfg)
    inverts = "recon" in audit.attacks and audit.inversion_steps > 0
    if inverts and audit.inversion_client >= cfg.clients.count:
        raise ConfigError(
            "--inversion-client",
            f"must be in [0, {cfg.clients.count - 1}] for this run, got {audit.inversion_client}",
        )
    return cfg


def audit_plan(audit: AuditConfig, cfg: object, run_dir: str | None) -> str:
    """The stages the audit will run, in order, with their size and what time to expect.

    Shadow training dominates: each shadow is a whole run of the target's config, so the target
    run's own wall time (from its summary.json, when there is one) times the shadow count is the
    honest estimate.
    """
    import json

    target_seconds = None
    if run_dir is not None and (Path(run_dir) / "summary.json").is_file():
        summary = json.loads((Path(run_dir) / "summary.json").read_text("utf-8"))
        target_seconds = float(summary.get("timing", {}).get("seconds", 0.0)) or None
    per_run = (
        f"about {target_seconds:.0f} s each, as the target run took"
        if target_seconds
        else "each about as long as the target run"
    )
    lines = ["audit stages:"]
    if audit.needs_target() and run_dir is None:
        lines.append(f"  train the target run ({cfg.rounds} rounds) into --out/target-run")  # type: ignore[attr-defined]
    if "canary" in audit.attacks:
        runs = 2 * (audit.canary_runs + audit.canary_calibration_runs)
        lines.append(f"  canary: {runs} mechanism runs, 85-500 µs each (see docs/audits.md)")
    if "mia" in audit.attacks:
        total = f", ≈ {audit.shadows * target_seconds / 60:.0f} min" if target_seconds else ""
        lines.append(f"  membership inference: {audit.shadows} shadow runs ({per_run}){total}")
    if "recon" in audit.attacks:
        lines.append(
            f"  reconstruction: DeepInversion {audit.inversion_images} images × "
            f"{audit.inversion_steps} steps, nearest training images"
        )
    if "labels" in audit.attacks:
        lines.append("  label inference from the dreams' soft labels")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        _check_sources(args)
        audit = audit_config_from_args(args)
        threads = _number("--threads", args.threads, int)
        if threads is None or not 0 <= threads <= 1024:
            raise ConfigError("--threads", f"must be in [0, 1024], got {args.threads!r}")
        cfg = _resolve(args, audit)
    except SecureDreamError as exc:
        print(f"securedream audit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    from attacks.audit import run_audit
    from attacks.report.write import write_report

    if threads:
        import torch

        torch.set_num_threads(threads)
    out = Path(args.out)
    if not args.quiet:
        print(audit_plan(audit, cfg, args.run), file=sys.stderr)
    try:
        if args.force and not args.run and (out / "target-run").exists():
            import shutil

            shutil.rmtree(out / "target-run")
        results = run_audit(
            audit,
            cfg=None if args.run else cfg,
            run_dir=args.run,
            out=out,
            progress=not args.quiet,
        )
    except SecureDreamError as exc:
        print(f"securedream audit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        where = exc.filename if exc.filename is not None else out
        print(f"securedream audit: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            f"securedream audit: interrupted; partial results in {out} are incomplete, run the "
            "same command with --force to start the audit again",
            file=sys.stderr,
        )
        return 130
    files = write_report(results, out)
    print(summary_lines(results))
    print(
        f"audit folder: {out} "
        f"({files['json'].name}, {files['markdown'].name}, {files['html'].name})"
    )
    if results["status"] != "ok":
        print(
            "securedream audit: CONTROLS FAILED: "
            + ", ".join(results["failed_controls"])
            + " — the figures cannot be trusted (see the report)",
            file=sys.stderr,
        )
        return EXIT_CONTROLS_FAILED
    return EXIT_OK


def summary_lines(results: dict) -> str:
    from attacks.report.document import interval, num
    from attacks.report.json_report import get

    lines = []
    if "canary" in results:
        c = results["canary"]
        theory = "∞" if c["eps_theory"] is None else num(c["eps_theory"])
        lines.append(
            f"canary ({c.get('scope', 'release')} scope, adversary "
            f"{c.get('adversary') or 'none'}): ε ≥ {num(c['eps_lower_bound'])} (theory {theory}, "
            f"ceiling {num(c['eps_ceiling'])}, {c['runs']} runs/side, {c['confidence']:.0%})"
        )
    if "mia" in results:
        for rel in ("own", "cross"):
            m = get(results, f"mia.models.{rel}.attacks.lira_online")
            if m:
                lines.append(
                    f"MIA models ({rel}), LiRA online: AUC {interval(m['auc'])}, TPR@1%FPR "
                    f"{interval(m['tpr_at_fpr']['0.01'])}"
                )
        m = get(results, "mia.dreams.attacks.lira_online")
        if m:
            lines.append(
                f"MIA dreams, LiRA online: AUC {interval(m['auc'])}, "
                f"TPR@1%FPR {interval(m['tpr_at_fpr']['0.01'])}"
            )
    if "recon" in results:
        g = results["recon"]["dreams"]
        lines.append(
            f"reconstruction: median gap L2 {num(g['gap_l2']['median'])}, share closer to training "
            f"{num(g['closer_to_train']['value'])} (permutation p = "
            f"{num(g['closer_to_train']['permutation']['p_value'])})"
        )
    if "labels" in results:
        lab = results["labels"]
        lines.append(
            f"label inference: presence accuracy {num(lab['estimated']['presence_accuracy'])} "
            f"(uniform guess {num(lab['reference_uniform_guess']['presence_accuracy'])})"
        )
    lines.append(f"controls: {'all passed' if results['status'] == 'ok' else 'FAILED'}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
