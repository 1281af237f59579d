"""The Flower ``ServerApp`` of CoDream: the server's state, the run folder, the privacy report.

A round is the in-process round body (:func:`securedream.rounds.codream.codream_record`) over a
:class:`~securedream.engines.flower.cohort.FlowerCohort` (TRAIN, DREAM and SECAGG exchanges, one
DISTILL message that also evaluates); the run loop is :func:`securedream.engines.driver.run_rounds`.

The run folder has the in-process layout (config.toml, splits.json, metrics.jsonl with the same
per-round keys plus a ``flower`` entry, summary.json, dream grids, accuracy.png, privacy report,
checkpoint/). The checkpoint holds the server's state only (student, buffer, last dreams): client
models never leave their nodes, so ``--resume`` is an in-process feature.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from securedream.config import RunConfig
from securedream.diagnostics import Disclosure
from securedream.engines.driver import run_rounds
from securedream.engines.flower.clientside import config_digest, load_node_data, parse_config
from securedream.engines.flower.cohort import FlowerCohort
from securedream.engines.flower.supernode import short_object_backoff
from securedream.engines.flower.transport import FlowerLink, FlowerRunError
from securedream.errors import ConfigError
from securedream.models import build_model
from securedream.rounds.client import CoDreamClient, LocalTrainingConfig
from securedream.rounds.codream import codream_record
from securedream.rounds.experiment import Experiment, resolve_device
from securedream.runs import RunFolder
from securedream.seeding import derive_seed
from securedream.stack import plan_stack


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
    if cfg.public.dataset != "none":
        raise ConfigError("public.dataset", "public data is not wired into the flower engine yet")
    if cfg.dreams.warm_start:  # in-process only for now (rounds/experiment.py)
        raise ConfigError("dreams.warm_start", "is not wired into the flower engine yet")


class FlowerCoDream:
    """The server side of one CoDream run over a Flower Grid (a ``driver.RoundEngine``)."""

    name = "flower"

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
        shape = self.dream_shape()
        plan = plan_stack(cfg, dim=int(torch.Size(shape).numel()), num_classes=self.num_classes)
        self.cohort = FlowerCohort(cfg, self.link, self.digest, plan, self.num_classes)
        self.privacy = self.cohort.privacy
        self.student = self._student()
        self.buffer: deque[tuple[torch.Tensor, torch.Tensor]] = deque(
            maxlen=cfg.distill.buffer_batches
        )
        self.last_dreams: torch.Tensor | None = None
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None

    # --- construction -------------------------------------------------------------------------
    def dream_shape(self) -> tuple[int, int, int, int]:
        s = self.image_size
        return (self.cfg.dreams.batch_size, self.channels, s, s)

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

    def test_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The public test split, loaded on the server only to evaluate its student."""
        if self._test is None:
            data = load_node_data(self.cfg)
            self._test = (data.test_x, data.test_y)
        return self._test

    # --- one round ----------------------------------------------------------------------------
    def run_round(self, round_index: int, on_step: Any = None) -> dict[str, Any]:
        """The in-process round body (:func:`codream_record`) over the Flower cohort."""
        return codream_record(self, self.cohort, round_index, on_step)

    # --- run folder state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "clients": [],  # client models stay on their nodes
            "student": self.student.state_dict() if self.student is not None else None,
            "buffer": [[x.cpu(), s.cpu()] for x, s in self.buffer],
            "last_dreams": self.last_dreams.cpu() if self.last_dreams is not None else None,
        }

    def grid_labels(self) -> list[int] | None:
        return self.buffer[-1][1].argmax(dim=1).tolist() if self.buffer else None

    def bookkeeping(self) -> dict[str, Any]:
        return {"privacy": self.privacy.state_dict() if self.privacy is not None else None}

    def privacy_report(self) -> dict[str, Any] | None:
        return self.privacy.report() if self.privacy is not None else None

    def splits(self) -> dict[str, Any]:
        """What the clients said at HELLO about their data: histograms only where disclosed."""
        info = self.link.info
        k_range = range(self.cfg.clients.count)
        splits: dict[str, Any] = {"models": [str(info[k]["model"]) for k in k_range]}
        if self.disclosure.label_histograms:
            splits["label_histograms"] = [list(info[k]["histogram"]) for k in k_range]
            splits["sizes"] = [int(info[k]["samples"]) for k in k_range]
        return splits


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
    run = FlowerCoDream(grid, cfg, config_text, options)
    folder.create(cfg)
    folder.write_json("splits.json", run.splits())
    progress_log = Path(options.progress_file) if options.progress_file else None

    def on_step(round_index: int, step: int) -> None:
        if progress_log is not None:
            with progress_log.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"round": round_index, "step": step, "time": time.time()}))
                fh.write("\n")

    return run_rounds(run, folder, progress=progress, on_step=on_step)


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
