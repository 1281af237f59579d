"""Baselines on the same splits and evaluation: Independent, FedAvg, Centralized."""

from __future__ import annotations

import time
from typing import Any

import torch

from securedream.comm import tensor_bytes
from securedream.rounds.codream import local_training
from securedream.rounds.experiment import Experiment


def independent_round(exp: Experiment, round_index: int) -> dict[str, Any]:
    """Each client trains alone; nothing is exchanged (Centralized: one pooled client)."""
    start = time.perf_counter()
    losses = local_training(exp, round_index)
    return {"train_loss": losses, "stage_seconds": {"local_training": time.perf_counter() - start}}


def fedavg_round(exp: Experiment, round_index: int) -> dict[str, Any]:
    """Local training, then the sample-weighted mean of every floating-point state tensor."""
    report = independent_round(exp, round_index)
    start = time.perf_counter()
    states = [c.model.state_dict() for c in exp.clients]
    weights = torch.tensor([c.num_samples for c in exp.clients], dtype=torch.float64)
    weights = weights / weights.sum()
    averaged: dict[str, torch.Tensor] = {}
    model_bytes = 0
    for key, first in states[0].items():
        if torch.is_floating_point(first):
            stacked = torch.stack([s[key].double() for s in states])
            shape = (-1,) + (1,) * first.dim()
            averaged[key] = (
                (stacked * weights.view(shape).to(stacked.device)).sum(0).to(first.dtype)
            )
            model_bytes += tensor_bytes(first)
        else:
            averaged[key] = first.clone()  # counters such as num_batches_tracked
    for client in exp.clients:
        client.model.load_state_dict(averaged)
    ids = [c.client_id for c in exp.clients]
    exp.ledger.sent(dict.fromkeys(ids, model_bytes), "model")
    exp.ledger.received(ids, model_bytes, "model")
    report["stage_seconds"]["aggregation"] = time.perf_counter() - start
    return report
