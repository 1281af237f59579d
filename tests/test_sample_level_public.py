"""Public data for private runs (``[public]``): config errors name the field, the digits are laid
out like MNIST, pre-training is deterministic and cached, dream initialisation follows the class
targets, and privacy.json names the public data as an assumption that costs no ε."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from securedream.config import resolve_config
from securedream.data.public import (
    pretrain_cached,
    public_digits,
    public_dream_init,
)
from securedream.engines.inprocess import run_experiment
from securedream.errors import ConfigError
from securedream.models import build_model

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (['public.dataset="cifar"'], "public.dataset"),
        (['data.dataset="digits"', 'public.dataset="digits"'], "public.dataset"),
        (['public.dataset="none"', "public.pretrain_epochs=3"], "public.pretrain_epochs"),
        (['public.dataset="none"', "public.dream_init=true"], "public.dream_init"),
        (['public.dataset="none"', "public.pretrain_lr=0.1"], "public.pretrain_lr"),
        (["public.pretrain_epochs=-1"], "public.pretrain_epochs"),
        (["public.pretrain_lr=0"], "public.pretrain_lr"),
        (
            ['public.dataset="digits"', "public.pretrain_epochs=0", "public.dream_init=false"],
            "public.dataset",
        ),
    ],
)
def test_bad_public_keys_name_the_field(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config(preset="private-demo", overrides=overrides)
    assert info.value.key == key


def test_public_digits_look_like_mnist() -> None:
    pub = public_digits(MNIST_MEAN, MNIST_STD)
    assert pub.x.shape == (1797, 1, 28, 28) and pub.y.shape == (1797,)
    assert sorted(pub.y.unique().tolist()) == list(range(10))
    background = (0.0 - MNIST_MEAN) / MNIST_STD
    # a 4-pixel empty frame around a 20x20 digit, as in MNIST
    assert torch.allclose(pub.x[:, :, :4, :], torch.full_like(pub.x[:, :, :4, :], background))
    assert torch.allclose(pub.x[:, :, :, -4:], torch.full_like(pub.x[:, :, :, -4:], background))
    assert float(pub.x.max()) <= (1.0 - MNIST_MEAN) / MNIST_STD + 1e-5
    assert float(pub.x[:, :, 4:24, 4:24].max()) > 2.0  # the digit itself is there


def test_pretraining_is_deterministic_cached_and_learns() -> None:
    pub = public_digits(MNIST_MEAN, MNIST_STD)
    small = type(pub)(pub.name, pub.x[:256], pub.y[:256], pub.description)
    models = [build_model("cnn-gn", in_channels=1, num_classes=10, image_size=28, seed=3)]
    models.append(build_model("cnn-gn", in_channels=1, num_classes=10, image_size=28, seed=3))
    before = _loss(models[0], small)
    settings = dict(epochs=2, lr=0.05, momentum=0.9, batch_size=32, generator_seed=7)
    for m in models:
        pretrain_cached(m, ("cnn-gn", 3), small, device=torch.device("cpu"), **settings)
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert _loss(models[0], small) < before
    # another key (other initial weights) is trained afresh, not loaded
    other = build_model("cnn-gn", in_channels=1, num_classes=10, image_size=28, seed=4)
    pretrain_cached(other, ("cnn-gn", 4), small, device=torch.device("cpu"), **settings)
    assert not torch.equal(next(other.parameters()), next(models[0].parameters()))


@torch.no_grad()
def _loss(model: torch.nn.Module, pub) -> float:  # type: ignore[no-untyped-def]
    model.eval()
    return float(torch.nn.functional.cross_entropy(model(pub.x), pub.y))


def test_dream_init_picks_public_images_of_the_target_class() -> None:
    pub = public_digits(MNIST_MEAN, MNIST_STD)
    init = public_dream_init(pub, 25, 10, torch.Generator().manual_seed(0))
    assert init.shape == (25, 1, 28, 28)
    flat = pub.x.flatten(1)
    for i, image in enumerate(init):
        matches = torch.nonzero((flat == image.flatten()).all(dim=1)).flatten()
        assert len(matches) >= 1
        assert i % 10 in pub.y[matches].tolist()


@pytest.mark.slow
def test_private_run_reports_public_data(tmp_path: Path) -> None:
    cfg = resolve_config(
        preset="private-demo",
        overrides=[
            "rounds=1",
            "clients.count=2",
            'clients.models=["cnn-gn", "cnn-gn-deep"]',
            "data.samples_per_client=60",
            "data.test_size=100",
            "clients.warmup_epochs=1",
            "dreams.global_steps=2",
            "dreams.batch_size=10",
            "distill.epochs=1",
            'public.dataset="digits"',
            "public.pretrain_epochs=1",
            "public.dream_init=true",
            "privacy.reproducible_noise=true",
        ],
    )
    run_experiment(cfg, tmp_path, progress=False)
    report = json.loads((tmp_path / "privacy.json").read_text())
    public = report["public_data"]
    assert public["dataset"] == "digits" and public["epsilon"] == 0.0
    assert "no example of any client's private data" in public["assumption"]
    assert len(public["uses"]) == 2
    # the public data does not enter the ledger: only DP-SGD steps and feature releases
    for c in report["sample_level"]["clients"]:
        assert c["feature_releases"] == 1
        assert sum(n for _, _, n in c["history"]) == c["steps"] + 1
    md = (tmp_path / "privacy.md").read_text()
    assert "Public data (no ε; an assumption)" in md
