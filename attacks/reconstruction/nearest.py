"""Do dreams come closer to a client's training images than to images nobody trained on?

For every dream d and client k: the nearest image (L2 in [0, 1] pixel space) among client k's
training images T_k, and the nearest among a *holdout* set H_k of the same size drawn from images no
client holds (nearest-neighbour distances shrink as a set grows, so the sizes must match). The gap

    gap_l2 = ‖d − NN_T(d)‖ − ‖d − NN_H(d)‖

is negative when the dream sits closer to training data than to unseen data of the same
distribution; a dream that copies a training image has a large negative gap. SSIM and PSNR are
computed for both nearest pairs (gap_ssim = SSIM_T − SSIM_H, gap_psnr = PSNR_T − PSNR_H: positive
when the training image is more similar). With no memorisation, P(gap_l2 < 0) = ½ up to label-mix
differences between T_k and H_k, which is why H_k is drawn with T_k's label histogram.

The binomial interval on that share treats (dream, client) pairs as independent. They are not when
many dreams share one nearest image (noise-like dreams all land on the same low-norm digit), and
then a chance property of one split decides hundreds of pairs at once. The permutation test asks
the question directly: is client k's real training set closer to these dreams than label-matched
random halves of T_k ∪ H_k are?
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from attacks.stats import clopper_pearson


def nearest(queries: torch.Tensor, references: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(index, L2 distance) of each query's nearest reference, images flattened."""
    q = queries.reshape(queries.shape[0], -1).double()
    r = references.reshape(references.shape[0], -1).double()
    dist = torch.cdist(q, r)
    values, index = dist.min(dim=1)
    return index.numpy(), values.numpy()


def _image(x: torch.Tensor) -> np.ndarray:
    a = x.detach().cpu().double().numpy()
    return a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM of two [C, H, W] images in [0, 1] (window 7, or the largest odd size that fits)."""
    side = min(a.shape[-1], a.shape[-2])
    win = min(7, side if side % 2 else side - 1)
    channel_axis = None if a.shape[0] == 1 else -1
    return float(
        structural_similarity(
            _image(a), _image(b), data_range=1.0, win_size=win, channel_axis=channel_axis
        )
    )


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [0, 1]; capped at 100 dB for identical images."""
    if torch.equal(a, b):
        return 100.0
    return float(min(100.0, peak_signal_noise_ratio(_image(a), _image(b), data_range=1.0)))


