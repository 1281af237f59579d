"""Controls: a setting that must leak and one that must not, for every family of attack.

An audit whose attacks find nothing is only informative if the same code *does* find a leak where
one is certain (positive control), and whose attacks find something is only informative if the same
code finds nothing where nothing can leak (negative control). Every control returns ``passed`` and
what it expected; :func:`failed_controls` lists the failures and the CLI exits non-zero on any.

- canary: positive = the mechanism without noise (plain sum) must reach the run-count ceiling
  (scope run: whole runs through the engine's real stack at the run's release lengths);
  negative = OUT runs against OUT runs must give an ε lower bound of exactly 0. The noise check
  (observed spread of OUT scores vs the noise the engine says it added) must not show *less*
  noise than accounted, and secure stacks must give releases identical to the full protocol's;
  in scope run the canary must move each release by exactly C (signal check).
- membership: positive = a model of client 0's architecture overfitted on a small set without any
  protection (loss attack AUC ≥ 0.75 with its lower limit above 0.6); negative = the target's own
  client model on two random halves of images no client holds (AUC's 99.9% interval contains 0.5).
- reconstruction: see ``attacks.reconstruction.audit.reconstruction_controls``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from attacks.canary import CanarySettings, canary_negative_control, canary_positive_control
from attacks.membership.loss import model_losses
from attacks.membership.targets import PipelineRun, Universe
from attacks.metrics import auc
from securedream.config import RunConfig
from securedream.models import build_model
from securedream.rounds.client import LocalTrainingConfig, ModelTrainer
from securedream.seeding import derive_seed, numpy_generator, torch_generator

Progress = Callable[[int], None]


class ControlFailure(RuntimeError):
    """A control did not behave: the audit's figures cannot be trusted."""


def canary_controls(
    cfg: RunConfig, settings: CanarySettings, runs: int, progress: Progress | None = None
) -> dict[str, Any]:
    small = dataclasses.replace(
        settings, runs=runs, calibration_runs=max(10, runs // 2), secure_check_runs=0
    )
    if settings.scope == "run":
        from attacks.canary_run import run_negative_control, run_positive_control

        return {
            "positive": run_positive_control(cfg, small, progress),
            "negative": run_negative_control(cfg, small, progress),
        }
    return {
        "positive": canary_positive_control(cfg, small, progress),
        "negative": canary_negative_control(cfg, small, progress),
    }


def mia_positive_control(
    universe: Universe, target: PipelineRun, *, seed: int, confidence: float
) -> dict[str, Any]:
    """Overfit a fresh model on 50 non-members (100 epochs, no protection) and attack it."""
    rng = numpy_generator(seed, "mia-positive-control")
    pool = target.non_members()
    size = min(50, pool.size // 2)
    picked = rng.permutation(pool)
    train, others = picked[:size], picked[size : 5 * size]
    name = target.cfg.client_models()[0]
    model = build_model(
        name,
        in_channels=universe.x.shape[1],
        num_classes=universe.num_classes,
        image_size=universe.x.shape[-1],
        seed=derive_seed(seed, "mia-positive-control", "model"),
    )
    trainer = ModelTrainer(
        model,
        universe.x[train],
        universe.y[train],
        LocalTrainingConfig(lr=0.05, momentum=0.9, weight_decay=0.0, batch_size=32),
        torch.device("cpu"),
    )
    trainer.train_local(100, torch_generator(seed, "mia-positive-control", "train"))
    scores = model_losses([trainer.model], universe)[0]
    idx = np.concatenate([train, others])
    labels = np.concatenate([np.ones(train.size, int), np.zeros(others.size, int)])
    est = auc(scores[idx], labels, confidence)
    return {
        "expected": "loss attack on a model overfitted without protection: AUC ≥ 0.75, lower "
        "limit > 0.6",
        "model": name,
        "members": int(train.size),
        "non_members": int(others.size),
        "auc": est.to_dict(),
        "passed": bool(est.value >= 0.75 and est.low > 0.6),
    }


def mia_negative_control(universe: Universe, target: PipelineRun, *, seed: int) -> dict[str, Any]:
    """Client 0's model on two random halves of non-members: no attack can tell them apart."""
    rng = numpy_generator(seed, "mia-negative-control")
    pool = rng.permutation(target.non_members())
    half = pool.size // 2
    labels = np.concatenate([np.ones(half, int), np.zeros(pool.size - half, int)])
    scores = model_losses([target.clients[0].model], universe)[0][pool]
    est = auc(scores, labels, 0.999)
    return {
        "expected": "images no model saw, split at random: AUC's 99.9% interval contains 0.5",
        "pseudo_members": int(half),
        "non_members": int(pool.size - half),
        "auc": est.to_dict(),
        "passed": bool(est.low <= 0.5 <= est.high),
    }


def failed_controls(results: dict[str, Any]) -> list[str]:
    """Names (dotted paths) of every control in an audit result that did not pass."""
    failed: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "passed" in node and isinstance(node["passed"], bool):
                if not node["passed"]:
                    failed.append(path)
                return
            for key, value in node.items():
                if not str(key).startswith("_"):
                    walk(value, f"{path}.{key}" if path else str(key))

    walk(results.get("controls", {}), "controls")
    return failed
