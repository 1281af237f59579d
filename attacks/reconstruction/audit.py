"""Reconstruction audit: dreams and a white-box inversion against training vs holdout images."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from attacks.membership.targets import PipelineRun, Universe
from attacks.reconstruction.inversion import InversionSettings, deep_inversion
from attacks.reconstruction.nearest import (
    GapResult,
    dream_gaps,
    matched_holdout,
    permutation_test,
    summarise_gaps,
)
from securedream.seeding import numpy_generator


@dataclass(frozen=True)
class ReconstructionSettings:
    confidence: float = 0.95
    seed: int = 0
    gallery: int = 12  # closest pairs shown in the gallery PNG
    control_queries: int = 64  # unseen images used as "dreams" by the negative control
    permutations: int = 1000  # label-stratified re-splits for the share's permutation null
    inversion: InversionSettings = field(default_factory=InversionSettings)
    run_inversion: bool = True


@dataclass
class ReferenceSets:
    """Per client: its training images and a label-matched holdout of the same size."""

    train: list[np.ndarray]
    holdout: list[np.ndarray]
    control_queries: np.ndarray  # non-members never used as holdout references


def reference_sets(
    universe: Universe, target: PipelineRun, settings: ReconstructionSettings
) -> ReferenceSets:
    rng = numpy_generator(settings.seed, "reconstruction-references")
    labels = universe.y.numpy()
    non_members = target.non_members()
    n_control = min(settings.control_queries, non_members.size // 3)
    control = rng.choice(non_members, n_control, replace=False)
    pool = np.setdiff1d(non_members, control)
    train = [target.members(k) for k in range(len(target.clients))]
    holdout = [matched_holdout(labels[t], pool, labels[pool], rng) for t in train]
    return ReferenceSets(train=train, holdout=holdout, control_queries=control)


def gap_report(
    gaps: GapResult,
    queries: torch.Tensor,
    settings: ReconstructionSettings,
    null: dict[str, Any],
) -> dict:
    report = summarise_gaps(gaps, settings.confidence)
    report["closer_to_train"]["permutation"] = null
    report["queries"] = int(queries.shape[0])
    # kept out of audit.json (leading underscore); used for the histogram and gallery PNGs
    report["_gaps"] = gaps
    report["_queries"] = queries
    return report


def run_reconstruction_audit(
    universe: Universe, target: PipelineRun, settings: ReconstructionSettings
) -> dict[str, Any]:
    if not target.buffer:
        raise ValueError("the run has no dreams in its buffer (was it trained?)")
    pixels = universe.pixels()
    refs = reference_sets(universe, target, settings)
    dreams = universe.pixels(torch.cat([x for x, _ in target.buffer]))
    labels = universe.y.numpy()
    rng = numpy_generator(settings.seed, "reconstruction-permutations")

    def null(queries: torch.Tensor, train: list[np.ndarray], hold: list[np.ndarray]) -> dict:
        return permutation_test(queries, pixels, train, hold, labels, rng, settings.permutations)

    result: dict[str, Any] = {
        "settings": asdict(settings),
        "reference_sizes": [int(t.size) for t in refs.train],
        "dreams": gap_report(
            dream_gaps(dreams, pixels, refs.train, refs.holdout),
            dreams,
            settings,
            null(dreams, refs.train, refs.holdout),
        ),
    }
    if settings.run_inversion:
        inv = settings.inversion
        if not 0 <= inv.client < len(target.clients):
            raise ValueError(f"inversion client must be in [0, {len(target.clients) - 1}]")
        images, _labels, terms = deep_inversion(
            target.clients[inv.client].model,
            tuple(universe.x.shape[1:]),  # type: ignore[arg-type]
            universe.num_classes,
            inv,
        )
        queries = universe.pixels(images)
        train, hold = [refs.train[inv.client]], [refs.holdout[inv.client]]
        gaps = dream_gaps(queries, pixels, train, hold)
        report = gap_report(gaps, queries, settings, null(queries, train, hold))
        report["client"] = inv.client
        report["final_terms"] = terms
        result["inversion"] = report
    return result


def reconstruction_controls(
    universe: Universe, target: PipelineRun, settings: ReconstructionSettings
) -> dict[str, Any]:
    """Positive: noisy copies of client 0's training images must sit closer to its training set.
    Negative: images no client holds must show no preference (the empirical null)."""
    pixels = universe.pixels()
    refs = reference_sets(universe, target, settings)
    rng = numpy_generator(settings.seed, "reconstruction-controls")
    train0 = refs.train[0]
    picked = rng.choice(train0, min(settings.control_queries, train0.size), replace=False)
    noise = torch.from_numpy(rng.normal(0.0, 0.05, size=tuple(pixels[picked].shape)))
    copies = (pixels[picked] + noise.to(pixels.dtype)).clamp(0, 1)
    pos = summarise_gaps(
        dream_gaps(copies, pixels, [refs.train[0]], [refs.holdout[0]]), settings.confidence
    )
    unseen = pixels[refs.control_queries]
    neg = summarise_gaps(dream_gaps(unseen, pixels, refs.train, refs.holdout), settings.confidence)
    pos_share = pos["closer_to_train"]["value"]
    neg_share = neg["closer_to_train"]["value"]
    return {
        "positive": {
            "expected": "noisy copies (σ = 0.05) of training images: ≥ 90% closer to training",
            "closer_to_train": pos["closer_to_train"],
            "median_gap_l2": pos["gap_l2"]["median"],
            "passed": pos_share >= 0.9 and pos["gap_l2"]["median"] < 0,
        },
        "negative": {
            "expected": "unseen images: share closer to training within [0.25, 0.75]",
            "closer_to_train": neg["closer_to_train"],
            "median_gap_l2": neg["gap_l2"]["median"],
            "passed": 0.25 <= neg_share <= 0.75,
        },
    }
