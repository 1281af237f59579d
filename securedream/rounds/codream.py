"""One CoDream round: local training → collaborative dreaming → soft labels → distillation.

The only copy of the round logic: it runs over a :class:`~securedream.rounds.cohort.Cohort`, so
the in-process engine (:class:`ExperimentCohort`) and Flower
(``engines.flower.cohort.FlowerCohort``) execute the same body and produce the same record.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch

from securedream.diagnostics import Disclosure
from securedream.dreams.class_share import soft_label_entries
from securedream.rounds.client import CoDreamClient, DistillSettings
from securedream.rounds.cohort import Cohort, InProcessCohort
from securedream.rounds.experiment import Experiment
from securedream.rounds.server import DreamingSettings, dream_over
from securedream.runs.timing import nested_seconds, nested_stage_seconds
from securedream.seeding import torch_generator

if TYPE_CHECKING:
    from securedream.privacy.engine import RunPrivacy


class RoundServer(Protocol):
    """The server's state a round reads and updates (``Experiment``, ``FlowerCoDream``)."""

    cfg: Any  # RunConfig
    device: torch.device
    student: CoDreamClient | None
    buffer: deque[tuple[torch.Tensor, torch.Tensor]]
    last_dreams: torch.Tensor | None
    privacy: RunPrivacy | None
    num_classes: int

    def dream_shape(self) -> tuple[int, int, int, int]: ...
    def dreaming_settings(self, round_index: int) -> DreamingSettings: ...
    def distill_settings(self) -> DistillSettings: ...
    def test_split(self) -> tuple[torch.Tensor, torch.Tensor]: ...


def local_training(exp: Experiment, round_index: int) -> list[float]:
    epochs = exp.cfg.clients.local_epochs + (
        exp.cfg.clients.warmup_epochs if round_index == 0 else 0
    )
    return [
        client.train_local(
            epochs, torch_generator(exp.cfg.seed, "train", client.client_id, round_index)
        )
        for client in exp.clients
    ]


class ExperimentCohort(InProcessCohort):
    """The clients of an in-process :class:`Experiment`, summed by its aggregation stack."""

    def __init__(self, exp: Experiment) -> None:
        super().__init__(
            exp.clients,
            exp.aggregator,
            exp.ledger,
            per_client_diagnostics=Disclosure.of(exp.cfg).per_client_metrics,
        )
        self.exp = exp

    def begin_round(self, round_index: int) -> None:
        self.ledger.reset()

    def train(self, round_index: int) -> dict[str, Any]:
        report: dict[str, Any] = {"train_loss": local_training(self.exp, round_index)}
        clipped = self.exp.measure_feature_statistics(round_index)
        if clipped is not None:
            report["feature_stats_clipped_fraction"] = clipped
        return report

    def members(self) -> list[int]:
        return [c.client_id for c in self.clients]

    def distill(
        self,
        round_index: int,
        entries: Sequence[tuple[torch.Tensor, torch.Tensor]],
        buffer: Sequence[tuple[torch.Tensor, torch.Tensor]],
        due: bool,
    ) -> list[float | None] | None:
        if not due:  # the clients hold the buffer already (the ledger counted the soft labels)
            return None
        settings = self.exp.distill_settings()
        seed = self.exp.cfg.seed
        return [
            c.distill(
                list(buffer), settings, torch_generator(seed, "distill", c.client_id, round_index)
            )
            for c in self.exp.clients
        ]

    def evaluate(self, round_index: int) -> list[float | None]:
        data = self.exp.data
        return [c.evaluate(data.test_x, data.test_y) for c in self.exp.clients]

    def round_info(self) -> dict[str, Any]:
        return {}


def initial_dreams(exp: RoundServer, round_index: int) -> torch.Tensor:
    """This round's starting dreams: with ``dreams.warm_start`` the previous round's final dreams
    (same targets i mod K); with ``public.dream_init`` public images; else N(0, init_std²) noise."""
    cfg = exp.cfg
    if cfg.dreams.warm_start and exp.last_dreams is not None:
        return exp.last_dreams.detach().clone().to(exp.device)
    generator = torch_generator(cfg.seed, "dreams", round_index)
    if cfg.public.dream_init:  # validated: needs public.dataset (refused on Flower)
        from securedream.data.public import public_dream_init

        public = public_dream_init(exp.public, cfg.dreams.batch_size, exp.num_classes, generator)
        return public.to(exp.device)
    init = torch.randn(exp.dream_shape(), generator=generator)
    return (init * cfg.dreams.init_std).to(exp.device)


