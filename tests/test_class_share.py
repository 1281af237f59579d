"""Class-share weighting (dreams.class_share): the shares, the weighted loss, the soft labels the
server reconstructs from a sum, and the config rules around it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from securedream.config import resolve_config
from securedream.dreams import DreamLossWeights, dream_loss
from securedream.dreams.class_share import (
    class_shares,
    dream_weights,
    mixture_logits,
    weighted_probabilities,
)
from securedream.errors import ConfigError
from securedream.rounds.client import CoDreamClient, LocalTrainingConfig

TRAINING = LocalTrainingConfig(lr=0.01, momentum=0.9, weight_decay=0.0, batch_size=8)


def test_shares_are_laplace_smoothed_fractions() -> None:
    shares = class_shares(torch.tensor([0, 0, 0, 2]), num_classes=4)
    assert torch.allclose(shares, torch.tensor([4.0, 1.0, 2.0, 1.0]) / 8.0)
    assert float(shares.sum()) == pytest.approx(1.0)


def test_dream_weights_follow_the_public_targets() -> None:
    shares = torch.tensor([0.5, 0.3, 0.2])
    weights = dream_weights(shares, 7, torch.device("cpu"))
    assert weights.tolist() == pytest.approx([0.5, 0.3, 0.2, 0.5, 0.3, 0.2, 0.5])


def test_unit_weights_leave_the_loss_unchanged_and_zero_weights_remove_a_dream() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.randn(6, 1, 4, 4)
    weights = DreamLossWeights(entropy=1.0, tv=0.0, l2=0.0, bn=0.0, target=1.0)
    plain, _, _ = dream_loss(model, x, weights)
    unit, _, _ = dream_loss(model, x, weights, dream_weights=torch.ones(6))
    assert float(unit.detach()) == pytest.approx(float(plain.detach()))
    # dream 0 weighted out: its gradient is exactly zero, the others' are not
    xg = x.clone().requires_grad_(True)
    loss, _, _ = dream_loss(model, xg, weights, dream_weights=torch.tensor([0.0, 1, 1, 1, 1, 1]))
    (grad,) = torch.autograd.grad(loss, [xg])
    assert float(grad[0].abs().sum()) == 0.0
    assert float(grad[1].abs().sum()) > 0.0


def test_server_recovers_the_share_weighted_mixture_from_the_sum() -> None:
    """Owner says class 1 with 0.9; a client that never saw class 1 says class 0 with 0.99. The
    mean of logits follows the confident outsider; the share-weighted mixture follows the owner."""
    k = 3
    owner = torch.log(torch.tensor([[0.05, 0.9, 0.05]]))
    outsider = torch.log(torch.tensor([[0.99, 0.005, 0.005]]))
    # dream index 1 targets class 1: the batch is [class 0, class 1]; look at row 1
    owner_logits = torch.cat([owner, owner])
    outsider_logits = torch.cat([outsider, outsider])
    owner_shares = class_shares(torch.tensor([1] * 50 + [2] * 50), k)
    outsider_shares = class_shares(torch.tensor([0] * 100), k)
    mean_logits = (owner_logits + outsider_logits) / 2
    assert int(mean_logits[1].argmax()) == 0
    summed = weighted_probabilities(owner_logits, owner_shares) + weighted_probabilities(
        outsider_logits, outsider_shares
    )
    temperature = 4.0
    soft = mixture_logits(summed / 2, temperature)
    p = torch.softmax(soft / temperature, dim=1)
    w_owner, w_out = float(owner_shares[1]), float(outsider_shares[1])
    expected = (w_owner * owner.exp() + w_out * outsider.exp()) / (w_owner + w_out)
    assert torch.allclose(p[1], expected[0], atol=1e-5)
    assert int(p[1].argmax()) == 1
    assert torch.allclose(p.sum(dim=1), torch.ones(2))


def test_client_answers_weighted_probabilities_only_when_enabled() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    y = torch.tensor([0, 0, 1, 1, 1, 2])
    client = CoDreamClient(0, model, torch.randn(6, 1, 4, 4), y, TRAINING, torch.device("cpu"))
    dreams = torch.randn(5, 1, 4, 4)
    logits = client.dream_logits(dreams)
    client.enable_class_share(3)
    weighted = client.dream_logits(dreams)
    shares = class_shares(y, 3)
    assert torch.allclose(weighted.sum(dim=1), shares[torch.arange(5) % 3])
    assert torch.allclose(weighted, weighted_probabilities(logits, shares))


def test_config_rules() -> None:
    ok = resolve_config(preset="smoke", overrides=["dreams.w_target=1", "dreams.class_share=true"])
    assert ok.dreams.class_share
    with pytest.raises(ConfigError, match=r"dreams\.class_share"):
        resolve_config(preset="smoke", overrides=["dreams.class_share=true", "dreams.w_target=0"])
