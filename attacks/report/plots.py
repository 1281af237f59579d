"""PNG plots of an audit (matplotlib, Agg): ROC curves, score and gap histograms, galleries."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from attacks.reconstruction.nearest import GapResult
from securedream.runs import atomic


def roc_plot(
    rocs: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str, negatives: int
) -> Path:
    """Log-log ROC: the low-FPR region, where membership inference matters, is visible."""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    floor = 1.0 / max(negatives, 1)
    for name, (fpr, tpr) in rocs.items():
        ax.plot(np.maximum(fpr, floor / 2), np.maximum(tpr, floor / 2), label=name, linewidth=1.5)
    grid = np.logspace(np.log10(floor / 2), 0, 50)
    ax.plot(grid, grid, "k--", linewidth=0.8, label="chance")
    ax.axvline(
        floor, color="grey", linestyle=":", linewidth=0.8, label=f"FPR resolution 1/{negatives}"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor / 2, 1)
    ax.set_ylim(floor / 2, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic.write_with(path, lambda fh: fig.savefig(fh, format="png"))
    plt.close(fig)
    return path


def canary_plot(
    scores_in: np.ndarray, scores_out: np.ndarray, threshold: float, path: Path, title: str
) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    lo = float(min(scores_in.min(), scores_out.min()))
    hi = float(max(scores_in.max(), scores_out.max()))
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    bins = np.linspace(lo, hi, 80)
    ax.hist(scores_out, bins=bins, alpha=0.55, label="OUT (canary absent)", log=True)
    ax.hist(scores_in, bins=bins, alpha=0.55, label="IN (canary planted)", log=True)
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label="threshold")
    ax.set_xlabel("score = Σ⟨release − known, u⟩ / C")
    ax.set_ylabel("runs (log)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic.write_with(path, lambda fh: fig.savefig(fh, format="png"))
    plt.close(fig)
    return path


def gap_histogram(gaps: Mapping[str, np.ndarray], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    values = [g for g in gaps.values() if g.size]
    if values:
        allv = np.concatenate(values)
        bins = np.linspace(float(allv.min()), float(allv.max()) + 1e-9, 40)
        for name, g in gaps.items():
            if g.size:
                ax.hist(g, bins=bins, alpha=0.5, density=True, label=f"{name} (n={g.size})")
    ax.axvline(0, color="black", linewidth=1)
    ax.set_xlabel(
        "L2 to nearest training image − L2 to nearest holdout image (< 0: closer to training)"
    )
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic.write_with(path, lambda fh: fig.savefig(fh, format="png"))
    plt.close(fig)
    return path


def _show(ax: plt.Axes, image: torch.Tensor, caption: str) -> None:
    img = image.detach().cpu().numpy()
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(np.moveaxis(img, 0, -1).clip(0, 1))
    ax.set_title(caption, fontsize=6)
    ax.axis("off")


def gallery(
    queries: torch.Tensor,
    universe_pixels: torch.Tensor,
    gaps: GapResult,
    count: int,
    path: Path,
    title: str,
) -> Path:
    """The ``count`` (query, client) pairs closest to a training image: query | train | holdout."""
    order = np.argsort(gaps.l2_train)[:count]
    rows = max(1, len(order))
    fig, axes = plt.subplots(rows, 3, figsize=(4.2, 1.45 * rows), dpi=100, squeeze=False)
    for r, i in enumerate(order):
        _show(
            axes[r, 0], queries[gaps.dream[i]], f"query {gaps.dream[i]} (client {gaps.client[i]})"
        )
        _show(
            axes[r, 1],
            universe_pixels[gaps.train_index[i]],
            f"train L2 {gaps.l2_train[i]:.2f} SSIM {gaps.ssim_train[i]:.2f}",
        )
        _show(
            axes[r, 2],
            universe_pixels[gaps.holdout_index[i]],
            f"holdout L2 {gaps.l2_holdout[i]:.2f} SSIM {gaps.ssim_holdout[i]:.2f}",
        )
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / rows))
    atomic.write_with(path, lambda fh: fig.savefig(fh, format="png"))
    plt.close(fig)
    return path


def label_plot(estimates: np.ndarray, truth: np.ndarray, path: Path, title: str) -> Path:
    k, classes = truth.shape
    fig, axes = plt.subplots(1, k, figsize=(2.6 * k, 2.6), dpi=100, squeeze=False)
    x = np.arange(classes)
    for i in range(k):
        ax = axes[0, i]
        ax.bar(x - 0.2, truth[i], width=0.4, label="true")
        ax.bar(x + 0.2, estimates[i], width=0.4, label="estimated")
        ax.set_title(f"client {i}", fontsize=8)
        ax.set_xticks(x)
        ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    atomic.write_with(path, lambda fh: fig.savefig(fh, format="png"))
    plt.close(fig)
    return path