def buffer_entries(
    cfg: Any, snapshots: list[tuple[torch.Tensor, torch.Tensor]]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(dreams, soft logits) for the buffer. With ``dreams.class_share`` the aggregate is a sum of
    share-weighted probabilities, turned into logits whose softmax at the distillation temperature
    is the normalised mixture."""
    if not cfg.dreams.class_share:
        return snapshots
    return soft_label_entries(snapshots, cfg.distill.temperature)


def codream_round(
    exp: RoundServer,
    round_index: int,
    on_dream_step: Callable[[int], None] | None = None,
    cohort: Cohort | None = None,
) -> dict[str, Any]:
    """Training, dreaming and distillation of one round (in-process over ``exp``'s clients when
    no ``cohort`` is given); returns the round's report so far."""
    if cohort is None:
        assert isinstance(exp, Experiment)
        cohort = ExperimentCohort(exp)
    cfg = exp.cfg
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    report: dict[str, Any] = dict(cohort.train(round_index))
    seconds["local_training"] = time.perf_counter() - start

    start = time.perf_counter()
    members = cohort.members()
    init = initial_dreams(exp, round_index)
    settings = exp.dreaming_settings(round_index)
    cohort.aggregator.start_round(round_index, members)
    try:
        outcome = dream_over(
            init,
            cohort,
            settings,
            public_count=cfg.clients.count,
            student=exp.student.model
            if (exp.student is not None and settings.adaptive_weight > 0)
            else None,
            on_step=on_dream_step,
        )
    finally:
        cohort.aggregator.end_round()
    seconds["dreaming"] = time.perf_counter() - start
    snapshots = buffer_entries(cfg, outcome.snapshots)
    exp.buffer.extend(snapshots)
    exp.last_dreams = snapshots[-1][0]
    soft = snapshots[-1][1]
    if Disclosure.of(cfg).per_client_metrics:  # else the loop did not collect them
        report["dream_terms"] = outcome.final_terms
        report["contribution_norms"] = outcome.contribution_norms
    report["dream_label_histogram"] = torch.bincount(
        soft.argmax(dim=1).cpu(), minlength=exp.num_classes
    ).tolist()
    report["dream_confidence"] = float(torch.softmax(soft, dim=1).max(dim=1).values.mean())
    report["aggregations"] = outcome.aggregations + len(outcome.snapshots)
    report["survivors"] = outcome.survivors

    start = time.perf_counter()
    due = (round_index + 1) % cfg.distill.every == 0
    losses = cohort.distill(round_index, outcome.snapshots, exp.buffer, due)
    if due:
        report["distill_loss"] = losses
        if exp.student is not None:
            exp.student.distill(
                list(exp.buffer),
                exp.distill_settings(),
                torch_generator(cfg.seed, "distill", "server", round_index),
                with_local_data=False,
            )
    seconds["distillation"] = time.perf_counter() - start
    report["stage_seconds"] = seconds
    return report


def evaluation(exp: RoundServer, cohort: Cohort, round_index: int) -> dict[str, Any]:
    """Every client's test accuracy the cohort reports (all of them in-process: the harness's own
    evaluation; on Flower only where the run discloses per-client metrics), and the student's.

    ``client_accuracy`` is per client and leaves the record in a secure or private run
    (:meth:`Disclosure.round_record`); the mean and spread across clients stay.
    """
    accuracies = cohort.evaluate(round_index)
    answered = [a for a in accuracies if a is not None]
    result: dict[str, Any] = {}
    if answered:
        result["client_accuracy"] = accuracies
        result["mean_accuracy"] = statistics.fmean(answered)
        result["std_accuracy"] = statistics.pstdev(answered) if len(answered) > 1 else 0.0
    if exp.student is not None:
        result["server_accuracy"] = exp.student.evaluate(*exp.test_split())
    return result


def codream_record(
    exp: RoundServer,
    cohort: Cohort,
    round_index: int,
    on_dream_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """One whole round as the run folder records it: budget check, :func:`codream_round`,
    privacy spent, evaluation, communication; reduced to what the run discloses."""
    cohort.begin_round(round_index)
    if exp.privacy is not None:
        exp.privacy.check_budget(round_index)
    before = nested_seconds(cohort.aggregator)
    report = codream_round(exp, round_index, on_dream_step, cohort)
    report["stage_seconds"].update(nested_stage_seconds(cohort.aggregator, before))
    if exp.privacy is not None:
        report["epsilon"] = exp.privacy.end_round()
    start = time.perf_counter()
    report.update(evaluation(exp, cohort, round_index))
    report["stage_seconds"]["evaluation"] = time.perf_counter() - start
    comm = cohort.ledger.snapshot()
    report["bytes_up"] = comm["up"]
    report["bytes_down"] = comm["down"]
    report["bytes_by_channel"] = comm["by_channel"]
    report["round"] = round_index
    report["method"] = exp.cfg.method
    report.update(cohort.round_info())
    return Disclosure.of(exp.cfg).round_record(report)
