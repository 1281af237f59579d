"""White-box DeepInversion (Yin et al., CVPR 2020) of one client's model: the worst case.

CoDream never shows a model to anyone. An attacker who somehow held client k's weights could invert
the model directly — no aggregation, no other clients, no noise — which bounds what any dream could
reveal about client k's data through that model. Images start as N(0, 1) in normalised space and
are optimised with Adam on

    CE(f_k(x), y) + w_bn·Σ_BN (‖μ_batch − μ_run‖₂ + ‖σ²_batch − σ²_run‖₂) + w_tv·TV(x) + w_l2·‖x‖₂

(the engine's dream loss terms, ``securedream.dreams``) with target labels cycling over the classes.
The model stays in eval mode, so its BatchNorm running statistics are the targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from securedream.dreams import DreamLossWeights, dream_loss
from securedream.seeding import torch_generator


@dataclass(frozen=True)
class InversionSettings:
    images: int = 32
    steps: int = 300
    lr: float = 0.1
    w_bn: float = 1.0
    w_tv: float = 1e-3
    w_l2: float = 1e-4
    client: int = 0
    seed: int = 0


def deep_inversion(
    model: nn.Module,
    shape: tuple[int, int, int],
    num_classes: int,
    settings: InversionSettings,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(images in normalised space, target labels, final loss terms)."""
    model.eval()
    device = next(model.parameters()).device
    gen = torch_generator(settings.seed, "inversion", settings.client)
    x = torch.randn((settings.images, *shape), generator=gen).to(device).requires_grad_(True)
    labels = (torch.arange(settings.images) % num_classes).to(device)
    weights = DreamLossWeights(
        entropy=0.0, tv=settings.w_tv, l2=settings.w_l2, bn=settings.w_bn, diversity=0.0
    )
    optimizer = torch.optim.Adam([x], lr=settings.lr)
    terms: dict[str, float] = {}
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(settings.steps):
            optimizer.zero_grad(set_to_none=True)
            prior, terms, logits = dream_loss(model, x, weights)
            ce = F.cross_entropy(logits, labels)
            (ce + prior).backward()
            optimizer.step()
        terms = {**terms, "cross_entropy": float(ce.detach())}
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == labels).float().mean())
    terms["target_accuracy"] = accuracy
    return x.detach().cpu(), labels.cpu(), terms
