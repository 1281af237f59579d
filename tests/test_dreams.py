"""Dream loss terms against direct computations, and dreaming leaves client models untouched."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from securedream.dreams import (
    BatchNormStatistics,
    DreamLossWeights,
    batch_marginal_entropy,
    dream_loss,
    mean_entropy,
    total_variation,
)
from securedream.models import build_model
from securedream.rounds.client import CoDreamClient, LocalTrainingConfig


def _trained_bn_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 6 * 6, 5),
    )
    model.train()
    with torch.no_grad():
        for _ in range(5):  # give the running statistics non-trivial values
            model(torch.randn(16, 1, 6, 6) * 2 + 1)
    model.eval()
    return model


def test_bn_term_matches_direct_computation() -> None:
    model = _trained_bn_model()
    x = torch.randn(8, 1, 6, 6)
    stats = BatchNormStatistics(model)
    with stats:
        model(x)
    got = stats.loss()

    # direct: run the layers by hand and compare each BN input with its running buffers
    expected = torch.zeros(())
    h = x
    for layer in model:
        if isinstance(layer, nn.BatchNorm2d):
            mean = h.mean(dim=(0, 2, 3))
            var = ((h - mean.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3))
            expected = expected + torch.sqrt(((mean - layer.running_mean) ** 2).sum())
            expected = expected + torch.sqrt(((var - layer.running_var) ** 2).sum())
        h = layer(h)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert len(stats.layers) == 2


def test_bn_hooks_are_removed_and_buffers_untouched() -> None:
    model = _trained_bn_model()
    before = [b.clone() for b in model.buffers()]
    stats = BatchNormStatistics(model)
    with stats:
        model(torch.randn(4, 1, 6, 6))
    model(torch.randn(4, 1, 6, 6))
    assert len(stats._terms) == 1 * 2  # only the pass inside the context was recorded
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))


def test_model_without_bn_has_no_bn_term() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    _, terms, _ = dream_loss(model, torch.randn(2, 1, 6, 6), DreamLossWeights())
    assert terms["bn"] == 0.0


def test_entropy_terms() -> None:
    uniform = torch.zeros(4, 10)
    assert mean_entropy(uniform).item() == pytest.approx(math.log(10), rel=1e-6)
    confident = torch.tensor([[100.0, 0, 0], [0, 100.0, 0]])
    assert mean_entropy(confident).item() == pytest.approx(0.0, abs=1e-6)
    # two confident predictions of different classes: batch-marginal entropy = ln 2
    assert batch_marginal_entropy(confident).item() == pytest.approx(math.log(2), rel=1e-5)


def test_total_variation_direct() -> None:
    x = torch.randn(2, 3, 5, 4)
    direct = 0.0
    for dy, dx in ((0, 1), (1, 0), (1, -1), (1, 1)):
        a = x[:, :, max(0, dy) :, max(0, dx) : x.shape[3] + min(0, dx)]
        b = x[:, :, : x.shape[2] - dy, max(0, -dx) : x.shape[3] - max(0, dx)]
        direct += torch.sqrt(((a - b) ** 2).sum()).item()
    assert total_variation(x).item() == pytest.approx(direct, rel=1e-5)
    assert total_variation(torch.ones(1, 1, 4, 4)).item() == 0.0


def test_loss_is_weighted_sum_of_terms() -> None:
    model = _trained_bn_model()
    weights = DreamLossWeights(entropy=1.5, tv=0.01, l2=0.02, bn=0.3, diversity=0.7)
    loss, terms, _ = dream_loss(model, torch.randn(8, 1, 6, 6), weights)
    expected = (
        1.5 * terms["entropy"]
        + 0.01 * terms["tv"]
        + 0.02 * terms["l2"]
        + 0.3 * terms["bn"]
        - 0.7 * terms["diversity"]
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def _client(name: str = "cnn-bn") -> CoDreamClient:
    model = build_model(name, in_channels=1, num_classes=10, image_size=8, seed=1)
    x = torch.randn(40, 1, 8, 8)
    y = torch.arange(40) % 10
    training = LocalTrainingConfig(lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=8)
    client = CoDreamClient(0, model, x, y, training, torch.device("cpu"))
    client.train_local(1, torch.Generator().manual_seed(0))
    return client


@pytest.mark.parametrize("name", ["cnn-bn", "cnn-gn"])
def test_gradients_flow_to_dreams_only(name: str) -> None:
    client = _client(name)
    state = {k: v.clone() for k, v in client.model.state_dict().items()}
    client.optimizer.zero_grad(set_to_none=True)
    dreams = torch.randn(6, 1, 8, 8)
    grad, terms = client.dream_gradient(dreams, DreamLossWeights(bn=1.0, diversity=1.0))
    delta, _ = client.dream_delta(dreams, DreamLossWeights(bn=1.0), steps=3, lr=0.05)
    logits = client.dream_logits(dreams)
    assert grad.shape == dreams.shape and grad.abs().sum() > 0
    assert delta.shape == dreams.shape and delta.abs().sum() > 0
    assert logits.shape == (6, 10)
    assert all(p.grad is None for p in client.model.parameters())
    for key, value in client.model.state_dict().items():
        assert torch.equal(value, state[key]), f"{key} changed during dreaming"
    assert set(terms) >= {"entropy", "tv", "l2", "bn", "diversity", "total"}


def test_dream_gradient_matches_autograd_of_loss() -> None:
    client = _client()
    dreams = torch.randn(4, 1, 8, 8)
    weights = DreamLossWeights(bn=0.5, diversity=0.3)
    grad, _ = client.dream_gradient(dreams, weights)
    x = dreams.clone().requires_grad_(True)
    client.model.eval()
    loss, _, _ = dream_loss(client.model, x, weights)
    loss.backward()
    assert torch.allclose(grad, x.grad, atol=1e-6)


def test_warm_start_continues_the_last_rounds_dreams() -> None:
    """dreams.warm_start: round r starts from round r-1's final dreams; otherwise fresh noise."""
    from securedream.config import resolve_config
    from securedream.rounds.codream import initial_dreams
    from securedream.rounds.experiment import Experiment

    for warm in (False, True):
        overrides = [f"dreams.warm_start={str(warm).lower()}"]
        exp = Experiment(resolve_config(preset="smoke", overrides=overrides))
        first = initial_dreams(exp, 0)
        assert torch.equal(first, initial_dreams(exp, 0))  # seeded noise before any round
        exp.last_dreams = torch.full_like(first, 0.5)
        assert torch.equal(initial_dreams(exp, 1), exp.last_dreams) is warm
