"""Class-share weighting: each client speaks for a targeted dream in proportion to how much of the
dream's target class it has seen.

Why: under strong label skew (Dirichlet α = 0.1) a client that never saw class c still answers
confidently on a dream of class c, with some class it does know. Averaging the clients' logits then
gives wrong soft labels: on real test images of the demo family at α = 0.1 the mean-logit ensemble
of four locally trained clients is *less* accurate than its best member (0.299 vs 0.349, seed 3;
docs/algorithm.md), and the same voices pull a targeted dream's pixels towards the wrong class.

With class-targeted dreams (dream i aims at the public label i mod K, ``dreams.w_target``) each
client knows which class a dream is meant to be, so it can weight its own answer by its *share* of
that class, s_k(c) = (n_kc + 1) / (n_k + K) (Laplace-smoothed, so a class nobody holds falls back
to an equal-weight mixture). Nothing new leaves the client except through the sum:

- its dream loss for dream i is multiplied by s_k(y_i) (the server sees Σ_k of the gradients);
- its soft-label contribution is s_k(y_i)·softmax(f_k(x_i)), a vector in [0, 1]^K; the server sums
  them and normalises each row, so the soft label is the share-weighted mixture
  Σ_k s_k(y_i) p_k(x_i) / Σ_k s_k(y_i). Row i's total Σ_k s_k(y_i) is what the sum additionally
  tells the server: the clients' summed shares of class y_i.
"""

from __future__ import annotations

import torch

from securedream.dreams.losses import balanced_targets

# softmax(T·log p / T) = p; floor so a zero mixture entry gives a finite logit
MIN_PROBABILITY = 1e-6


def class_shares(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """s(c) = (n_c + 1) / (n + K): the client's Laplace-smoothed share of each class."""
    counts = torch.bincount(labels.long().cpu(), minlength=num_classes).float()
    return (counts + 1.0) / (counts.sum() + num_classes)


def dream_weights(shares: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Per-dream weight s(y_i) for the balanced targets y_i = i mod K."""
    targets = balanced_targets(batch_size, len(shares), device)
    return shares.to(device)[targets]


def weighted_probabilities(logits: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    """One client's soft-label contribution: s(y_i)·softmax(f(x_i)), each row in [0, 1]^K."""
    weights = dream_weights(shares, logits.shape[0], logits.device)
    return weights[:, None] * torch.softmax(logits, dim=1)


def mixture_logits(summed: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits z with softmax(z / T) = the row-normalised share-weighted mixture.

    ``summed`` is the aggregate of :func:`weighted_probabilities` (any positive scale: the server
    divides by the public client count first). Negative entries, possible only after DP noise, are
    floored before normalising.
    """
    p = summed.clamp_min(MIN_PROBABILITY)
    p = p / p.sum(dim=1, keepdim=True)
    return temperature * torch.log(p)


def soft_label_entries(
    snapshots: list[tuple[torch.Tensor, torch.Tensor]], temperature: float
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(dreams, aggregated share-weighted probabilities) → (dreams, :func:`mixture_logits`): what
    every engine puts in the distillation buffer when ``dreams.class_share`` is on."""
    return [(x, mixture_logits(s, temperature)) for x, s in snapshots]
