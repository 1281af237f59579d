"""``securedream bench engines``: the same config on every engine, plain and secure, in one run.

Why: the cost of Flower (simulation, and deployment with real SuperLink/SuperNode processes on
localhost) is only meaningful against the in-process engine measured on the same machine at the
same time; the machine's load changes every absolute number. Each row runs ``--rounds`` rounds:

``seconds_per_round``  mean over rounds of the sum of the round's stages (``stage_seconds`` in
                       metrics.jsonl: local training, dreaming, distillation, evaluation); process
                       start-up and the first HELLO of a deployment are not in it
``round_trips``        Flower messages per client per round (``flower.messages`` / clients);
                       ``null`` in-process, where no message exists
``accuracy``           the final mean client test accuracy (every run sets
                       ``diagnostics.leak_per_client_metrics = true`` when secure, so Flower
                       reports it: a benchmark, not a protected run)
``load_1min``          the machine's 1-minute load average when the row finished

Usage::

    securedream bench engines --preset demo --rounds 1 --json
    securedream bench engines --preset smoke --engines inprocess,simulation --aggregations plain
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securedream.config import (
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    resolve_config,
)
from securedream.errors import ConfigError, SecureDreamError
from securedream.runs import RunFolder

ENGINES = ("inprocess", "simulation", "deployment")
AGGREGATIONS = ("plain", "secure")


@dataclass(frozen=True)
class EngineRow:
    engine: str
    aggregation: str
    seconds_per_round: float
    round_trips: float | None
    accuracy: float | None
    load_1min: float


def _choices(text: str, allowed: Sequence[str], flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if not names or bad:
        raise ConfigError(
            flag, f"must be a comma-separated subset of {list(allowed)}, got {text!r}"
        )
    return names


def _configure(base: RunConfig, aggregation: str, rounds: int) -> RunConfig:
    overrides = [f"rounds={rounds}", "secure_aggregation.enabled=false"]
    if aggregation == "secure":  # a plain run discloses per-client metrics anyway
        overrides[1:] = [
            "secure_aggregation.enabled=true",
            "diagnostics.leak_per_client_metrics=true",
        ]
    return config_from_dict(apply_overrides(config_to_dict(base), overrides))


def _run(engine: str, cfg: RunConfig, out: Path) -> dict[str, Any]:
    if engine == "inprocess":
        from securedream.engines.inprocess import run_experiment

        return run_experiment(cfg, out, progress=False)
    if engine == "simulation":
        from securedream.engines.flower import run_flower

        return run_flower(cfg, out, progress=False)
    from securedream.engines.flower.deploy import LocalFederation

    work = Path(tempfile.mkdtemp(prefix="sdfl", dir="/tmp"))
    try:
        with LocalFederation(work, cfg.clients.count) as fed:
            return fed.run(cfg, out)
    finally:
        for log in work.glob("*.log"):  # keep the process logs with the run
            shutil.copy(log, out.parent / f"{out.name}-{log.name}")
        shutil.rmtree(work, ignore_errors=True)


def measure(engine: str, cfg: RunConfig, out: Path, aggregation: str) -> EngineRow:
    """Run ``cfg`` on ``engine`` into ``out`` and read its row back from the run folder."""
    summary = _run(engine, cfg, out)
    records = RunFolder(out).read_metrics()
    seconds = [sum(r["stage_seconds"].values()) for r in records]
    trips = None
    if engine != "inprocess":
        trips = sum(r["flower"]["messages"] / len(r["flower"]["clients"]) for r in records)
        trips /= len(records)
    return EngineRow(
        engine=engine,
        aggregation=aggregation,
        seconds_per_round=sum(seconds) / len(seconds),
        round_trips=trips,
        accuracy=summary.get("final_mean_accuracy"),
        load_1min=os.getloadavg()[0],
    )


def run_engines_bench(
    base: RunConfig,
    out: Path,
    *,
    rounds: int = 1,
    engines: Sequence[str] = ENGINES,
    aggregations: Sequence[str] = AGGREGATIONS,
) -> list[EngineRow]:
    rows = []
    for aggregation in aggregations:
        cfg = _configure(base, aggregation, rounds)
        for engine in engines:
            rows.append(measure(engine, cfg, out / f"{engine}-{aggregation}", aggregation))
    return rows


def format_table(rows: Sequence[EngineRow]) -> str:
    lines = [
        "| engine | aggregation | s per round | round trips | accuracy | load (1 min) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        trips = "–" if r.round_trips is None else f"{r.round_trips:g}"
        acc = "–" if r.accuracy is None else f"{r.accuracy:.4f}"
        lines.append(
            f"| {r.engine} | {r.aggregation} | {r.seconds_per_round:.2f} | {trips} | {acc} "
            f"| {r.load_1min:.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="securedream bench engines", description=__doc__)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--config", metavar="FILE")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--aggregations", default=",".join(AGGREGATIONS))
    parser.add_argument("--out", metavar="DIR", help="folder for the runs (default: temp)")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args(argv)
    try:
        if not 1 <= args.rounds <= 100:
            raise ConfigError("--rounds", f"must be in [1, 100], got {args.rounds}")
        engines = _choices(args.engines, ENGINES, "--engines")
        aggregations = _choices(args.aggregations, AGGREGATIONS, "--aggregations")
        base = resolve_config(
            config_path=args.config,
            preset=None if args.config else args.preset,
            overrides=args.overrides,
        )
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sd-bench-engines-"))
        rows = run_engines_bench(
            base, out, rounds=args.rounds, engines=engines, aggregations=aggregations
        )
    except SecureDreamError as exc:
        print(f"securedream: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
