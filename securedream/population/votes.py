"""Vote counts as the soft-label channel.

Instead of its logits (unbounded, so a private run must clip them, e.g. at norm 50), each sampled
client releases one one-hot vote per dream: its argmax class. The cohort's sum is a [B, classes]
table of vote counts. One client's vote table has exactly B ones, so its L2 norm is exactly √B
whatever its model: a DP layer can use sensitivity √B with no clipping and no clipping bias
(privacy-review §5 (d)). The server divides by the public expected cohort q·N, which gives vote
fractions; :func:`votes_to_logits` turns (possibly noisy) fractions into logits whose
temperature-T softmax is the vote distribution, so distillation's KL at temperature T targets it.
"""

from __future__ import annotations

import math

import torch

MIN_FRACTION = 1e-3  # floor for noisy or empty vote fractions before the log


def one_hot_votes(logits: torch.Tensor) -> torch.Tensor:
    """[..., B, classes] logits -> one-hot float votes of the same shape (L2 norm √B per client)."""
    votes = torch.zeros_like(logits)
    return votes.scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)


def vote_sensitivity(dreams: int) -> float:
    """L2 norm of one client's vote table over ``dreams`` dreams (exact, not a clip)."""
    return math.sqrt(dreams)


def votes_to_logits(
    fractions: torch.Tensor, temperature: float, sharpness: float = 1.0
) -> torch.Tensor:
    """Logits z with softmax(z / T) = the floored vote fractions raised to ``sharpness``,
    normalised. k > 1 sharpens the target towards the plurality vote (PATE-style; post-processing
    of the released counts, so it costs no privacy)."""
    p = fractions.clamp_min(MIN_FRACTION)
    p = p / p.sum(dim=-1, keepdim=True)
    return temperature * sharpness * torch.log(p)
