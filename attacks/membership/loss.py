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

from attacks.membership.targets import Universe


@torch.no_grad()
def model_losses(
    models: Sequence[nn.Module], universe: Universe, batch_size: int = 1000
) -> np.ndarray:
    """[K, N] −cross-entropy of every client model on every universe sample (higher = member)."""
    out = np.empty((len(models), len(universe)))
    for k, model in enumerate(models):
        model.eval()
        device = next(model.parameters()).device
        for i in range(0, len(universe), batch_size):
            x = universe.x[i : i + batch_size].to(device)
            y = universe.y[i : i + batch_size].to(device)
            loss = F.cross_entropy(model(x).double(), y, reduction="none")
            out[k, i : i + batch_size] = (-loss).cpu().numpy()
    return out
