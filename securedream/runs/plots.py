"""PNG outputs: dream grids and accuracy curves (matplotlib with the Agg backend, no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from securedream.runs.atomic import write_with

# Dream cells are drawn at least this many pixels wide (nearest-neighbour upscaling), so an 8x8
# digits dream is visible at 100 % zoom instead of a 46x64 px thumbnail.
MIN_CELL_PIXELS = 64
LABEL_PIXELS = 12


def save_dream_grid(
    dreams: torch.Tensor,
    path: Path,
    mean: Sequence[float],
    std: Sequence[float],
    max_images: int = 64,
    labels: Sequence[int] | None = None,
) -> None:
    """De-normalise dreams into [0, 1] pixels and save an upscaled grid, one cell per dream.

    ``labels``: the class each dream's soft label points to (its argmax), printed under the cell.
    """
    from PIL import Image, ImageDraw

    x = dreams[:max_images].detach().cpu().float()
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = (x * std_t + mean_t).clamp(0, 1)
    size = pixels.shape[-1]
    scale = max(1, -(-MIN_CELL_PIXELS // size))
    if scale > 1:
        pixels = torch.nn.functional.interpolate(pixels, scale_factor=scale, mode="nearest")
    cell = pixels.shape[-1]
    nrow = max(1, int(len(pixels) ** 0.5))
    rows = -(-len(pixels) // nrow)
    label_h = LABEL_PIXELS if labels is not None else 0
    pad = 2
    width, height = nrow * (cell + pad) + pad, rows * (cell + pad + label_h) + pad
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    images = (pixels * 255).round().to(torch.uint8)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    for i, image in enumerate(images):
        left = pad + (i % nrow) * (cell + pad)
        top = pad + (i // nrow) * (cell + pad + label_h)
        grid.paste(Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB"), (left, top))
        if labels is not None:
            draw.text((left + 2, top + cell), f"class {int(labels[i])}", fill="black")
    write_with(path, lambda fh: grid.save(fh, format="PNG"))


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
    write_with(path, lambda fh: fig.savefig(fh, format="png"))
    plt.close(fig)
