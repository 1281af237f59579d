"""The per-client dream objective L_k (DESIGN.md §2) and its parts.

Each part is a small function so tests can check it against a direct computation, and so the metrics
can log the size of each term: the balance between them decides whether dreams are useful (see
ANCHORS.md calibration: at BN weight 10 the BN term dominates small CNNs by two orders of
magnitude).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from securedream.dreams.bn_hooks import BatchNormStatistics
from securedream.dreams.terms import LossTerms
from securedream.privacy.feature_stats import FeatureStatisticsLoss, LayerTarget


@dataclass(frozen=True)
class DreamLossWeights:
    entropy: float = 1.0
    tv: float = 2.5e-5
    l2: float = 3e-8
    bn: float = 10.0
    diversity: float = 0.0
    feature: float = 0.0  # DP feature-statistics term (GroupNorm models, privacy/feature_stats)
    target: float = 0.0  # cross-entropy to public, class-balanced dream labels


def mean_entropy(logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of H(softmax(logits)); minimising it makes dreams confident.

    ``weights`` (one per dream) turn the mean into Σ_i w_i H_i / B (class-share weighting).
    """
    log_p = F.log_softmax(logits, dim=1)
    per_dream = -(log_p.exp() * log_p).sum(dim=1)
    return per_dream.mean() if weights is None else (weights * per_dream).mean()


def balanced_targets(batch_size: int, num_classes: int, device: torch.device) -> torch.Tensor:
    """Dream i aims at class i mod K: public labels (no client sends or learns anything new)."""
    return torch.arange(batch_size, device=device) % num_classes


def batch_marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H of the batch-mean prediction (DAFL); maximising it spreads dreams over classes."""
    mean_p = F.softmax(logits, dim=1).mean(dim=0)
    return -(mean_p * torch.log(mean_p.clamp_min(1e-12))).sum()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """DeepInversion's L2 total variation: norms of horizontal, vertical and both diagonal diffs."""
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return sum(torch.linalg.vector_norm(d) for d in (d1, d2, d3, d4))  # type: ignore[return-value]


def l2_prior(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x)


def dream_loss(
    model: nn.Module,
    x: torch.Tensor,
    weights: DreamLossWeights,
    *,
    use_bn: bool = True,
    feature_targets: list[LayerTarget] | None = None,
    dream_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, LossTerms, torch.Tensor]:
    """L_k(x) for one client's model; returns (loss, unweighted terms for logging, logits).

    The model must be in eval mode: BatchNorm then normalises with its running statistics, which
    are the targets of the BN term, and dreams never leak into those buffers. ``feature_targets``
    (the client's DP feature statistics) add the same kind of term at GroupNorm inputs.
    ``dream_weights`` (one per dream, :mod:`securedream.dreams.class_share`) weight the per-dream
    terms (entropy and target cross-entropy) by how much this client should speak for each dream.
    """
    stats = BatchNormStatistics(model)
    features = (
        FeatureStatisticsLoss(model, feature_targets)
        if feature_targets is not None and weights.feature > 0
        else None
    )
    with stats:
        if features is not None:
            with features:
                logits = model(x)
        else:
            logits = model(x)
    entropy = mean_entropy(logits, dream_weights)
    tv = total_variation(x)
    l2 = l2_prior(x)
    bn = (
        stats.loss().to(x.device)
        if (use_bn and stats.available)
        else torch.zeros((), device=x.device)
    )
    feature = (
        features.loss().to(x.device) if features is not None else torch.zeros((), device=x.device)
    )
    diversity = batch_marginal_entropy(logits)
    if weights.target > 0:
        per_dream = F.cross_entropy(
            logits, balanced_targets(len(x), logits.shape[1], x.device), reduction="none"
        )
        target = per_dream.mean() if dream_weights is None else (dream_weights * per_dream).mean()
    else:
        target = torch.zeros((), device=x.device)
    loss = (
        weights.entropy * entropy
        + weights.tv * tv
        + weights.l2 * l2
        + weights.bn * bn
        - weights.diversity * diversity
        + weights.feature * feature
        + weights.target * target
    )
    # kept on the device until read (LossTerms): no host synchronisation inside a dream step
    terms = LossTerms(
        {
            "entropy": entropy,
            "tv": tv,
            "l2": l2,
            "bn": bn,
            "diversity": diversity,
            "feature": feature,
            "target": target,
            "total": loss,
        }
    )
    return loss, terms, logits
