"""``securedream bench speed``: where a round's time goes, on the device you name.

Four measurements, each printed as one JSON object with ``--json`` (else a short table):

* ``--preset P [--device D]``: one round (or ``--rounds``) of the preset with the in-process engine:
  median dream-step time, local-training and distillation seconds, and the share of the round spent
  in secure aggregation (when the preset enables it): its critical-path milliseconds per
  aggregation and the CPU seconds done ahead in the worker thread. Same command on CPU and GPU, so
  the figures are comparable; ``--no-pipeline`` runs secure aggregation serially (the reference).
* ``--secagg-step``: secure aggregation alone, ``--clients`` n, ``--dim`` d, ``--steps`` S, with
  a stand-in for the dream step's computation of ``--gap-ms`` between aggregations (torch
  matrix products, which release the GIL as a real step does), serial and pipelined: wall and
  main-thread CPU milliseconds per aggregation on the critical path.
* ``--population``: a ``clients.population`` run of ``--clients`` clients with ``--samples`` each,
  sampling rate ``--rate``, ``--rounds`` rounds of the smoke dream settings; wall time and peak
  resident memory (``resource.getrusage``).
* ``--cohorts 4,100``: one dream-gradient step of a sampled cohort of each size, all clients of one
  architecture, batched with ``torch.func``; time per step and the ratio to the smallest cohort
  (``--loop`` also times the per-client loop the in-process engine runs).

Every result carries the machine's load average and thread count: on a shared machine a figure
means little without them.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch

from securedream.config import resolve_config
from securedream.errors import ConfigError


def _machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        info["card"] = torch.cuda.get_device_name(device)
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _secure_aggregator(aggregator: object) -> Any:
    """The SecureAggregator of a run's stack (inside a DP wrapper, if any), or None."""
    from securedream.aggregation.secure import SecureAggregator

    while aggregator is not None and not isinstance(aggregator, SecureAggregator):
        aggregator = getattr(aggregator, "inner", None)
    return aggregator


def preset_speed(
    preset: str, overrides: Sequence[str], rounds: int, pipeline: bool = True
) -> dict[str, Any]:
    """Stage times of ``rounds`` in-process rounds of ``preset`` (after config overrides)."""
    from securedream.engines.inprocess import run_one_round
    from securedream.rounds.experiment import Experiment

    cfg = resolve_config(preset=preset, overrides=list(overrides))
    if cfg.method != "codream" or cfg.clients.population:
        raise ConfigError("preset", "bench speed --preset measures in-process CoDream presets")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    exp = Experiment(cfg)
    secure = _secure_aggregator(exp.aggregator)
    if secure is not None and not pipeline:
        secure.settings = dataclasses.replace(secure.settings, pipeline=False)
    marks: list[float] = []

    def on_step(_step: int) -> None:
        _sync(exp.device)
        marks.append(time.perf_counter())

    records = []
    steps: list[float] = []  # intervals between consecutive dream steps of one round
    aggregations = 0
    for r in range(rounds):
        marks.clear()
        _sync(exp.device)
        before = len(secure.survivors_log) if secure is not None else 0
        records.append(run_one_round(exp, r, on_step))
        aggregations += (len(secure.survivors_log) - before) if secure is not None else 0
        steps += [b - a for a, b in itertools.pairwise(marks)]
    if secure is not None:
        secure.close()
    totals: dict[str, float] = {}
    for rec in records:
        for stage, seconds in rec["stage_seconds"].items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    wall = sum(v for k, v in totals.items() if k not in ("secure_aggregation", "dp_noise"))
    return {
        "preset": preset,
        "overrides": list(overrides),
        "rounds": rounds,
        "clients": cfg.clients.count,
        "dream_batch": cfg.dreams.batch_size,
        "dream_step_ms_median": 1e3 * statistics.median(steps) if steps else None,
        "local_training_s_per_round": totals.get("local_training", 0.0) / rounds,
        "distillation_s_per_round": totals.get("distillation", 0.0) / rounds,
        "dreaming_s_per_round": totals.get("dreaming", 0.0) / rounds,
        "secure_aggregation_s_per_round": totals.get("secure_aggregation", 0.0) / rounds,
        "secure_aggregation_share": totals.get("secure_aggregation", 0.0) / wall if wall else 0.0,
        # critical path per aggregation, and the CPU seconds the worker thread did ahead
        "secure_aggregation_ms_per_aggregation": (
            1e3 * totals.get("secure_aggregation", 0.0) / aggregations if aggregations else None
        ),
        "secure_aggregation_ahead_cpu_s_per_round": (
            secure.ahead_seconds / rounds if secure is not None else None
        ),
        "secure_aggregation_pipeline": bool(secure is not None and secure.settings.pipeline),
        "aggregations_per_round": aggregations / rounds,
        "compute": {"autocast": cfg.compute.autocast, "channels_last": cfg.compute.channels_last},
        "round_s": wall / rounds,
        **_machine(exp.device),
    }


