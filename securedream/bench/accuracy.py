"""``securedream bench accuracy``: CoDream against Independent, FedAvg and Centralized.

Every method runs on the same data, splits, initialisation seeds and evaluation; the table
reports the final-round mean ± std client test accuracy over seeds (std over seeds of the per-seed
client mean), the bytes each client sends plus receives per round, and wall time per run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from securedream.bench.progress import RunCounter
from securedream.config import METHODS, RunConfig
from securedream.errors import ConfigError

LABELS = {
    "codream": "CoDream",
    "codream-fast": "CoDream-fast",
    "independent": "Independent",
    "fedavg": "FedAvg",
    "centralized": "Centralized",
}


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise ConfigError("--methods", f"must name at least one of {list(METHODS)}")
    for m in methods:
        if m not in METHODS:
            raise ConfigError("--methods", f"{m!r} is not one of {list(METHODS)}")
    return methods


def parse_alphas(text: str | None, cfg: RunConfig) -> list[float]:
    """The heterogeneity levels to sweep: ``--alphas`` or the config's own ``data.alpha``."""
    if text is None:
        return [cfg.data.alpha]
    if cfg.data.split != "dirichlet":
        raise ConfigError(
            "--alphas", f"needs data.split = dirichlet (the config has {cfg.data.split!r})"
        )
    alphas: list[float] = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = float(part)
        except ValueError:
            raise ConfigError("--alphas", f"{part!r} is not a number") from None
        if not 0.0 < value <= 1e6:
            raise ConfigError("--alphas", f"each alpha must be in (0, 1e6], got {part}")
        alphas.append(value)
    if not alphas:
        raise ConfigError("--alphas", "must name at least one alpha")
    return alphas


def run_accuracy_bench(args: argparse.Namespace) -> int:
    from securedream.config_args import config_from_args
    from securedream.engines.inprocess import run_experiment
    from securedream.runs.folder import check_out_path

    if not 1 <= args.seeds <= 100:
        raise ConfigError("--seeds", f"must be in [1, 100], got {args.seeds}")
    methods = parse_methods(args.methods)
    base: RunConfig = config_from_args(args)
    out_root = (
        check_out_path(args.out)
        if args.out is not None
        else Path(tempfile.mkdtemp(prefix="securedream-bench-"))
    )
    alphas = parse_alphas(getattr(args, "alphas", None), base)
    rows: list[dict[str, Any]] = []
    counter = RunCounter(len(alphas) * len(methods) * args.seeds)
    for alpha in alphas:
        data = dataclasses.replace(base.data, alpha=alpha)
        for method in methods:
            accuracies, seconds, comm, seed_list = [], [], [], []
            for seed in range(args.seeds):
                cfg = dataclasses.replace(base, method=method, seed=base.seed + seed, data=data)
                tag = f"{method}-seed{cfg.seed}" + (f"-alpha{alpha:g}" if len(alphas) > 1 else "")
                counter.start(f"{method}, alpha {alpha:g}, seed {cfg.seed}")
                summary = run_experiment(cfg, out_root / tag, progress=not args.quiet)
                counter.finish()
                seed_list.append(cfg.seed)
                accuracies.append(summary["final_mean_accuracy"])
                seconds.append(summary["timing"]["seconds"])
                comm.append(summary["bytes_per_client_round"])
            rows.append(
                {
                    "method": method,
                    "alpha": alpha,
                    "accuracy_mean": statistics.fmean(accuracies),
                    "accuracy_std": statistics.pstdev(accuracies) if len(accuracies) > 1 else 0.0,
                    "accuracy_per_seed": accuracies,
                    "bytes_per_client_round": statistics.fmean(comm),
                    "seconds": statistics.fmean(seconds),
                    "seeds": args.seeds,
                    "seed_list": seed_list,
                    "preset": args.preset or ("demo" if args.config is None else args.config),
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, base))
        print(f"runs in: {out_root}")
    return 0


def format_table(rows: list[dict[str, Any]], cfg: RunConfig) -> str:
    alphas = sorted({row["alpha"] for row in rows}, reverse=True)
    shown = ", ".join(f"{a:g}" for a in alphas)
    header = (
        f"{cfg.data.dataset}, {cfg.clients.count} clients, split {cfg.data.split} "
        f"(alpha {shown}), {cfg.rounds} rounds, seeds "
        f"{', '.join(str(s) for s in rows[0]['seed_list'])}; "
        "final-round mean client test accuracy"
    )
    lines = [
        header,
        f"{'alpha':>6} {'method':<12} {'accuracy':>17} {'bytes/client/round':>19} "
        f"{'seconds/run':>12}",
    ]
    for row in rows:
        acc = f"{row['accuracy_mean']:.3f} ± {row['accuracy_std']:.3f}"
        lines.append(
            f"{row['alpha']:>6g} {LABELS[row['method']]:<12} {acc:>17} "
            f"{_human_bytes(row['bytes_per_client_round']):>19} {row['seconds']:>12.1f}"
        )
    return "\n".join(lines)


def _human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"
