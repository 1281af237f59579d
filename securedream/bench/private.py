"""``securedream bench private``: what secure aggregation and DP cost in accuracy, time and bytes.

Rows: plain aggregation; secure aggregation; secure aggregation + central DP and + distributed DP
at each requested ε (noise calibrated by ``target_epsilon`` over the run's releases). Every row
runs the same config and seed; only the aggregation stack differs. Round time is the sum of
the round's top-level stages; the secure-aggregation and DP-noise seconds are spent inside
dreaming and shown separately, so the share column says what secure aggregation itself costs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from securedream.config import (
    apply_overrides,
    client_dp_off,
    config_from_dict,
    config_to_dict,
)
from securedream.errors import ConfigError


def parse_epsilons(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError("--epsilons", f"must be comma-separated numbers, got {text!r}") from None
    if not values or any(not 0 < v <= 1e4 for v in values):
        raise ConfigError("--epsilons", f"each ε must be in (0, 10000], got {text!r}")
    return values


def variants(epsilons: list[float]) -> list[tuple[str, list[str]]]:
    rows: list[tuple[str, list[str]]] = [
        ("plain", ["secure_aggregation.enabled=false", 'privacy.placement="off"']),
        ("secagg", ["secure_aggregation.enabled=true", 'privacy.placement="off"']),
    ]
    for placement in ("central", "distributed"):
        for eps in epsilons:
            rows.append(
                (
                    f"secagg+dp-{placement} ε={eps:g}",
                    [
                        "secure_aggregation.enabled=true",
                        f'privacy.placement="{placement}"',
                        f"privacy.target_epsilon={eps}",
                        "privacy.noise_multiplier=0",
                    ],
                )
            )
    return rows


def run_private_bench(args: argparse.Namespace) -> int:
    from securedream.bench.progress import RunCounter
    from securedream.config_args import config_from_args
    from securedream.engines.inprocess import run_experiment

    if getattr(args, "mode", "client") == "sample":
        return _run_sample_mode(args)
    epsilons = parse_epsilons(args.epsilons)
    base = config_from_args(args)
    out_root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="securedream-private-"))
    rows: list[dict[str, Any]] = []
    counter = RunCounter(len(variants(epsilons)))
    for label, overrides in variants(epsilons):
        cfg = config_from_dict(client_dp_off(apply_overrides(config_to_dict(base), overrides)))
        folder = out_root / label.replace(" ", "_").replace("=", "").replace("+", "_")
        counter.start(label)
        summary = run_experiment(cfg, folder, progress=not args.quiet)
        counter.finish()
        stages = summary["timing"]["stage_seconds_total"]
        round_seconds = summary["timing"]["round_seconds_mean"]
        secagg = stages.get("secure_aggregation", 0.0) / summary["rounds"]
        noise = stages.get("dp_noise", 0.0) / summary["rounds"]
        rows.append(
            {
                "variant": label,
                "accuracy": summary["final_mean_accuracy"],
                "accuracy_std_clients": summary["final_std_accuracy"],
                "round_seconds": round_seconds,
                "secagg_seconds_per_round": secagg,
                "secagg_share": secagg / round_seconds if round_seconds else 0.0,
                "dp_noise_seconds_per_round": noise,
                "bytes_per_client_round": summary["bytes_per_client_round"],
                "epsilon": (summary.get("privacy") or {}).get("epsilon_total"),
                "noise_multiplier": (summary.get("privacy") or {}).get("noise_multiplier"),
                "seed": cfg.seed,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
        print(f"runs in: {out_root}")
    return 0


def _run_sample_mode(args: argparse.Namespace) -> int:
    """``--mode sample``: parse the CLI's values and hand plain values to the bench."""
    from securedream.bench.private_sample import (
        format_sample_table,
        rows_json,
        run_sample_bench,
    )
    from securedream.config_args import config_from_args

    epsilons = parse_epsilons(args.epsilons)
    ablation = [] if args.ablation.strip().lower() == "none" else parse_epsilons(args.ablation)
    if args.preset is None and args.config is None:
        args.preset = "private-demo"
    base = config_from_args(args)
    out_root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="securedream-sample-"))
    rows = run_sample_bench(
        base,
        epsilons,
        args.seeds,
        out_root,
        ablation_epsilons=ablation,
        progress_bars=not args.quiet,
    )
    if args.json:
        print(rows_json(rows))
    else:
        print(format_sample_table(rows, base))
        print(f"runs in: {out_root}")
    return 0


def format_table(rows: list[dict[str, Any]]) -> str:
    plain = next((r for r in rows if r["variant"] == "plain"), None)
    lines = [
        f"{'variant':<28} {'accuracy':>8} {'round s':>8} {'SecAgg s':>9} {'share':>6} "
        f"{'noise s':>8} {'vs plain':>8} {'MB/client/round':>15} {'z':>8} {'ε':>7}",
    ]
    for r in rows:
        overhead = f"{r['round_seconds'] / plain['round_seconds'] - 1:+.1%}" if plain else "-"
        z = f"{r['noise_multiplier']:.3g}" if r["noise_multiplier"] else "-"
        eps = f"{r['epsilon']:.3g}" if r["epsilon"] is not None else "-"
        lines.append(
            f"{r['variant']:<28} {r['accuracy']:>8.3f} {r['round_seconds']:>8.1f} "
            f"{r['secagg_seconds_per_round']:>9.2f} {r['secagg_share']:>6.1%} "
            f"{r['dp_noise_seconds_per_round']:>8.2f} {overhead:>8} "
            f"{r['bytes_per_client_round'] / 1e6:>15.2f} {z:>8} {eps:>7}"
        )
    if rows:
        lines.append(
            f"(final-round mean client test accuracy, seed {rows[0]['seed']}; SecAgg s and noise s "
            "are parts of round s)"
        )
    return "\n".join(lines)