def matched_holdout(
    train_labels: np.ndarray, pool: np.ndarray, pool_labels: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Indices from ``pool`` with the same label histogram as ``train_labels`` (as far as possible).

    Labels the pool runs short of are topped up from other labels so the size always matches.
    """
    chosen: list[np.ndarray] = []
    for c, n in zip(*np.unique(train_labels, return_counts=True), strict=True):
        candidates = pool[pool_labels == c]
        chosen.append(rng.choice(candidates, min(n, candidates.size), replace=False))
    picked = np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)
    missing = train_labels.size - picked.size
    if missing > 0:
        rest = np.setdiff1d(pool, picked)
        picked = np.concatenate([picked, rng.choice(rest, min(missing, rest.size), replace=False)])
    return picked


@dataclass
class GapResult:
    """Per (dream, client) pair: distances, similarities and the indices of both neighbours."""

    client: np.ndarray
    dream: np.ndarray
    l2_train: np.ndarray
    l2_holdout: np.ndarray
    ssim_train: np.ndarray
    ssim_holdout: np.ndarray
    psnr_train: np.ndarray
    psnr_holdout: np.ndarray
    train_index: np.ndarray  # universe index of the nearest training image
    holdout_index: np.ndarray  # universe index of the nearest holdout image

    @property
    def gap_l2(self) -> np.ndarray:
        return self.l2_train - self.l2_holdout


def dream_gaps(
    queries: torch.Tensor,
    universe_pixels: torch.Tensor,
    train_sets: Sequence[np.ndarray],
    holdout_sets: Sequence[np.ndarray],
) -> GapResult:
    """Nearest training vs nearest holdout image for each query and each client.

    ``queries`` are [Q, C, H, W] pixels in [0, 1]; ``train_sets[k]``/``holdout_sets[k]`` are
    universe indices of client k's training images and of its size-matched holdout.
    """
    rows: dict[str, list[Any]] = {f: [] for f in GapResult.__dataclass_fields__}
    for k, (train, hold) in enumerate(zip(train_sets, holdout_sets, strict=True)):
        ti, td = nearest(queries, universe_pixels[train])
        hi, hd = nearest(queries, universe_pixels[hold])
        for q in range(queries.shape[0]):
            t_img = universe_pixels[train[ti[q]]]
            h_img = universe_pixels[hold[hi[q]]]
            rows["client"].append(k)
            rows["dream"].append(q)
            rows["l2_train"].append(td[q])
            rows["l2_holdout"].append(hd[q])
            rows["ssim_train"].append(ssim(queries[q], t_img))
            rows["ssim_holdout"].append(ssim(queries[q], h_img))
            rows["psnr_train"].append(psnr(queries[q], t_img))
            rows["psnr_holdout"].append(psnr(queries[q], h_img))
            rows["train_index"].append(int(train[ti[q]]))
            rows["holdout_index"].append(int(hold[hi[q]]))
    return GapResult(**{k: np.asarray(v) for k, v in rows.items()})


def permutation_test(
    queries: torch.Tensor,
    universe_pixels: torch.Tensor,
    train_sets: Sequence[np.ndarray],
    holdout_sets: Sequence[np.ndarray],
    labels: np.ndarray,
    rng: np.random.Generator,
    permutations: int = 1000,
) -> dict[str, Any]:
    """Null distribution of the share closer to training under label-stratified re-splits.

    Under "the dreams do not depend on which images were trained on", the train/holdout tags are
    exchangeable within each label of T_k ∪ H_k. Each permutation re-draws T'_k with T_k's label
    counts from the union and recomputes the share over all (dream, client) pairs, so the null
    keeps every dependence between pairs. ``p_value`` is (1 + #null ≥ observed) / (1 + P).
    """
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1, got {permutations}")
    observed = 0
    pairs = 0
    null = np.zeros(permutations, dtype=np.int64)
    for train, hold in zip(train_sets, holdout_sets, strict=True):
        union = np.concatenate([train, hold])
        q = queries.reshape(queries.shape[0], -1).double()
        dist = torch.cdist(q, universe_pixels[union].reshape(union.size, -1).double()).numpy()
        is_train = np.zeros(union.size, dtype=bool)
        is_train[: train.size] = True
        observed += _closer_count(dist, is_train)
        pairs += dist.shape[0]
        union_labels = labels[union]
        groups = [np.flatnonzero(union_labels == c) for c in np.unique(union_labels)]
        counts = [int(is_train[g].sum()) for g in groups]
        for p in range(permutations):
            mask = np.zeros(union.size, dtype=bool)
            for g, n in zip(groups, counts, strict=True):
                mask[rng.choice(g, n, replace=False)] = True
            null[p] += _closer_count(dist, mask)
    share = null / pairs
    return {
        "observed": observed / pairs,
        "p_value": float((1 + np.count_nonzero(null >= observed)) / (1 + permutations)),
        "null_mean": float(share.mean()),
        "null_q025": float(np.quantile(share, 0.025)),
        "null_q975": float(np.quantile(share, 0.975)),
        "permutations": permutations,
        "method": "label-stratified re-splits of each client's training ∪ holdout set",
    }


def _closer_count(dist: np.ndarray, is_train: np.ndarray) -> int:
    """Queries whose nearest image among ``is_train`` columns beats the rest (strictly)."""
    to_train = dist[:, is_train].min(axis=1)
    to_hold = dist[:, ~is_train].min(axis=1)
    return int(np.count_nonzero(to_train < to_hold))


def _quantiles(x: np.ndarray) -> dict[str, float]:
    qs = np.quantile(x, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {
        "mean": float(x.mean()),
        "q05": float(qs[0]),
        "q25": float(qs[1]),
        "median": float(qs[2]),
        "q75": float(qs[3]),
        "q95": float(qs[4]),
    }


def summarise_gaps(result: GapResult, confidence: float = 0.95) -> dict[str, Any]:
    """Distribution of the gaps; share of pairs closer to training data, with its interval."""
    gap = result.gap_l2
    closer = int(np.count_nonzero(gap < 0))
    n = int(gap.size)
    low, high = clopper_pearson(closer, n, confidence)
    from scipy.stats import binomtest

    return {
        "pairs": n,
        "gap_l2": _quantiles(gap),
        "gap_ssim": _quantiles(result.ssim_train - result.ssim_holdout),
        "gap_psnr": _quantiles(result.psnr_train - result.psnr_holdout),
        "l2_train": _quantiles(result.l2_train),
        "l2_holdout": _quantiles(result.l2_holdout),
        "ssim_train": _quantiles(result.ssim_train),
        "psnr_train": _quantiles(result.psnr_train),
        "closer_to_train": {
            "value": closer / n,
            "low": low,
            "high": high,
            "confidence": confidence,
            "method": "Clopper-Pearson; 0.5 means no preference for training images",
            "count": closer,
            "sign_test_p_value": float(binomtest(closer, n, 0.5, alternative="greater").pvalue),
        },
    }
