"""PNG outputs: dream grids and accuracy curves (matplotlib with the Agg backend, no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torchvision.utils import save_image


def save_dream_grid(
    dreams: torch.Tensor,
    path: Path,
    mean: Sequence[float],
    std: Sequence[float],
    max_images: int = 64,
) -> None:
    """De-normalise dreams into [0, 1] pixel space and save a square-ish grid."""
    x = dreams[:max_images].detach().cpu().float()
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = (x * std_t + mean_t).clamp(0, 1)
    nrow = max(1, int(len(pixels) ** 0.5))
    save_image(pixels, path, nrow=nrow, padding=1)


def save_accuracy_plot(records: Sequence[dict], path: Path, title: str) -> None:
    """Mean client accuracy per round with each client's curve faint behind it."""
    if not records:
        return
    # a secure/private run records no per-client accuracy, its Flower server no accuracy at all
    if any("mean_accuracy" not in r for r in records):
        return
    rounds = [r["round"] + 1 for r in records]
    with_clients = all("client_accuracy" in r for r in records)
    per_client = (
        list(zip(*[r["client_accuracy"] for r in records], strict=True)) if with_clients else []
    )
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, curve in enumerate(per_client):
        ax.plot(rounds, curve, alpha=0.35, linewidth=1, label=f"client {i}" if i < 8 else None)
    ax.plot(rounds, [r["mean_accuracy"] for r in records], color="black", linewidth=2, label="mean")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