def population_speed(
    clients: int, samples: int, rate: float, rounds: int, dataset: str, overrides: Sequence[str]
) -> dict[str, Any]:
    """Wall time and peak memory of a sampled population run with the smoke dream settings."""
    from securedream.population.run import run_population
    from securedream.rounds.experiment import resolve_device

    cfg = resolve_config(
        preset="smoke",
        overrides=[
            f"clients.count={clients}",
            "clients.population=true",
            f"clients.sample_rate={rate}",
            f"data.samples_per_client={samples}",
            f'data.dataset="{dataset}"',
            f"rounds={rounds}",
            "output.checkpoint=false",
            *overrides,
        ],
    )
    load_before = list(os.getloadavg())
    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = before.ru_utime + before.ru_stime
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        summary = run_population(cfg, out)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "clients": clients,
        "samples_per_client": samples,
        "sample_rate": rate,
        "sampling": cfg.clients.sampling,
        "rounds": rounds,
        "dataset": dataset,
        "models": cfg.clients.models,
        "wall_s": wall,
        "build_s": summary["timing"]["build_seconds"],
        "stage_seconds_total": summary["timing"]["stage_seconds_total"],
        "peak_rss_mb": usage.ru_maxrss / 1024,
        # CPU seconds of this process: on a shared machine, wall time / cpu time shows contention
        "cpu_s": usage.ru_utime + usage.ru_stime - cpu_before,
        "final_mean_accuracy": summary["final_mean_accuracy"],
        "eval_clients": summary["eval_clients"],
        "loadavg_before": load_before,
        **_machine(resolve_device(cfg.device)),
    }


def cohort_speed(
    cohorts: Sequence[int],
    model: str,
    device: torch.device,
    repeats: int,
    dream_batch: int,
    loop: bool = False,
) -> dict[str, Any]:
    """Median seconds of one batched dream-gradient step for cohorts of the given sizes."""
    from securedream.dreams import DreamLossWeights
    from securedream.models import build_model
    from securedream.population.stacked import StackedGroup

    largest = max(cohorts)
    models = [
        build_model(model, in_channels=1, num_classes=10, image_size=28, seed=k)
        for k in range(largest)
    ]
    group = StackedGroup(models, device)
    weights = DreamLossWeights(bn=0.1, diversity=1.0)
    dreams = torch.randn(dream_batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    dreams = dreams.to(device)
    result: dict[str, Any] = {"model": model, "dream_batch": dream_batch, "repeats": repeats}
    times = {}
    for size in cohorts:
        rows = torch.arange(size)
        group.dream_gradients(rows, dreams, weights)  # warm-up
        samples = []
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            group.dream_gradients(rows, dreams, weights)
            _sync(device)
            samples.append(time.perf_counter() - t)
        times[size] = statistics.median(samples)
    if loop:  # the per-client path the in-process engine takes: one CoDreamClient call each
        from securedream.rounds.client import CoDreamClient, LocalTrainingConfig

        training = LocalTrainingConfig(lr=0.01, momentum=0.9, weight_decay=0.0, batch_size=32)
        empty = torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)
        clients = [CoDreamClient(k, m, *empty, training, device) for k, m in enumerate(models)]
        loop_times = {}
        for size in cohorts:
            samples = []
            for _ in range(repeats):
                _sync(device)
                t = time.perf_counter()
                for client in clients[:size]:
                    client.dream_gradient(dreams, weights)
                _sync(device)
                samples.append(time.perf_counter() - t)
            loop_times[size] = statistics.median(samples)
        result["loop_step_ms"] = {str(k): 1e3 * v for k, v in loop_times.items()}
    smallest = min(cohorts)
    result["step_ms"] = {str(k): 1e3 * v for k, v in times.items()}
    result["ratio_to_smallest"] = {str(k): v / times[smallest] for k, v in times.items()}
    result.update(_machine(device))
    return result


