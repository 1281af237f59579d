"""Runs a whole experiment in one process: rounds, evaluation, run folder, checkpoints, resume."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from securedream.aggregation import Aggregator
from securedream.config import RunConfig, config_to_dict
from securedream.diagnostics import Disclosure, add_to_privacy_report, opt_in_leaks
from securedream.errors import ConfigError, RunFolderError
from securedream.privacy.engine import PrivacyBudgetExhausted
from securedream.rounds.baselines import fedavg_round, independent_round
from securedream.rounds.codream import codream_round
from securedream.rounds.experiment import Experiment, checkpoint_state_problem
from securedream.runs import RunFolder
from securedream.runs.folder import check_same_config
from securedream.runs.plots import save_accuracy_plot, save_dream_grid
from securedream.runs.timing import (
    NESTED_STAGES,
    nested_seconds,
    nested_stage_seconds,
    round_seconds,
)

RoundCallback = Callable[[int, dict[str, Any]], None]


def _progress(total: int, desc: str, enabled: bool, position: int = 0) -> tqdm:
    return tqdm(
        total=total,
        desc=desc,
        disable=not enabled,
        leave=position == 0,
        position=position,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def evaluate(exp: Experiment) -> dict[str, Any]:
    """The harness's evaluation of every model it holds (the experimenter's, not the server's).

    ``client_accuracy`` is per client and leaves the record in a secure or private run
    (:meth:`Disclosure.round_record`); the mean and spread across clients stay.
    """
    accuracies = [c.evaluate(exp.data.test_x, exp.data.test_y) for c in exp.clients]
    result: dict[str, Any] = {
        "client_accuracy": accuracies,
        "mean_accuracy": statistics.fmean(accuracies),
        "std_accuracy": statistics.pstdev(accuracies) if len(accuracies) > 1 else 0.0,
    }
    if exp.student is not None:
        result["server_accuracy"] = exp.student.evaluate(exp.data.test_x, exp.data.test_y)
    return result


def run_one_round(
    exp: Experiment, round_index: int, on_dream_step: Callable[[int], None] | None = None
) -> dict[str, Any]:
    exp.ledger.reset()
    method = exp.cfg.method
    if method == "codream":
        if exp.privacy is not None:
            exp.privacy.check_budget(round_index)
        before = nested_seconds(exp.aggregator)
        report = codream_round(exp, round_index, on_dream_step)
        report["stage_seconds"].update(nested_stage_seconds(exp.aggregator, before))
        if exp.privacy is not None:
            report["epsilon"] = exp.privacy.end_round()
    elif method == "fedavg":
        report = fedavg_round(exp, round_index)
    else:  # independent and centralized (a single pooled client)
        report = independent_round(exp, round_index)
    start = time.perf_counter()
    report.update(evaluate(exp))
    report["stage_seconds"]["evaluation"] = time.perf_counter() - start
    comm = exp.ledger.snapshot()
    report["bytes_up"] = comm["up"]
    report["bytes_down"] = comm["down"]
    report["bytes_by_channel"] = comm["by_channel"]
    report["round"] = round_index
    report["method"] = method
    return Disclosure.of(exp.cfg).round_record(report)


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
        "models": cfg.client_models() if cfg.method == "codream" else None,
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


def _write_privacy(folder: RunFolder, exp: Experiment) -> dict[str, Any]:
    """privacy.json (every parameter, for independent recomputation) and privacy.md."""
    from securedream.privacy.report import report_markdown

    report = exp.privacy.report() if exp.privacy is not None else {"placement": "off"}
    sample_level = exp.sample_level_report()
    if sample_level is not None:
        report["sample_level"] = sample_level
    public = exp.public_report()
    if public is not None:
        report["public_data"] = public
    add_to_privacy_report(report, exp.cfg, "inprocess")
    folder.write_json("privacy.json", report)
    folder.write_text("privacy.md", report_markdown(report))
    summary = {
        key: report[key]
        for key in ("epsilon_total", "delta", "noise_multiplier", "placement")
        if key in report
    }
    if sample_level is not None:
        summary["sample_level_epsilon_max"] = sample_level["epsilon_max"]
    return summary


def run_experiment(
    cfg: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    aggregator: Aggregator | None = None,
    on_round_end: RoundCallback | None = None,
    refuse_existing: bool = False,
) -> dict[str, Any]:
    """Run (or resume) ``cfg`` writing into ``out``; returns the summary.

    The folder is locked for the whole run, so a second run or resume of it is refused.
    ``resume`` continues from the folder's committed checkpoint after checking it (content hashes,
    types, ranges, and that ``cfg`` is the config it was written with); a folder whose run was
    stopped before its first checkpoint starts again from round 0 with its config.
    ``refuse_existing``: refuse (rather than overwrite) a folder that already holds a run.
    """
    if cfg.clients.population:  # stacked clients and sampling: securedream.population
        from securedream.population.run import run_population

        with RunFolder(out).lock():  # one process per run folder, as below
            return run_population(cfg, out, resume=resume)
    folder = RunFolder(out)
    with folder.lock():
        if refuse_existing and folder.config_path.exists():
            raise RunFolderError(
                f"--out: {folder.path} already holds a run; use --resume {folder.path} or "
                "another --out"
            )
        return _run_locked(cfg, folder, resume, progress, aggregator, on_round_end)


def _restore(exp: Experiment, folder: RunFolder, cfg: RunConfig) -> tuple[int, float]:
    """Load and check the committed checkpoint into ``exp``; returns (rounds done, seconds)."""
    tensors, meta = folder.load_checkpoint(expected_engine="inprocess")
    where = folder.checkpoint_dir
    check_same_config(meta, cfg, folder.path)
    problem = checkpoint_state_problem(tensors, exp)
    if problem is not None:
        raise RunFolderError(f"--resume: {where / 'state.pt'}: {problem}")
    try:
        exp.load_state_dict(tensors)
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunFolderError(
            f"--resume: {where / 'state.pt'} does not fit this run's models ({first[:200]})"
        ) from None
    try:
        exp.load_bookkeeping(meta)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise RunFolderError(
            f"--resume: {where / 'meta.json'}: privacy/sample_level bookkeeping is malformed "
            f"({type(exc).__name__}: {exc})"
        ) from None
    folder.restore_metrics(meta)
    return meta["rounds_done"], float(meta.get("seconds", 0.0))


def _start(exp: Experiment, folder: RunFolder, cfg: RunConfig) -> None:
    folder.create(cfg)
    folder.write_json(
        "splits.json",
        Disclosure.of(cfg).splits(
            {
                "label_histograms": [s.label_histogram for s in exp.shards],
                "sizes": [len(s.indices) for s in exp.shards],
            }
        ),
    )


def _run_locked(
    cfg: RunConfig,
    folder: RunFolder,
    resume: bool,
    progress: bool,
    aggregator: Aggregator | None,
    on_round_end: RoundCallback | None,
) -> dict[str, Any]:
    if resume and not folder.config_path.is_file():
        raise RunFolderError(
            f"--resume: {folder.path} has no config.toml and no checkpoint (not a run folder?)"
        )
    if resume and not folder.has_checkpoint() and (folder.path / "summary.json").exists():
        raise RunFolderError(
            f"--resume: {folder.path} finished without checkpoints (output.checkpoint = false); "
            "there is nothing to continue"
        )
    torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    exp = Experiment(cfg, aggregator=aggregator)
    start_round = 0
    elapsed_before = 0.0
    if resume:
        folder.recover()  # finish or undo a checkpoint commit a crash interrupted
    if resume and folder.has_checkpoint():
        start_round, elapsed_before = _restore(exp, folder, cfg)
    else:
        if resume:
            print(
                f"securedream: {folder.path} has no checkpoint yet (stopped before its first "
                "round finished); starting it again from round 0 with its config.toml",
                file=sys.stderr,
            )
        _start(exp, folder, cfg)

    started = time.perf_counter()
    records = folder.read_metrics()
    rounds_bar = _progress(cfg.rounds, f"{cfg.method} rounds", progress)
    rounds_bar.update(start_round)
    steps_total = cfg.dreams.global_steps if cfg.method == "codream" else 0
    stopped: str | None = None
    for round_index in range(start_round, cfg.rounds):
        steps_bar = _progress(steps_total, "dream steps", progress and steps_total > 0, position=1)
        try:
            report = run_one_round(exp, round_index, lambda _step, bar=steps_bar: bar.update(1))
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
        if exp.privacy is not None or cfg.privacy.sample_level:
            _write_privacy(folder, exp)
        records.append(report)
        if exp.last_dreams is not None and cfg.output.dream_grid:
            save_dream_grid(
                exp.last_dreams,
                folder.path / "dreams" / f"round_{round_index + 1:03d}.png",
                exp.data.mean,
                exp.data.std,
                cfg.output.grid_images,
                labels=exp.buffer[-1][1].argmax(dim=1).tolist() if exp.buffer else None,
            )
        if cfg.output.checkpoint:
            folder.save_checkpoint(
                exp.state_dict(),
                {
                    "rounds_done": round_index + 1,
                    "seconds": elapsed_before + time.perf_counter() - started,
                    **exp.bookkeeping(),
                },
            )
        rounds_bar.set_postfix(acc=f"{report['mean_accuracy']:.3f}")
        rounds_bar.update(1)
        if on_round_end is not None:
            on_round_end(round_index, report)
    rounds_bar.close()

    if not records:
        raise RunFolderError(f"no round completed: {stopped}")
    save_accuracy_plot(records, folder.path / "accuracy.png", f"{cfg.name}: {cfg.method}")
    summary = summarise(cfg, records, elapsed_before + time.perf_counter() - started)
    summary["stopped_early"] = stopped
    if exp.privacy is not None or cfg.privacy.sample_level:
        summary["privacy"] = _write_privacy(folder, exp)
    summary["config"] = config_to_dict(cfg)
    folder.write_json("summary.json", summary)
    return summary
