"""The loss-threshold baseline (Yeom et al. 2018): members have lower loss than non-members.

One global threshold for every sample, no shadow models: the score is −cross-entropy of the model
on the sample. For the dream oracle the analogue is a global threshold on the planted dream's
gradient statistic (``targets.oracle_observations`` already returns it with "higher = member").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attacks.membership.targets import Universe, per_sample_scores


def _negative_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(logits.double(), labels, reduction="none")


def model_losses(
    models: Sequence[nn.Module], universe: Universe, batch_size: int = 1000
) -> np.ndarray:
    """[K, N] −cross-entropy of every client model on every universe sample (higher = member)."""
    return per_sample_scores(models, universe, _negative_loss, batch_size)
