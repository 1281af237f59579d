"""Dream losses: what each client minimises with respect to the shared dream pixels."""

from securedream.dreams.bn_hooks import BatchNormStatistics
from securedream.dreams.losses import (
    DreamLossWeights,
    batch_marginal_entropy,
    dream_loss,
    l2_prior,
    mean_entropy,
    total_variation,
)

__all__ = [
    "BatchNormStatistics",
    "DreamLossWeights",
    "batch_marginal_entropy",
    "dream_loss",
    "l2_prior",
    "mean_entropy",
    "total_variation",
]
