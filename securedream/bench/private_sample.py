"""``securedream bench private --mode sample``: private CoDream against private baselines.

Every client trains with DP-SGD calibrated so that its whole run (every DP-SGD step and, for
CoDream with feature statistics, every feature-statistics release) spends the same per-client ε at
the config's δ. Rows: CoDream, Independent and FedAvg (the homogeneous ``baselines.fedavg_model``,
its clients trained with DP-SGD too) at each ε, the same three without DP (ε = null), and an
ablation of CoDream with the DP feature-statistics term flipped. Every row runs the same seeds, data
splits and model initialisations (and, with ``public.dataset``, the same public pre-training); only
the method and the privacy settings differ. The first ε given runs first, for every seed, together
with the non-private rows; then the other ε seed by seed. Each finished run is appended to
``runs.jsonl`` in the output folder, so a bench stopped early has every seed of the first ε (the
headline) and the same seeds of the others.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from securedream.config import (
    RunConfig,
    apply_overrides,
    client_dp_off,
    config_from_dict,
    config_to_dict,
)
from securedream.errors import ConfigError

SAMPLE_METHODS = ("codream", "independent", "fedavg")


@dataclass(frozen=True)
class SampleVariant:
    """One row of the table: a method at one ε (None = no DP), feature statistics on or off."""

    method: str
    epsilon: float | None
    feature_stats: bool

    def overrides(self, base: RunConfig) -> list[str]:
        """``base`` with this row's method and privacy; the feature-statistics noise is scaled as
        z_f · ε_base / ε so that the feature releases take about the same share of every ε."""
        sets = [
            f'method="{self.method}"',
            f"privacy.feature_stats={str(self.feature_stats).lower()}",
        ]
        if self.epsilon is None:
            return [*sets, "privacy.sample_level=false"]
        p = base.privacy
        reference = p.sample_target_epsilon or 4.0
        feature_z = p.feature_noise_multiplier * reference / self.epsilon
        return [
            *sets,
            "privacy.sample_level=true",
            f"privacy.sample_target_epsilon={self.epsilon}",
            f"privacy.feature_noise_multiplier={feature_z}",
        ]

    @property
    def label(self) -> str:
        eps = "no DP" if self.epsilon is None else f"ε={self.epsilon:g}"
        fs = "" if self.method != "codream" else (" +fs" if self.feature_stats else " -fs")
        return f"{self.method}{fs} {eps}"


@dataclass
class SampleBenchRow:
    """What ``--json`` prints per row (mean and std over seeds; std is the population std)."""

    method: str
    epsilon: float | None
    feature_stats: bool | None
    accuracy_mean: float
    accuracy_std: float
    accuracy_per_seed: list[float]
    seconds: float
    epsilon_prv: float | None = None
    epsilon_rdp: float | None = None
    noise_multiplier: float | None = None
    feature_noise_multiplier: float | None = None
    seeds: list[int] = field(default_factory=list)


def plan_variants(
    epsilons: Sequence[float],
    *,
    feature_stats: bool,
    ablation_epsilons: Sequence[float],
    methods: Sequence[str] = SAMPLE_METHODS,
) -> list[SampleVariant]:
    """Private rows at each ε, the non-private rows, then the feature-statistics ablation."""
    for m in methods:
        if m not in SAMPLE_METHODS:
            raise ConfigError("--methods", f"{m!r} is not one of {list(SAMPLE_METHODS)}")
    for e in ablation_epsilons:
        if e not in epsilons:
            raise ConfigError("--ablation", f"ε = {e:g} is not one of --epsilons {list(epsilons)}")
    rows = [
        SampleVariant(m, eps, feature_stats if m == "codream" else False)
        for eps in [*epsilons, None]
        for m in methods
    ]
    if "codream" in methods:
        rows += [SampleVariant("codream", e, not feature_stats) for e in ablation_epsilons]
    return rows


class _Progress:
    """'run k of n' lines with an ETA from each method's mean run time so far."""

    def __init__(self, planned: Sequence[str], stream: Any = None) -> None:
        self.planned = list(planned)
        self.stream = stream if stream is not None else sys.stderr
        self.seconds: dict[str, list[float]] = {}
        self.done = 0

    def start(self, label: str) -> None:
        left = self.planned[self.done :]
        done = [s for times in self.seconds.values() for s in times]
        if done:
            fallback = statistics.fmean(done)
            eta = sum(
                statistics.fmean(self.seconds[m]) if m in self.seconds else fallback for m in left
            )
            tail = f"; about {eta / 60:.1f} min left"
        else:
            tail = ""
        print(f"run {self.done + 1} of {len(self.planned)}: {label}{tail}", file=self.stream)
        self.stream.flush()

    def finish(self, method: str, seconds: float) -> None:
        self.seconds.setdefault(method, []).append(seconds)
        self.done += 1


