"""One CoDream round: local training → collaborative dreaming → soft labels → distillation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from securedream.diagnostics import Disclosure
from securedream.rounds.experiment import Experiment
from securedream.rounds.server import collaborative_dreaming
from securedream.seeding import torch_generator


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


def codream_round(
    exp: Experiment, round_index: int, on_dream_step: Callable[[int], None] | None = None
) -> dict[str, Any]:
    cfg = exp.cfg
    disclosure = Disclosure.of(cfg)
    seconds: dict[str, float] = {}
    report: dict[str, Any] = {}

    start = time.perf_counter()
    report["train_loss"] = local_training(exp, round_index)
    seconds["local_training"] = time.perf_counter() - start
    clipped = exp.measure_feature_statistics(round_index)
    if clipped is not None:
        report["feature_stats_clipped_fraction"] = clipped

    start = time.perf_counter()
    init = exp.initial_dreams(round_index)
    settings = exp.dreaming_settings(round_index)
    exp.aggregator.start_round(round_index, [c.client_id for c in exp.clients])
    try:
        outcome = collaborative_dreaming(
            init,
            exp.clients,
            exp.aggregator,
            settings,
            public_count=len(exp.clients),
            ledger=exp.ledger,
            student=exp.student.model
            if (exp.student is not None and settings.adaptive_weight > 0)
            else None,
            on_step=on_dream_step,
            per_client_diagnostics=disclosure.per_client_metrics,
        )
    finally:
        exp.aggregator.end_round()
    seconds["dreaming"] = time.perf_counter() - start
    snapshots = exp.buffer_entries(outcome.snapshots)
    exp.buffer.extend(snapshots)
    exp.last_dreams = snapshots[-1][0]
    soft = snapshots[-1][1]
    if disclosure.per_client_metrics:  # else the loop did not collect them
        report["dream_terms"] = outcome.final_terms
        report["contribution_norms"] = outcome.contribution_norms
    report["dream_label_histogram"] = torch.bincount(
        soft.argmax(dim=1).cpu(), minlength=exp.data.num_classes
    ).tolist()
    report["dream_confidence"] = float(torch.softmax(soft, dim=1).max(dim=1).values.mean())
    report["aggregations"] = outcome.aggregations + len(outcome.snapshots)
    report["survivors"] = outcome.survivors

    start = time.perf_counter()
    if (round_index + 1) % cfg.distill.every == 0:
        distill = exp.distill_settings()
        buffer = list(exp.buffer)
        report["distill_loss"] = [
            client.distill(
                buffer, distill, torch_generator(cfg.seed, "distill", client.client_id, round_index)
            )
            for client in exp.clients
        ]
        if exp.student is not None:
            exp.student.distill(
                buffer,
                distill,
                torch_generator(cfg.seed, "distill", "server", round_index),
                with_local_data=False,
            )
    seconds["distillation"] = time.perf_counter() - start
    report["stage_seconds"] = seconds
    return report
