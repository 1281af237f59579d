"""Public data for private runs: scikit-learn's digits, reshaped to look like the private images.

Sample-level DP-SGD on a few hundred private examples per client leaves the models near chance
(docs/privacy.md). Public data costs no ε, so a private run may use it freely — as long as it is
truly public and not drawn from the private distribution's own samples. scikit-learn's 1,797
8x8 digits (UCI "optical recognition of handwritten digits", 1998) are a different dataset from
MNIST, ship with scikit-learn and are read offline. Here they are upscaled to MNIST's layout (a
20x20 digit centred in a 28x28 frame, as MNIST's digits are) and normalised with the private
dataset's published statistics, so one model can read both.

Two uses, both outside any DP ledger: pre-training every client model before DP-SGD
(``clients.public_pretrain``), and starting dreams from public images instead of noise
(``dreams.init = "public"``). Using them is an assumption the privacy report names: the public set
must not contain any private example.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PUBLIC_SOURCES = ("none", "digits")
# datasets whose images the digits can be made to look like (1 channel, 28x28 handwritten digits)
PUBLIC_TARGETS = ("mnist5k", "mnist")


@dataclass(frozen=True)
class PublicData:
    """Normalised public images ``x`` [N, C, H, W], labels ``y`` [N], and where they came from."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    description: str


@functools.lru_cache(maxsize=4)
def public_digits(mean: float, std: float, image_size: int = 28) -> PublicData:
    """All 1,797 sklearn digits as ``image_size``² images: 8x8 → 20x20 (bilinear) in a 28x28 frame,
    pixels in [0, 1], then normalised with ``mean``/``std`` (the private dataset's)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    inner = round(image_size * 20 / 28)
    x = F.interpolate(x, size=(inner, inner), mode="bilinear", align_corners=False)
    pad = image_size - inner
    x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)).clamp(0.0, 1.0)
    x = (x - mean) / std
    y = torch.as_tensor(digits.target, dtype=torch.long)
    x.requires_grad_(False)
    return PublicData(
        "digits",
        x,
        y,
        "scikit-learn digits (UCI optical recognition of handwritten digits, 1,797 images), "
        f"8x8 upscaled to a 20x20 digit in a {image_size}x{image_size} frame",
    )


def load_public(
    name: str, dataset: str, mean: tuple[float, ...], std: tuple[float, ...]
) -> PublicData:
    """The public set ``name`` prepared for private dataset ``dataset`` (config-validated)."""
    if name != "digits" or dataset not in PUBLIC_TARGETS:
        raise ValueError(f"no public set {name!r} for dataset {dataset!r}")
    return public_digits(float(mean[0]), float(std[0]))


def _shift(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels per image (zero padding = background)."""
    if max_shift == 0:
        return x
    n = x.shape[0]
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
    padded = F.pad(x, (max_shift,) * 4, value=float(x.min()))
    h, w = x.shape[-2:]
    rows = [
        padded[i, :, max_shift + dy : max_shift + dy + h, max_shift + dx : max_shift + dx + w]
        for i, (dy, dx) in enumerate(shifts.tolist())
    ]
    return torch.stack(rows)


def pretrain(
    model: nn.Module,
    data: PublicData,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    max_shift: int = 2,
) -> float:
    """Plain (non-private) cross-entropy SGD on public data, with random shifts; returns the last
    epoch's mean loss. Private data is not touched."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    model.train()
    last = 0.0
    n = len(data.y)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            x = _shift(data.x[idx], generator, max_shift).to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), data.y[idx].to(device))
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        last = total / n
    return last


# Pre-training is deterministic in (architecture, initial weights, settings), and a bench runs the
# same (seed, client) many times in one process (every method and ε); keep the results.
_PRETRAINED: dict[tuple[object, ...], dict[str, torch.Tensor]] = {}


def pretrain_cached(
    model: nn.Module,
    key: tuple[object, ...],
    data: PublicData,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    batch_size: int,
    generator_seed: int,
    device: torch.device,
) -> None:
    """``pretrain`` in place, or load the weights of an identical earlier pre-training.

    ``key`` must identify the model's architecture and initial weights (e.g. its name and
    initialisation seed); the settings and the public set are added to it here.
    """
    full = (*key, data.name, tuple(data.x.shape), epochs, lr, momentum, batch_size, generator_seed)
    saved = _PRETRAINED.get(full)
    if saved is None:
        pretrain(
            model,
            data,
            epochs=epochs,
            lr=lr,
            momentum=momentum,
            batch_size=batch_size,
            generator=torch.Generator().manual_seed(generator_seed),
            device=device,
        )
        if len(_PRETRAINED) > 64:
            _PRETRAINED.clear()
        _PRETRAINED[full] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    else:
        model.load_state_dict(saved)


def public_dream_init(
    data: PublicData, batch_size: int, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """Dream i starts as a random public image of class i mod K (the class ``dreams.w_target``
    aims it at)."""
    out = []
    by_class = [torch.nonzero(data.y == c).flatten() for c in range(num_classes)]
    for i in range(batch_size):
        pool = by_class[i % num_classes]
        out.append(data.x[pool[int(torch.randint(len(pool), (1,), generator=generator))]])
    return torch.stack(out)


def report_entry(name: str, description: str, pretrain_epochs: int, dream_init: bool) -> dict:
    """privacy.json's ``public_data``: what public data the run used, and the assumption."""
    uses = []
    if pretrain_epochs > 0:
        uses.append(f"non-private pre-training of every client model for {pretrain_epochs} epochs")
    if dream_init:
        uses.append("dream initialisation (dream i starts from a public image of class i mod K)")
    return {
        "dataset": name,
        "description": description,
        "uses": uses,
        "epsilon": 0.0,
        "assumption": "the public set is public and contains no example of any client's private "
        "data; it costs no ε only under this assumption, which the user must hold",
    }


def markdown_lines(entry: dict) -> list[str]:
    """privacy.md lines for a ``report_entry`` dict."""
    return [
        "## Public data (no ε; an assumption)",
        "",
        f'- {entry["description"]} (`public.dataset = "{entry["dataset"]}"`)',
        *[f"- used for: {use}" for use in entry["uses"]],
        f"- ε spent on it: {entry['epsilon']:g}, because {entry['assumption']}",
        "",
    ]