def run_sample_bench(
    base: RunConfig,
    epsilons: Sequence[float],
    seeds: int,
    out_root: Path,
    *,
    ablation_epsilons: Sequence[float] = (),
    methods: Sequence[str] = SAMPLE_METHODS,
    progress_bars: bool = False,
    run: Callable[..., dict[str, Any]] | None = None,
) -> list[SampleBenchRow]:
    """Run every (variant, seed) of the table; returns one row per variant, in plan order."""
    if run is None:
        from securedream.engines.inprocess import run_experiment as run
    if not 1 <= seeds <= 100:
        raise ConfigError("--seeds", f"must be in [1, 100], got {seeds}")
    variants = plan_variants(
        epsilons,
        feature_stats=base.privacy.feature_stats,
        ablation_epsilons=ablation_epsilons,
        methods=methods,
    )
    configs = [
        (
            v,
            config_from_dict(
                client_dp_off(apply_overrides(config_to_dict(base), v.overrides(base)))
            ),
        )
        for v in variants
    ]

    def first(v: SampleVariant) -> bool:
        return v.epsilon is None or v.epsilon == epsilons[0]

    # the first ε (with the non-private rows) for every seed, then the other ε seed by seed
    jobs = [(v, cfg, base.seed + s) for s in range(seeds) for v, cfg in configs if first(v)]
    jobs += [(v, cfg, base.seed + s) for s in range(seeds) for v, cfg in configs if not first(v)]
    progress = _Progress([v.method for v, _, _ in jobs])
    out_root.mkdir(parents=True, exist_ok=True)
    log = out_root / "runs.jsonl"
    results: dict[SampleVariant, list[dict[str, Any]]] = {v: [] for v in variants}
    for variant, cfg, seed in jobs:
        cfg = config_from_dict(apply_overrides(config_to_dict(cfg), [f"seed={seed}"]))
        progress.start(f"{variant.label}, seed {seed}")
        name = variant.label.replace(" ", "_").replace("=", "").replace("+", "p")
        started = time.perf_counter()
        summary = run(cfg, out_root / f"{name}-seed{seed}", progress=progress_bars)
        seconds = time.perf_counter() - started
        progress.finish(variant.method, seconds)
        sample = _sample_level(out_root / f"{name}-seed{seed}")
        record = {
            "method": variant.method,
            "epsilon": variant.epsilon,
            "feature_stats": variant.feature_stats,
            "seed": seed,
            "accuracy": summary["final_mean_accuracy"],
            "seconds": seconds,
            "epsilon_prv": sample.get("epsilon_max_prv"),
            "epsilon_rdp": sample.get("epsilon_max_rdp"),
            "noise_multiplier": sample.get("noise_multiplier"),
            "feature_noise_multiplier": (sample.get("feature_stats") or {}).get("noise_multiplier"),
        }
        results[variant].append(record)
        with log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    return [_row(v, results[v]) for v in variants]


def _sample_level(folder: Path) -> dict[str, Any]:
    """The run's privacy.json ``sample_level`` section ({} for runs without DP-SGD)."""
    path = folder / "privacy.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8")).get("sample_level") or {}


def _row(variant: SampleVariant, records: list[dict[str, Any]]) -> SampleBenchRow:
    accuracies = [r["accuracy"] for r in records]
    private = variant.epsilon is not None

    def worst(key: str) -> float | None:
        values = [r[key] for r in records if r[key] is not None]
        return max(values) if (values and private) else None

    return SampleBenchRow(
        method=variant.method,
        epsilon=variant.epsilon,
        feature_stats=variant.feature_stats if variant.method == "codream" else None,
        accuracy_mean=statistics.fmean(accuracies),
        accuracy_std=statistics.pstdev(accuracies) if len(accuracies) > 1 else 0.0,
        accuracy_per_seed=accuracies,
        seconds=statistics.fmean(r["seconds"] for r in records),
        epsilon_prv=worst("epsilon_prv"),
        epsilon_rdp=worst("epsilon_rdp"),
        noise_multiplier=worst("noise_multiplier"),
        feature_noise_multiplier=worst("feature_noise_multiplier"),
        seeds=[r["seed"] for r in records],
    )


def rows_from_log(path: Path) -> list[SampleBenchRow]:
    """Rows from a bench's ``runs.jsonl``: the runs finished so far (interrupted benches too)."""
    groups: dict[SampleVariant, list[dict[str, Any]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        variant = SampleVariant(record["method"], record["epsilon"], record["feature_stats"])
        groups.setdefault(variant, []).append(record)
    return [_row(v, records) for v, records in groups.items()]


def rows_json(rows: Sequence[SampleBenchRow]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)


def format_sample_table(rows: Sequence[SampleBenchRow], cfg: RunConfig) -> str:
    """Markdown table, as pasted into docs/privacy.md and docs/results.md."""
    lines = [
        f"{cfg.data.dataset}, {cfg.clients.count} clients × {cfg.data.samples_per_client} samples, "
        f"Dirichlet α = {cfg.data.alpha}, {cfg.rounds} rounds; final-round mean client test "
        f"accuracy, mean ± std over seeds; per-client sample-level ε at δ = {cfg.privacy.delta}",
        "",
        "| method | feature stats | ε target | ε PRV / RDP | z DP-SGD / features | accuracy "
        "| per seed | s / run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fs = "-" if r.feature_stats is None else ("on" if r.feature_stats else "off")
        target = "no DP" if r.epsilon is None else f"{r.epsilon:g}"
        eps = f"{r.epsilon_prv:.2f} / {r.epsilon_rdp:.2f}" if r.epsilon_prv is not None else "-"
        z = f"{r.noise_multiplier:.3g}" if r.noise_multiplier is not None else "-"
        if r.feature_noise_multiplier is not None and r.noise_multiplier is not None:
            z += f" / {r.feature_noise_multiplier:.3g}"
        per_seed = ", ".join(f"{a:.3f}" for a in r.accuracy_per_seed)
        lines.append(
            f"| {r.method} | {fs} | {target} | {eps} | {z} | "
            f"{r.accuracy_mean:.3f} ± {r.accuracy_std:.3f} | {per_seed} | {r.seconds:.0f} |"
        )
    return "\n".join(lines)
