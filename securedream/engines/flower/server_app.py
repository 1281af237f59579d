"""The Flower ``ServerApp`` of CoDream: the round loop, the run folder, the privacy report.

One round, as in-process (:mod:`securedream.rounds.codream`), with every client step a Flower
message exchange:

1. TRAIN          every present client trains locally (its own generator per (seed, client, round));
2. dreaming       :func:`collaborative_dreaming` (the in-process server loop, unchanged) over
                  Flower proxies and a Flower aggregator: DREAM requests per step, plus SECAGG
                  set-up and unmask relays when secure aggregation is on;
3. DISTILL        each client gets the soft labels (and the dreams it did not see) of the new
                  buffer entries, keeps the same FIFO buffer as the server, distils when due, and
                  then evaluates on the held-out test split (one round trip for both; its time is
                  ``stage_seconds.distillation``, and ``evaluation`` is the server's own part).

The run folder has the in-process layout (config.toml, splits.json, metrics.jsonl with the same
per-round keys plus a ``flower`` entry, summary.json, dream grids, accuracy.png, privacy report,
checkpoint/). The checkpoint holds the server's state only (student, buffer, last dreams): client
models never leave their nodes, so ``--resume`` is an in-process feature.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from tqdm import tqdm

from securedream.aggregation.factory import build_aggregation
from securedream.aggregation.secure import SecureAggregator
from securedream.comm import CommLedger
from securedream.config import RunConfig, config_to_dict
from securedream.diagnostics import Disclosure, add_to_privacy_report
from securedream.dreams.class_share import soft_label_entries
from securedream.engines.flower import messages as m
from securedream.engines.flower.clientside import config_digest, load_node_data, parse_config
from securedream.engines.flower.supernode import short_object_backoff
from securedream.engines.flower.transport import (
    DreamCohort,
    FlowerDreamingClient,
    FlowerLink,
    FlowerPlainAggregator,
    FlowerRunError,
    FlowerSecureAggregator,
)
from securedream.engines.inprocess import summarise
from securedream.errors import ConfigError, RunFolderError
from securedream.models import build_model
from securedream.privacy.aggregator import DPAggregator
from securedream.privacy.engine import PrivacyBudgetExhausted
from securedream.rounds.client import CoDreamClient, LocalTrainingConfig
from securedream.rounds.experiment import Experiment, resolve_device
from securedream.rounds.server import collaborative_dreaming, snapshot_steps
from securedream.runs import RunFolder
from securedream.runs.plots import save_accuracy_plot, save_dream_grid
from securedream.runs.timing import nested_seconds, nested_stage_seconds
from securedream.seeding import derive_seed, torch_generator


@dataclass(frozen=True)
class FlowerOptions:
    """Transport settings (run config keys of the same name with dashes in deployment)."""

    timeout: float = 600.0  # seconds a node has to answer one request before it counts as dropped
    connect_timeout: float = 300.0  # seconds to wait at start for a node per partition
    poll: float = 0.02  # seconds between pulls of replies
    progress_file: str = ""  # optional JSON-lines file: one line per aggregation (for tooling)

    @classmethod
    def from_run_config(cls, run_config: Any) -> FlowerOptions:
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key in run_config:
                values[f.name] = type(getattr(cls, f.name))(run_config[key])
        return cls(**values)


def check_supported(cfg: RunConfig) -> None:
    if cfg.method != "codream":
        raise ConfigError(
            "method", f"the flower engine runs codream only (got {cfg.method!r}); use inprocess"
        )
    if cfg.privacy.sample_level:
        raise ConfigError(
            "privacy.sample_level", "DP-SGD local training is not wired into the flower engine yet"
        )
    if cfg.privacy.feature_stats:
        raise ConfigError(
            "privacy.feature_stats", "feature statistics are not wired into the flower engine yet"
        )
    if cfg.dreams.warm_start:  # in-process only for now (rounds/experiment.py)
        raise ConfigError("dreams.warm_start", "is not wired into the flower engine yet")


class FlowerCoDream:
    """The server side of one CoDream run over a Flower Grid."""

    # the in-process settings views, borrowed so both engines derive the same numbers
    dream_weights = Experiment.dream_weights
    dreaming_settings = Experiment.dreaming_settings
    distill_settings = Experiment.distill_settings

    def __init__(
        self, grid: Grid, cfg: RunConfig, config_text: str, options: FlowerOptions
    ) -> None:
        check_supported(cfg)
        self.cfg = cfg
        self.disclosure = Disclosure.of(cfg)  # the clients' configs are this one (digest checked)
        self.options = options
        self.digest = config_digest(config_text)
        self.device = resolve_device(cfg.device)
        self.link = FlowerLink(grid, cfg.clients.count, timeout=options.timeout, poll=options.poll)
        self.link.discover(self.digest, wait=options.connect_timeout)
        info = self.link.info[0]
        for k, other in self.link.info.items():
            for key in ("channels", "image_size", "num_classes"):
                if other[key] != info[key]:
                    raise FlowerRunError(
                        f"client {k} reports {key}={other[key]}, client 0 {info[key]}"
                    )
        self.channels = int(info["channels"])
        self.image_size = int(info["image_size"])
        self.num_classes = int(info["num_classes"])
        self.mean = tuple(float(v) for v in info["mean"])
        self.std = tuple(float(v) for v in info["std"])
        self.cohort = DreamCohort(self.num_classes)
        self.aggregator, self.privacy = self._aggregation()
        self.student = self._student()
        self.buffer: deque[tuple[str, torch.Tensor, torch.Tensor]] = deque(
            maxlen=cfg.distill.buffer_batches
        )
        self.client_buffers: dict[int, set[str]] = {}
        self.last_dreams: torch.Tensor | None = None
        self.last_failed: list[int] = []
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None

    # --- construction -------------------------------------------------------------------------
    def dream_shape(self) -> tuple[int, int, int, int]:
        s = self.image_size
        return (self.cfg.dreams.batch_size, self.channels, s, s)

    def _aggregation(self) -> tuple[Any, Any]:
        """The in-process aggregation stack with its innermost aggregator replaced by Flower's."""
        shape = self.dream_shape()
        dim = shape[0] * shape[1] * shape[2] * shape[3]
        aggregator, privacy = build_aggregation(self.cfg, dim=dim, num_classes=self.num_classes)
        dp = aggregator if isinstance(aggregator, DPAggregator) else None
        inner = dp.inner if dp is not None else aggregator
        flower: Any
        if isinstance(inner, SecureAggregator):
            flower = FlowerSecureAggregator(
                inner.num_clients, inner.settings, self.link, self.cohort
            )
            flower.integer_noise = inner.integer_noise  # marks distributed DP; clients add it
        else:
            clip = dp.settings.clip_for if dp is not None else None
            flower = FlowerPlainAggregator(self.link, self.cohort, clip)
        if dp is None:
            return flower, privacy
        dp.inner = flower
        return dp, privacy

    def _student(self) -> CoDreamClient | None:
        cfg = self.cfg
        if not cfg.dreams.adaptive:
            return None
        model = build_model(
            cfg.dreams.server_model,
            in_channels=self.channels,
            num_classes=self.num_classes,
            image_size=self.image_size,
            seed=derive_seed(cfg.seed, "model", "server"),
        )
        training = LocalTrainingConfig(
            lr=cfg.clients.lr,
            momentum=cfg.clients.momentum,
            weight_decay=cfg.clients.weight_decay,
            batch_size=cfg.clients.batch_size,
        )
        s = self.image_size
        empty_x = torch.zeros(0, self.channels, s, s)
        empty_y = torch.zeros(0, dtype=torch.long)
        return CoDreamClient(-1, model, empty_x, empty_y, training, self.device)

    def _test_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The public test split, loaded on the server only to evaluate its student."""
        if self._test is None:
            data = load_node_data(self.cfg)
            self._test = (data.test_x, data.test_y)
        return self._test

    # --- one round ----------------------------------------------------------------------------
    def _per_client(self, replies: dict[int, Any], key: str) -> list[float | None]:
        return [
            float(replies[k]["cfg"][key]) if k in replies and key in replies[k]["cfg"] else None
            for k in range(self.cfg.clients.count)
        ]

    def run_round(self, round_index: int, on_step: Any = None) -> dict[str, Any]:
        cfg, link = self.cfg, self.link
        link.begin_round(round_index)
        messages_before = link.stats.messages
        link.discover(self.digest, probe=self.last_failed)  # new nodes, returning clients
        for k in link.take_joined():  # a (re)started node reports the buffer it still holds
            self.client_buffers[k] = {i for i in str(link.info[k]["buffer"]).split(",") if i}
        if self.privacy is not None:
            self.privacy.check_budget(round_index)
        seconds: dict[str, float] = {}
        report: dict[str, Any] = {}

        start = time.perf_counter()
        epochs = cfg.clients.local_epochs + (cfg.clients.warmup_epochs if round_index == 0 else 0)
        train = m.content({"round": round_index, "epochs": epochs})
        replies = link.exchange(
            {k: (m.TRAIN, train) for k in link.present()}, down="control", up="control"
        )
        if self.disclosure.per_client_metrics:
            report["train_loss"] = self._per_client(replies, "loss")
        seconds["local_training"] = time.perf_counter() - start

        start = time.perf_counter()
        present = link.present()
        if not present:
            raise FlowerRunError(f"round {round_index}: no client is available ({link.failed})")
        init = torch.randn(
            self.dream_shape(), generator=torch_generator(cfg.seed, "dreams", round_index)
        )
        init = (init * cfg.dreams.init_std).to(self.device)
        settings = self.dreaming_settings(round_index)
        self.cohort.reset_round(round_index)
        proxies = [FlowerDreamingClient(k, self.cohort) for k in present]
        nested_before = nested_seconds(self.aggregator)
        self.aggregator.start_round(round_index, present)
        try:
            outcome = collaborative_dreaming(
                init,
                proxies,
                self.aggregator,
                settings,
                public_count=cfg.clients.count,
                ledger=CommLedger(range(cfg.clients.count)),  # counts come from the Flower link
                student=self.student.model
                if (self.student is not None and settings.adaptive_weight > 0)
                else None,
                on_step=on_step,
                per_client_diagnostics=self.disclosure.per_client_metrics,
            )
        finally:
            self.aggregator.end_round()
        seconds["dreaming"] = time.perf_counter() - start
        steps = sorted(snapshot_steps(settings.steps, settings.snapshots))
        ids = [self.cohort.snapshot_id(s) for s in steps]
        snapshots = outcome.snapshots
        if cfg.dreams.class_share:
            snapshots = soft_label_entries(snapshots, cfg.distill.temperature)
        for i, (dreams, soft) in zip(ids, snapshots, strict=True):
            self.buffer.append((i, dreams, soft))
        self.last_dreams = snapshots[-1][0]
        soft = snapshots[-1][1]
        if self.disclosure.per_client_metrics:
            report["dream_terms"] = outcome.final_terms
            report["contribution_norms"] = dict(self.cohort.contribution_norms)
        report["dream_label_histogram"] = torch.bincount(
            soft.argmax(dim=1).cpu(), minlength=self.num_classes
        ).tolist()
        report["dream_confidence"] = float(torch.softmax(soft, dim=1).max(dim=1).values.mean())
        report["aggregations"] = outcome.aggregations + len(outcome.snapshots)
        report["survivors"] = outcome.survivors

        start = time.perf_counter()
        due = (round_index + 1) % cfg.distill.every == 0
        replies = self._acquire(round_index, due)
        if due and self.disclosure.per_client_metrics:
            report["distill_loss"] = self._per_client(replies, "loss")
        if due and self.student is not None:
            self.student.distill(
                [(x, s) for _, x, s in self.buffer],
                self.distill_settings(),
                torch_generator(cfg.seed, "distill", "server", round_index),
                with_local_data=False,
            )
        seconds["distillation"] = time.perf_counter() - start
        report["stage_seconds"] = seconds
        seconds.update(nested_stage_seconds(self.aggregator, nested_before))
        if self.privacy is not None:
            report["epsilon"] = self.privacy.end_round()

        start = time.perf_counter()
        if not replies:
            raise FlowerRunError(f"round {round_index}: no client answered the evaluation")
        if self.disclosure.per_client_metrics:  # a secure/private run's clients keep it
            accuracies = self._per_client(replies, "accuracy")
            answered = [a for a in accuracies if a is not None]
            if not answered:
                raise FlowerRunError(f"round {round_index}: no client reported its accuracy")
            report["client_accuracy"] = accuracies
            report["mean_accuracy"] = statistics.fmean(answered)
            report["std_accuracy"] = statistics.pstdev(answered) if len(answered) > 1 else 0.0
        if self.student is not None:
            report["server_accuracy"] = self.student.evaluate(*self._test_split())
        seconds["evaluation"] = time.perf_counter() - start

        comm = link.ledger.snapshot()
        report["bytes_up"] = comm["up"]
        report["bytes_down"] = comm["down"]
        report["bytes_by_channel"] = comm["by_channel"]
        report["round"] = round_index
        report["method"] = cfg.method
        report["flower"] = {
            "clients": present,
            "dropped": {str(k): reason for k, reason in sorted(link.failed.items())},
            "messages": link.stats.messages - messages_before,
        }
        self.last_failed = sorted(link.failed)
        return self.disclosure.round_record(report)

    def _acquire(self, round_index: int, distill: bool) -> dict[int, Any]:
        """Send each client the buffer entries it lacks; it distils when ``distill``, then
        evaluates."""
        ids = [i for i, _, _ in self.buffer]
        requests = {}
        for k in self.link.present():
            have = self.client_buffers.get(k, set())
            tensors: dict[str, torch.Tensor] = {}
            for i, dreams, soft in self.buffer:
                if i in have:
                    continue
                tensors[f"s.{i}"] = soft
                if k not in self.cohort.snapshot_receivers.get(i, set()):
                    tensors[f"x.{i}"] = dreams
            cfg = {"round": round_index, "buffer": ",".join(ids), "distill": distill}
            cfg["evaluate"] = True  # the round's evaluation rides on this message
            requests[k] = (m.DISTILL, m.content(cfg, tensors=tensors))
        replies = self.link.exchange(requests, down="soft_labels", up="control")
        for k, reply in replies.items():
            self.client_buffers[k] = {i for i in str(reply["cfg"]["buffer"]).split(",") if i}
        return replies

    # --- run folder state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "clients": [],  # client models stay on their nodes
            "student": self.student.state_dict() if self.student is not None else None,
            "buffer": [[x.cpu(), s.cpu()] for _, x, s in self.buffer],
            "last_dreams": self.last_dreams.cpu() if self.last_dreams is not None else None,
        }

    def splits(self) -> dict[str, Any]:
        """What the clients said at HELLO about their data: histograms only where disclosed."""
        info = self.link.info
        k_range = range(self.cfg.clients.count)
        splits: dict[str, Any] = {"models": [str(info[k]["model"]) for k in k_range]}
        if self.disclosure.label_histograms:
            splits["label_histograms"] = [list(info[k]["histogram"]) for k in k_range]
            splits["sizes"] = [int(info[k]["samples"]) for k in k_range]
        return splits


def _write_privacy(folder: RunFolder, privacy: Any) -> dict[str, Any]:
    from securedream.privacy.report import report_markdown

    report = privacy.report()
    add_to_privacy_report(report, privacy.cfg, "flower")
    folder.write_json("privacy.json", report)
    folder.write_text("privacy.md", report_markdown(report))
    return {
        k: report[k]
        for k in ("epsilon_total", "delta", "noise_multiplier", "placement")
        if k in report
    }


def run_codream(
    grid: Grid,
    cfg: RunConfig,
    config_text: str,
    out: str | Path,
    *,
    progress: bool = True,
    options: FlowerOptions | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` over the nodes of ``grid``, writing the run folder ``out``; returns a summary.

    The folder is locked for the whole run (as in-process), so a second run into it is refused.
    """
    with RunFolder(out).lock():
        return _run_codream_locked(grid, cfg, config_text, out, progress, options)