def secagg_step_speed(
    clients: int, dim: int, steps: int, gap_ms: float, seed: int = 0
) -> dict[str, Any]:
    """Critical-path cost of one secure aggregation, serial and pipelined.

    Between aggregations the main thread computes for ``gap_ms`` (float32 matrix products, which
    release the GIL like a dream step's kernels), as the dream step does while the worker
    prepares the next masks. Medians over steps 3..S (the first ones set the session up).
    """
    from securedream.aggregation import Channel
    from securedream.aggregation.secure import SecureAggregationSettings, SecureAggregator

    g = torch.Generator().manual_seed(seed)
    contributions = {c: torch.rand(dim, generator=g) * 2 - 1 for c in range(clients)}
    work = torch.randn(192, 192, generator=g)

    def compute(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            work @ work

    result: dict[str, Any] = {
        "clients": clients,
        "dim": dim,
        "steps": steps,
        "gap_ms": gap_ms,
        "loadavg_before": list(os.getloadavg()),
    }
    for pipeline in (False, True):
        agg = SecureAggregator(
            clients, SecureAggregationSettings(ranges={"dream": 1.0}, seed=seed, pipeline=pipeline)
        )
        wall, cpu = [], []
        agg.start_round(0, list(range(clients)))
        for step in range(steps):
            compute(gap_ms / 1e3)
            t, c = time.perf_counter(), time.thread_time()
            agg.aggregate(contributions, channel=Channel.DREAM_GRADIENT, step=step)
            cpu.append(time.thread_time() - c)
            wall.append(time.perf_counter() - t)
        agg.end_round()
        agg.close()
        steady = slice(2, None) if steps > 3 else slice(None)
        name = "pipelined" if pipeline else "serial"
        result[name] = {
            "critical_path_ms_median": 1e3 * statistics.median(wall[steady]),
            "critical_path_ms_min": 1e3 * min(wall[steady]),
            "main_thread_cpu_ms_median": 1e3 * statistics.median(cpu[steady]),
            "first_aggregation_ms": 1e3 * wall[0],
            "ahead_cpu_ms_per_aggregation": 1e3 * agg.ahead_seconds / steps,
        }
    result["speedup_median"] = (
        result["serial"]["critical_path_ms_median"] / result["pipelined"]["critical_path_ms_median"]
    )
    result.update(_machine(torch.device("cpu")))
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="securedream bench speed", description=__doc__.split("\n")[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--preset", metavar="NAME", help="in-process CoDream preset to time")
    what.add_argument("--population", action="store_true", help="sampled population run")
    what.add_argument("--cohorts", metavar="M,M", help="cohort sizes for one batched dream step")
    what.add_argument(
        "--secagg-step", action="store_true", help="secure aggregation alone: serial vs pipelined"
    )
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    p.add_argument("--rounds", type=int, default=1, help="rounds to time (default 1)")
    p.add_argument("--clients", type=int, default=None, help="population 1000, secagg 4")
    p.add_argument("--dim", type=int, default=100_352, help="--secagg-step: vector length")
    p.add_argument("--steps", type=int, default=30, help="--secagg-step: aggregations")
    p.add_argument("--gap-ms", type=float, default=20.0, help="--secagg-step: compute between")
    p.add_argument(
        "--no-pipeline", action="store_true", help="--preset: secure aggregation serially"
    )
    p.add_argument("--samples", type=int, default=4, help="samples per client (population)")
    p.add_argument("--rate", type=float, default=0.1, help="sampling rate q (population)")
    p.add_argument("--dataset", default="mnist5k", help="population dataset (default mnist5k)")
    p.add_argument("--model", default="cnn-bn", help="architecture for --cohorts")
    p.add_argument("--dream-batch", type=int, default=32, help="dreams per step for --cohorts")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--loop", action="store_true", help="--cohorts: also time the per-client loop")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f'device="{args.device}"')
    try:
        if args.rounds < 1 or args.repeats < 1:
            raise ConfigError("--rounds/--repeats", "must be >= 1")
        if args.preset:
            result = preset_speed(args.preset, overrides, args.rounds, not args.no_pipeline)
        elif args.population:
            if not 0 < args.rate <= 1:
                raise ConfigError("--rate", f"must be in (0, 1], got {args.rate}")
            clients = 1000 if args.clients is None else args.clients
            result = population_speed(
                clients, args.samples, args.rate, args.rounds, args.dataset, overrides
            )
        elif args.secagg_step:
            clients = 4 if args.clients is None else args.clients
            if not 2 <= clients <= 1000:
                raise ConfigError("--clients", f"must be in [2, 1000], got {clients}")
            if not 1 <= args.dim <= 10_000_000:
                raise ConfigError("--dim", f"must be in [1, 10000000], got {args.dim}")
            if not 1 <= args.steps <= 10_000:
                raise ConfigError("--steps", f"must be in [1, 10000], got {args.steps}")
            if not 0 <= args.gap_ms <= 60_000:
                raise ConfigError("--gap-ms", f"must be in [0, 60000], got {args.gap_ms}")
            result = secagg_step_speed(clients, args.dim, args.steps, args.gap_ms)
        else:
            try:
                cohorts = [int(v) for v in args.cohorts.split(",")]
            except ValueError as exc:
                raise ConfigError("--cohorts", "comma-separated positive integers") from exc
            if not cohorts or min(cohorts) < 1:
                raise ConfigError("--cohorts", "comma-separated positive integers")
            from securedream.rounds.experiment import resolve_device

            device = resolve_device(args.device or "cpu")
            result = cohort_speed(
                cohorts, args.model, device, args.repeats, args.dream_batch, args.loop
            )
    except ConfigError as exc:
        print(f"securedream bench speed: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for key, value in sorted(result.items()):
            print(f"{key:32s} {value}")
    return 0
