"""Population-scale CoDream rounds: sampled cohorts, batched clients, the unchanged server loop.

A round: draw the round's cohorts (one per release, or one for the whole round), train the round's
participants locally, run :func:`~securedream.rounds.server.collaborative_dreaming` with the cohort
hook and the public divisor q·N, and let the participants distil from the dream buffer. Only
clients that take part in a round train or distil in it, so a round's cost follows the sampled
clients' data. Accuracy is measured on a fixed, evenly spaced subset of clients (evaluating 1,000
models on the whole test set each round would dominate the run); the record says how many.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from securedream.aggregation import AggregateResult, Aggregator, Channel, PlainAggregator
from securedream.comm import CommLedger
from securedream.compute import ComputeSettings
from securedream.config import RunConfig, config_to_dict
from securedream.data import load_dataset, split_for_config
from securedream.dreams import DreamLossWeights
from securedream.errors import RunFolderError
from securedream.population.population import Population
from securedream.population.private import CohortSecureAggregator, PopulationPrivacy
from securedream.population.sampling import CohortSampler, SamplingSettings
from securedream.population.votes import votes_to_logits
from securedream.rounds.client import DistillSettings, LocalTrainingConfig
from securedream.rounds.experiment import resolve_device
from securedream.rounds.server import DreamingSettings, collaborative_dreaming
from securedream.runs import RunFolder
from securedream.seeding import torch_generator

EVAL_CLIENTS = 32


class CohortAggregator(Aggregator):
    """Wraps an aggregator so an empty cohort (possible under Poisson sampling) sums to zero."""

    name = "cohort"

    def __init__(self, inner: Aggregator, shapes: Mapping[Channel, tuple[int, ...]]) -> None:
        self.inner = inner
        self.shapes = dict(shapes)

    def start_round(self, round_index: int, client_ids: Sequence[int]) -> None:
        self.inner.start_round(round_index, client_ids)

    def end_round(self) -> None:
        self.inner.end_round()

    def active_clients(self, client_ids: Sequence[int]) -> list[int]:
        return self.inner.active_clients(client_ids)

    def aggregate(
        self, contributions: Mapping[int, torch.Tensor], *, channel: Channel, step: int
    ) -> AggregateResult:
        if not contributions:
            return AggregateResult(total=torch.zeros(self.shapes[channel]), contributors=())
        return self.inner.aggregate(contributions, channel=channel, step=step)


class PopulationExperiment:
    """Data, population, sampler and dream buffer of one population run."""

    def __init__(self, cfg: RunConfig, device: torch.device | None = None) -> None:
        self.cfg = cfg
        self.device = device or resolve_device(cfg.device)
        self.data = load_dataset(
            cfg.data.dataset,
            seed=cfg.seed,
            test_size=cfg.data.test_size,
            root=cfg.data.root or None,
            download=cfg.data.download,
        )
        splits = split_for_config(self.data.train_y.numpy(), cfg)
        idx = [torch.as_tensor(s, dtype=torch.long) for s in splits]
        self.training = LocalTrainingConfig(
            cfg.clients.lr, cfg.clients.momentum, cfg.clients.weight_decay, cfg.clients.batch_size
        )
        compute = ComputeSettings.from_config(cfg)
        compute.check_device(self.device)
        self.population = Population(
            cfg.client_models(),
            [self.data.train_x[i] for i in idx],
            [self.data.train_y[i] for i in idx],
            in_channels=self.data.channels,
            num_classes=self.data.num_classes,
            image_size=self.data.image_size,
            seed=cfg.seed,
            training=self.training,
            device=self.device,
            compute=compute,
        )
        self.population.votes = cfg.dreams.soft_labels == "votes"
        c = cfg.clients
        self.sampler = CohortSampler(
            c.count,
            SamplingSettings(
                c.sample_rate, c.sampling, c.max_participations, secret=self.private_cohorts()
            ),
            cfg.seed,
        )
        s = self.data.image_size
        self.dream_shape = (cfg.dreams.batch_size, self.data.channels, s, s)
        step_channel = (
            Channel.DREAM_GRADIENT if cfg.dreams.local_steps == 1 else Channel.DREAM_DELTA
        )
        shapes = {
            step_channel: self.dream_shape,
            Channel.LOGITS: (cfg.dreams.batch_size, self.data.num_classes),
        }
        self.privacy: PopulationPrivacy | None = None
        self.aggregator: Aggregator
        if cfg.privacy.placement == "distributed":
            self.privacy = PopulationPrivacy(
                cfg,
                dream_dim=math.prod(self.dream_shape),
                label_dim=math.prod(shapes[Channel.LOGITS]),
                dreams=cfg.dreams.batch_size,
            )
        if cfg.secure_aggregation.enabled:
            self.aggregator = CohortSecureAggregator(cfg, shapes, self.privacy)
        else:
            self.aggregator = CohortAggregator(PlainAggregator(), shapes)
        self.ledger = CommLedger(range(c.count))
        self.buffer: deque[tuple[torch.Tensor, torch.Tensor]] = deque(
            maxlen=cfg.distill.buffer_batches
        )
        step = max(c.count // EVAL_CLIENTS, 1)
        self.eval_ids = list(range(0, c.count, step))[:EVAL_CLIENTS]

    def dreaming_settings(self) -> DreamingSettings:
        d = self.cfg.dreams
        return DreamingSettings(
            steps=d.global_steps,
            lr=d.lr,
            weights=DreamLossWeights(d.w_entropy, d.w_tv, d.w_l2, d.w_bn, d.w_diversity),
            local_steps=d.local_steps,
            local_lr=d.local_lr,
            server_update=d.server_update,
            snapshots=d.snapshots,
        )

    def distill_settings(self) -> DistillSettings:
        k = self.cfg.distill
        return DistillSettings(
            k.epochs,
            k.temperature,
            k.batch_size,
            k.lr or self.cfg.clients.lr,
            k.kd_weight,
            k.ce_weight,
            k.clip_grad_norm,
        )

    def private_cohorts(self) -> bool:
        """Cohort coins from os.urandom: a DP run without reproducible research noise (the
        amplification claimed against observers needs coins nobody can recompute)."""
        p = self.cfg.privacy
        return p.placement != "off" and not p.reproducible_noise

    @property
    def protected(self) -> bool:
        """Secure or private: the loop keeps no per-client diagnostics."""
        return self.cfg.secure_aggregation.enabled or self.cfg.privacy.placement != "off"

    def releases_per_round(self) -> int:
        return self.cfg.dreams.global_steps + self.cfg.dreams.snapshots

    def round(
        self, round_index: int, on_dream_step: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        cfg = self.cfg
        seconds: dict[str, float] = {}
        self.ledger.reset()
        start = time.perf_counter()
        cohorts = [self.sampler.cohort(round_index, r) for r in range(self.releases_per_round())]
        participants = sorted({int(k) for ids in cohorts for k in ids})
        seconds["sampling"] = time.perf_counter() - start

        start = time.perf_counter()
        epochs = cfg.clients.local_epochs + (cfg.clients.warmup_epochs if round_index == 0 else 0)
        gens = {k: torch_generator(cfg.seed, "train", k, round_index) for k in participants}
        train_loss = self.population.train_local(participants, epochs, gens)
        seconds["local_training"] = time.perf_counter() - start

        start = time.perf_counter()
        init = torch.randn(
            self.dream_shape, generator=torch_generator(cfg.seed, "dreams", round_index)
        )
        init = (init * cfg.dreams.init_std).to(self.device)
        self.aggregator.start_round(round_index, list(range(cfg.clients.count)))
        try:
            outcome = collaborative_dreaming(
                init,
                self.population.views,
                self.aggregator,
                self.dreaming_settings(),
                public_count=self.sampler.expected_cohort,  # type: ignore[arg-type]
                ledger=self.ledger,
                on_step=on_dream_step,
                per_client_diagnostics=not self.protected,
                cohort=lambda release: self.population.set_cohort(cohorts[release]),
            )
        finally:
            self.aggregator.end_round()
        seconds["dreaming"] = time.perf_counter() - start
        snapshots = outcome.snapshots
        if self.population.votes:  # vote fractions -> logits the distillation KL can target
            t = cfg.distill.temperature
            k = cfg.dreams.vote_sharpness
            snapshots = [(x, votes_to_logits(s, t, k)) for x, s in snapshots]
        self.buffer.extend(snapshots)

        start = time.perf_counter()
        distill_loss: dict[int, float] = {}
        if (round_index + 1) % cfg.distill.every == 0:
            gens = {k: torch_generator(cfg.seed, "distill", k, round_index) for k in participants}
            distill_loss = self.population.distill(
                participants, list(self.buffer), self.distill_settings(), gens
            )
        seconds["distillation"] = time.perf_counter() - start

        start = time.perf_counter()
        acc = self.population.evaluate(self.eval_ids, self.data.test_x, self.data.test_y)
        seconds["evaluation"] = time.perf_counter() - start
        values = list(acc.values())
        soft = snapshots[-1][1]
        comm = self.ledger.snapshot()
        extra: dict[str, Any] = {}
        if isinstance(self.aggregator, CohortSecureAggregator):
            extra["secagg_seconds_total"] = self.aggregator.seconds
            extra["dp_noise_seconds_total"] = self.aggregator.noise_seconds
        if self.privacy is not None:
            extra["epsilon_by_adversary"] = self.privacy.end_round()
        return {
            "round": round_index,
            "method": "codream",
            "engine": "population",
            "cohort_sizes": [len(ids) for ids in cohorts],
            "expected_cohort": self.sampler.expected_cohort,
            "participants": len(participants),
            "train_loss_mean": statistics.fmean(train_loss.values()) if train_loss else None,
            "distill_loss_mean": statistics.fmean(distill_loss.values()) if distill_loss else None,
            "dream_terms": outcome.final_terms,
            "dream_label_histogram": torch.bincount(
                soft.argmax(dim=1).cpu(), minlength=self.data.num_classes
            ).tolist(),
            "eval_clients": len(values),
            "mean_accuracy": statistics.fmean(values),
            "std_accuracy": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "survivors": outcome.survivors,
            # mean over the whole population (non-participants receive the soft labels only)
            "bytes_up_mean": statistics.fmean(comm["up"]),  # type: ignore[arg-type]
            "bytes_down_mean": statistics.fmean(comm["down"]),  # type: ignore[arg-type]
            "stage_seconds": seconds,
            **extra,
        }


def run_population(cfg: RunConfig, out: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Run a ``clients.population`` config into run folder ``out``; returns the summary.

    Writes config.toml, metrics.jsonl (one record per round) and summary.json. No checkpoints yet,
    so ``resume`` is refused with a clear error.
    """
    if resume:
        raise RunFolderError("--resume: population runs (clients.population) have no checkpoints")
    torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    folder = RunFolder(out)
    folder.create(cfg)
    started = time.perf_counter()
    exp = PopulationExperiment(cfg, resolve_device(cfg.device))
    build_seconds = time.perf_counter() - started
    records = []
    for round_index in range(cfg.rounds):
        record = exp.round(round_index)
        folder.append_metrics(record)
        records.append(record)
    final = records[-1]
    summary: dict[str, Any] = {
        "name": cfg.name,
        "method": cfg.method,
        "engine": "population",
        "seed": cfg.seed,
        "dataset": cfg.data.dataset,
        "rounds": len(records),
        "clients": cfg.clients.count,
        "sample_rate": cfg.clients.sample_rate,
        "sampling": cfg.clients.sampling,
        "architectures": len(exp.population.groups),
        "final_mean_accuracy": final["mean_accuracy"],
        "final_std_accuracy": final["std_accuracy"],
        "eval_clients": final["eval_clients"],
        "bytes_per_client_round": statistics.fmean(
            r["bytes_up_mean"] + r["bytes_down_mean"] for r in records
        ),
        "max_participations_seen": int(exp.sampler.participations.max()),
        "timing": {
            "seconds": time.perf_counter() - started,
            "build_seconds": build_seconds,
            "stage_seconds_total": {
                stage: sum(r["stage_seconds"][stage] for r in records)
                for stage in final["stage_seconds"]
            },
        },
        "config": config_to_dict(cfg),
    }
    if exp.privacy is not None:
        report = exp.privacy.report()
        folder.write_json("privacy.json", report)
        summary["epsilon_by_adversary"] = report["epsilon_by_adversary"]
        summary["epsilon_total"] = report["epsilon_total"]
        summary["noise_multiplier"] = report["noise_multiplier"]
    folder.write_json("summary.json", summary)
    return summary
