"""Runs a whole experiment in one process: rounds, evaluation, run folder, checkpoints, resume."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from securedream.aggregation import Aggregator
from securedream.config import RunConfig
from securedream.diagnostics import Disclosure
from securedream.engines.driver import RoundCallback, run_rounds, summarise
from securedream.errors import RunFolderError
from securedream.rounds.baselines import fedavg_round, independent_round
from securedream.rounds.codream import ExperimentCohort, codream_record, evaluation
from securedream.rounds.experiment import Experiment, checkpoint_state_problem
from securedream.runs import RunFolder
from securedream.runs.folder import check_same_config
from securedream.runs.timing import nested_seconds, nested_stage_seconds

__all__ = ["InProcessRun", "run_experiment", "run_one_round", "summarise"]


def evaluate(exp: Experiment) -> dict[str, Any]:
    """The harness's evaluation of every model it holds (the experimenter's, not the server's)."""
    return evaluation(exp, ExperimentCohort(exp), -1)


def run_one_round(
    exp: Experiment, round_index: int, on_dream_step: Callable[[int], None] | None = None
) -> dict[str, Any]:
    method = exp.cfg.method
    if method == "codream":
        return codream_record(exp, ExperimentCohort(exp), round_index, on_dream_step)
    exp.ledger.reset()
    if method == "codream-fast":
        from securedream.fast.round import fast_round

        before = nested_seconds(exp.aggregator)
        report = fast_round(exp, round_index, on_dream_step)
        report["stage_seconds"].update(nested_stage_seconds(exp.aggregator, before))
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


class InProcessRun:
    """The in-process engine as the run loop sees it (a ``driver.RoundEngine``)."""

    name = "inprocess"

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.cfg = exp.cfg
        self.mean = exp.data.mean
        self.std = exp.data.std

    @property
    def last_dreams(self) -> torch.Tensor | None:
        return self.exp.last_dreams

    def run_round(self, round_index: int, on_step: Callable[[int], None]) -> dict[str, Any]:
        return run_one_round(self.exp, round_index, on_step)

    def grid_labels(self) -> list[int] | None:
        return self.exp.buffer[-1][1].argmax(dim=1).tolist() if self.exp.buffer else None

    def state_dict(self) -> dict[str, Any]:
        return self.exp.state_dict()

    def bookkeeping(self) -> dict[str, Any]:
        return self.exp.bookkeeping()

    def privacy_report(self) -> dict[str, Any] | None:
        exp = self.exp
        if exp.privacy is None and not self.cfg.privacy.sample_level:
            return None
        report = exp.privacy.report() if exp.privacy is not None else {"placement": "off"}
        sample_level = exp.sample_level_report()
        if sample_level is not None:
            report["sample_level"] = sample_level
        public = exp.public_report()
        if public is not None:
            report["public_data"] = public
        return report


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

    return run_rounds(
        InProcessRun(exp),
        folder,
        start_round=start_round,
        elapsed_before=elapsed_before,
        progress=progress,
        on_round_end=on_round_end,
    )