def _run_codream_locked(
    grid: Grid,
    cfg: RunConfig,
    config_text: str,
    out: str | Path,
    progress: bool,
    options: FlowerOptions | None,
) -> dict[str, Any]:
    options = options or FlowerOptions()
    folder = RunFolder(out)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    run = FlowerCoDream(grid, cfg, config_text, options)
    folder.create(cfg)
    folder.write_json("splits.json", run.splits())
    progress_log = Path(options.progress_file) if options.progress_file else None

    records: list[dict[str, Any]] = []
    rounds_bar = tqdm(
        total=cfg.rounds,
        desc="codream rounds (flower)",
        disable=not progress,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    stopped: str | None = None
    for round_index in range(cfg.rounds):
        steps_bar = tqdm(
            total=cfg.dreams.global_steps,
            desc="dream steps",
            disable=not progress,
            leave=False,
            position=1,
            dynamic_ncols=True,
            file=sys.stderr,
        )

        def on_step(step: int, r: int = round_index, bar: Any = steps_bar) -> None:
            bar.update(1)
            if progress_log is not None:
                with progress_log.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"round": r, "step": step, "time": time.time()}) + "\n")

        try:
            report = run.run_round(round_index, on_step)
        except PrivacyBudgetExhausted as exc:
            stopped = str(exc)
            print(f"securedream: {stopped}", file=sys.stderr)
            break
        finally:
            steps_bar.close()
        folder.append_metrics(report)
        if run.privacy is not None:
            _write_privacy(folder, run.privacy)
        records.append(report)
        if run.last_dreams is not None and cfg.output.dream_grid:
            save_dream_grid(
                run.last_dreams,
                folder.path / "dreams" / f"round_{round_index + 1:03d}.png",
                run.mean,
                run.std,
                cfg.output.grid_images,
            )
        if cfg.output.checkpoint:
            folder.save_checkpoint(
                run.state_dict(),
                {
                    "rounds_done": round_index + 1,
                    "seconds": time.perf_counter() - started,
                    "engine": "flower",
                    "privacy": run.privacy.state_dict() if run.privacy is not None else None,
                },
            )
        if "mean_accuracy" in report:
            rounds_bar.set_postfix(acc=f"{report['mean_accuracy']:.3f}")
        rounds_bar.update(1)
    rounds_bar.close()

    if not records:
        raise RunFolderError(f"no round completed: {stopped}")
    save_accuracy_plot(records, folder.path / "accuracy.png", f"{cfg.name}: {cfg.method} (flower)")
    summary = summarise(cfg, records, time.perf_counter() - started)
    summary["stopped_early"] = stopped
    summary["engine"] = "flower"
    if run.privacy is not None:
        summary["privacy"] = _write_privacy(folder, run.privacy)
    summary["config"] = config_to_dict(cfg)
    folder.write_json("summary.json", summary)
    return summary


def make_server_app(
    config_text: str,
    *,
    out: str | Path | None = None,
    progress: bool = False,
    options: FlowerOptions | None = None,
    result: dict[str, Any] | None = None,
) -> ServerApp:
    """A ServerApp for the run whose resolved config TOML is ``config_text``.

    ``out`` (or run config key ``out``) is the run folder on the machine running the ServerApp;
    ``result`` (simulation, same process) receives the summary under ``"summary"``.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        target = out if out is not None else context.run_config.get("out")
        if not target:
            raise ConfigError("out", "set the run folder: flwr run ... --run-config 'out=\"DIR\"'")
        opts = options if options is not None else FlowerOptions.from_run_config(context.run_config)
        from flwr.superlink.grid import http_grid

        if isinstance(grid, http_grid.HttpGrid):  # deployment: pull replies without the 1 s wait
            short_object_backoff(http_grid)
        summary = run_codream(
            grid,
            parse_config(config_text),
            config_text,
            str(target),
            progress=progress,
            options=opts,
        )
        if result is not None:
            result["summary"] = summary

    return app
