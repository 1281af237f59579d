"""The run loop of every engine: progress, budget stop, metrics, dream grids, checkpoint, summary.

Why one loop: what a run folder holds after each round (metrics line, privacy report, dream grid,
checkpoint) and how a run ends (the privacy budget stop, the summary) is a promise to the user
that must not depend on the engine. An engine only says how to run one round and what its state
is (:class:`RoundEngine`); in-process (:mod:`securedream.engines.inprocess`) and Flower
(:mod:`securedream.engines.flower.server_app`) both hand theirs to :func:`run_rounds`.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch
from tqdm import tqdm

from securedream.config import RunConfig, config_to_dict
from securedream.diagnostics import add_to_privacy_report, opt_in_leaks
from securedream.errors import ConfigError, RunFolderError
from securedream.privacy.engine import PrivacyBudgetExhausted
from securedream.runs import RunFolder
from securedream.runs.plots import save_accuracy_plot, save_dream_grid
from securedream.runs.timing import NESTED_STAGES, round_seconds

RoundCallback = Callable[[int, dict[str, Any]], None]
StepCallback = Callable[[int, int], None]


class RoundEngine(Protocol):
    """What the run loop needs from an engine."""

    name: str  # "inprocess" or "flower": written to the checkpoint and the privacy report
    cfg: RunConfig
    last_dreams: torch.Tensor | None
    mean: tuple[float, ...]  # dataset normalisation, to draw dream grids
    std: tuple[float, ...]

    def run_round(self, round_index: int, on_step: Callable[[int], None]) -> dict[str, Any]:
        """One round; returns its metrics record (already reduced to what the run discloses)."""

    def grid_labels(self) -> list[int] | None:
        """Labels to print on the last dream grid (the soft labels' argmax), if known."""

    def state_dict(self) -> dict[str, Any]:
        """Tensors of the checkpoint."""

    def bookkeeping(self) -> dict[str, Any]:
        """JSON-able checkpoint state (privacy ledger, ...)."""

    def privacy_report(self) -> dict[str, Any] | None:
        """privacy.json's content, or None when the run has no privacy accounting."""


def progress_bar(total: int, desc: str, enabled: bool, position: int = 0) -> tqdm:
    return tqdm(
        total=total,
        desc=desc,
        disable=not enabled,
        leave=position == 0,
        position=position,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def summarise(cfg: RunConfig, records: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Final-round figures (never best-over-rounds on the test set) and mean communication."""
    final = records[-1]
    per_round_up = [statistics.fmean(r["bytes_up"]) for r in records]
    per_round_down = [statistics.fmean(r["bytes_down"]) for r in records]
    summary: dict[str, Any] = {
        "name": cfg.name,
        "method": cfg.method,
        "seed": cfg.seed,
        "dataset": cfg.data.dataset,
        "rounds": len(records),
        "clients": cfg.clients.count,
        "models": cfg.client_models() if cfg.method in ("codream", "codream-fast") else None,
        # None where the run has no such figure: a secure or private Flower run's server never
        # receives a client's accuracy, and no such run records a per-client one (diagnostics)
        "final_client_accuracy": final.get("client_accuracy"),
        "final_mean_accuracy": final.get("mean_accuracy"),
        "final_std_accuracy": final.get("std_accuracy"),
        "opt_in_leaks": opt_in_leaks(cfg),  # plain per-client channels the user opened
        "bytes_up_per_client_round": statistics.fmean(per_round_up),
        "bytes_down_per_client_round": statistics.fmean(per_round_down),
        "bytes_per_client_round": statistics.fmean(per_round_up) + statistics.fmean(per_round_down),
        "timing": {
            "seconds": seconds,
            "stage_seconds_total": {
                stage: sum(r["stage_seconds"].get(stage, 0.0) for r in records)
                for stage in records[0]["stage_seconds"]
            },
            "round_seconds_mean": statistics.fmean(
                round_seconds(r["stage_seconds"]) for r in records
            ),
            "nested_stages": list(NESTED_STAGES),
        },
    }
    if "server_accuracy" in final:
        summary["final_server_accuracy"] = final["server_accuracy"]
    return summary


def write_privacy(folder: RunFolder, engine: RoundEngine) -> dict[str, Any] | None:
    """privacy.json (every parameter, for independent recomputation) and privacy.md; returns
    the summary's privacy entry, or None when the run has no privacy accounting."""
    from securedream.privacy.report import report_markdown

    report = engine.privacy_report()
    if report is None:
        return None
    add_to_privacy_report(report, engine.cfg, engine.name)
    folder.write_json("privacy.json", report)
    folder.write_text("privacy.md", report_markdown(report))
    summary = {
        key: report[key]
        for key in ("epsilon_total", "delta", "noise_multiplier", "placement")
        if key in report
    }
    if "sample_level" in report:
        summary["sample_level_epsilon_max"] = report["sample_level"]["epsilon_max"]
    return summary


def run_rounds(
    engine: RoundEngine,
    folder: RunFolder,
    *,
    start_round: int = 0,
    elapsed_before: float = 0.0,
    progress: bool = True,
    on_round_end: RoundCallback | None = None,
    on_step: StepCallback | None = None,
) -> dict[str, Any]:
    """Run rounds ``start_round..cfg.rounds-1`` of ``engine`` into ``folder``; returns the summary.

    ``on_step(round, step)`` is called after every dream step (tooling), ``on_round_end`` after
    each round's record is committed.
    """
    cfg = engine.cfg
    started = time.perf_counter()
    records = folder.read_metrics()
    suffix = "" if engine.name == "inprocess" else f" ({engine.name})"
    rounds_bar = progress_bar(cfg.rounds, f"{cfg.method} rounds{suffix}", progress)
    rounds_bar.update(start_round)
    steps_total = {"codream": cfg.dreams.global_steps, "codream-fast": cfg.fast.global_steps}.get(
        cfg.method, 0
    )
    stopped: str | None = None
    for round_index in range(start_round, cfg.rounds):
        steps_bar = progress_bar(steps_total, "dream steps", progress and steps_total > 0, 1)

        def step_done(step: int, r: int = round_index, bar: tqdm = steps_bar) -> None:
            bar.update(1)
            if on_step is not None:
                on_step(r, step)

        try:
            report = engine.run_round(round_index, step_done)
        except PrivacyBudgetExhausted as exc:
            stopped = str(exc)
            if not records:
                raise ConfigError(
                    "privacy.max_epsilon", f"too small for even one round: {stopped}"
                ) from None
            print(f"securedream: {stopped}", file=sys.stderr)
            break
        finally:
            steps_bar.close()
        folder.append_metrics(report)
        write_privacy(folder, engine)
        records.append(report)
        if engine.last_dreams is not None and cfg.output.dream_grid:
            save_dream_grid(
                engine.last_dreams,
                folder.path / "dreams" / f"round_{round_index + 1:03d}.png",
                engine.mean,
                engine.std,
                cfg.output.grid_images,
                labels=engine.grid_labels(),
            )
        if cfg.output.checkpoint:
            folder.save_checkpoint(
                engine.state_dict(),
                {
                    "rounds_done": round_index + 1,
                    "seconds": elapsed_before + time.perf_counter() - started,
                    "engine": engine.name,
                    **engine.bookkeeping(),
                },
            )
        if "mean_accuracy" in report:
            rounds_bar.set_postfix(acc=f"{report['mean_accuracy']:.3f}")
        rounds_bar.update(1)
        if on_round_end is not None:
            on_round_end(round_index, report)
    rounds_bar.close()

    if not records:
        raise RunFolderError(f"no round completed: {stopped}")
    save_accuracy_plot(records, folder.path / "accuracy.png", f"{cfg.name}: {cfg.method}{suffix}")
    summary = summarise(cfg, records, elapsed_before + time.perf_counter() - started)
    summary["stopped_early"] = stopped
    if engine.name != "inprocess":
        summary["engine"] = engine.name
    privacy = write_privacy(folder, engine)
    if privacy is not None:
        summary["privacy"] = privacy
    summary["config"] = config_to_dict(cfg)
    folder.write_json("summary.json", summary)
    return summary
