"""Population engine: stacked clients agree with separate clients; sampling; per-adversary ε."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from securedream.config import resolve_config
from securedream.dreams import DreamLossWeights
from securedream.errors import ConfigError
from securedream.models import build_model
from securedream.population.accounting import participation_bound, sampled_accounting
from securedream.population.sampling import CohortSampler, SamplingSettings
from securedream.population.stacked import StackedGroup
from securedream.rounds.client import (
    CoDreamClient,
    DistillSettings,
    LocalTrainingConfig,
    minibatches,
)

CPU = torch.device("cpu")
TRAINING = LocalTrainingConfig(lr=0.05, momentum=0.9, weight_decay=1e-4, batch_size=3)
WEIGHTS = DreamLossWeights(entropy=1.0, tv=2.5e-5, l2=3e-8, bn=0.1, diversity=1.0)


def _pair(name: str, count: int = 3, n: int = 5):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(count, n, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (count, n), generator=gen)
    models = [
        build_model(name, in_channels=1, num_classes=10, image_size=8, seed=k) for k in range(count)
    ]
    group = StackedGroup(models, CPU)
    clients = [
        CoDreamClient(
            k,
            build_model(name, in_channels=1, num_classes=10, image_size=8, seed=k),
            x[k],
            y[k],
            TRAINING,
            CPU,
        )
        for k in range(count)
    ]
    return group, clients, x, y


def _assert_models_match(group: StackedGroup, clients: list[CoDreamClient]) -> None:
    for row, client in enumerate(clients):
        mine = group.model_of(row).state_dict()
        for name, value in client.model.state_dict().items():
            torch.testing.assert_close(mine[name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("name", ["cnn-bn", "cnn-gn"])
def test_stacked_dreaming_matches_separate_clients(name: str) -> None:
    group, clients, _, _ = _pair(name)
    dreams = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    rows = torch.tensor([2, 0])
    grads, terms = group.dream_gradients(rows, dreams, WEIGHTS)
    logits = group.logits(rows, dreams)
    for i, row in enumerate(rows.tolist()):
        expected, client_terms = clients[row].dream_gradient(dreams, WEIGHTS)
        torch.testing.assert_close(grads[i], expected, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(logits[i], clients[row].dream_logits(dreams))
        assert terms.values["total"][i].item() == pytest.approx(client_terms["total"], rel=1e-5)
    deltas, _ = group.dream_deltas(rows, dreams, WEIGHTS, steps=2, lr=0.05)
    for i, row in enumerate(rows.tolist()):
        expected, _ = clients[row].dream_delta(dreams, WEIGHTS, 2, 0.05)
        torch.testing.assert_close(deltas[i], expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["cnn-bn", "cnn-gn"])
def test_stacked_training_and_distillation_match_separate_clients(name: str) -> None:
    group, clients, x, y = _pair(name)
    rows = torch.arange(3)
    gens = [torch.Generator().manual_seed(10 + k) for k in range(3)]
    orders = [[torch.randperm(5, generator=g) for g in gens] for _ in range(2)]
    losses = group.train_local(rows, x, y, orders, TRAINING)
    for k, client in enumerate(clients):
        expected = client.train_local(2, torch.Generator().manual_seed(10 + k))
        assert losses[k].item() == pytest.approx(expected, rel=1e-4)
    _assert_models_match(group, clients)

    settings = DistillSettings(
        epochs=1,
        temperature=4.0,
        batch_size=4,
        lr=0.02,
        kd_weight=1.0,
        ce_weight=1.0,
        clip_grad_norm=0.5,
    )
    dreams = torch.randn(7, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    soft = torch.randn(7, 10, generator=torch.Generator().manual_seed(4))
    gens = [torch.Generator().manual_seed(20 + k) for k in range(3)]
    local = [minibatches(5, 4, g) for g in gens]
    dream = [minibatches(7, 4, g) for g in gens]
    plan = [
        (torch.stack([d[i] for d in dream]), torch.stack([lb[i % len(lb)] for lb in local]))
        for i in range(len(dream[0]))
    ]
    group.distill(rows, dreams, soft, x, y, plan, settings, TRAINING)
    for k, client in enumerate(clients):
        client.distill([(dreams, soft)], settings, torch.Generator().manual_seed(20 + k))
    _assert_models_match(group, clients)


def test_subset_training_leaves_other_clients_untouched() -> None:
    group, _, x, y = _pair("cnn-bn")
    before = group.model_of(1).state_dict()
    rows = torch.tensor([0, 2])
    orders = [[torch.randperm(5), torch.randperm(5)]]
    group.train_local(rows, x[rows], y[rows], orders, TRAINING)
    after = group.model_of(1).state_dict()
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert not torch.equal(
        group.model_of(0).state_dict()["classifier.weight"], before["classifier.weight"]
    )


def test_population_round_runs_with_sampling() -> None:
    from securedream.population.run import PopulationExperiment

    cfg = resolve_config(
        preset="smoke",
        overrides=[
            "clients.count=40",
            "clients.population=true",
            "clients.sample_rate=0.25",
            "clients.max_participations=3",
            'clients.models=["cnn-bn", "cnn-gn"]',
            "data.samples_per_client=4",
            "dreams.global_steps=3",
            "threads=1",
        ],
    )
    exp = PopulationExperiment(cfg)
    first = exp.round(0)
    assert first["expected_cohort"] == 10.0
    assert len(first["cohort_sizes"]) == 4 and first["participants"] <= 40
    assert 0.0 <= first["mean_accuracy"] <= 1.0 and first["eval_clients"] == 32
    exp.round(1)
    assert exp.sampler.participations.max() <= 3
    again = PopulationExperiment(cfg).round(0)
    assert again["cohort_sizes"] == first["cohort_sizes"]
    assert again["mean_accuracy"] == first["mean_accuracy"]


def test_sampler_rate_cap_and_secret_stream() -> None:
    plain = CohortSampler(2000, SamplingSettings(0.1), seed=5)
    sizes = [len(plain.cohort(0, r)) for r in range(20)]
    assert abs(np.mean(sizes) - 200) < 4 * math.sqrt(200 * 0.9 / 20)
    again = CohortSampler(2000, SamplingSettings(0.1), seed=5)
    assert np.array_equal(
        again.cohort(0, 0), CohortSampler(2000, SamplingSettings(0.1), 5).cohort(0, 0)
    )
    secret = [
        CohortSampler(2000, SamplingSettings(0.1, secret=True), 5).cohort(0, 0) for _ in range(2)
    ]
    assert not np.array_equal(secret[0], secret[1])  # os.urandom, not the seed
    capped = CohortSampler(50, SamplingSettings(0.5, max_participations=2), seed=1)
    for r in range(30):
        capped.cohort(0, r)
    assert capped.participations.max() == 2
    per_round = CohortSampler(100, SamplingSettings(0.3, unit="round"), seed=2)
    assert np.array_equal(per_round.cohort(0, 0), per_round.cohort(0, 5))
    assert not np.array_equal(per_round.cohort(0, 0), per_round.cohort(1, 0))


def test_sampled_accounting_matches_opacus_and_review() -> None:
    from opacus.accountants import RDPAccountant
    from scipy.stats import binom

    z, q, releases, delta = 1.53, 0.1, 110, 1e-5
    result = sampled_accounting(z, q, releases, delta=delta)
    acc = RDPAccountant()
    acc.history = [(z, q, releases)]
    assert result.observer == pytest.approx(acc.get_epsilon(delta=delta), rel=1e-9)
    m = result.server_participations
    assert binom.sf(m, releases, q) <= 1e-6 < binom.sf(m - 1, releases, q)
    server = RDPAccountant()
    server.history = [(z, 1.0, m)]
    assert result.server == pytest.approx(server.get_epsilon(delta=delta - 1e-6), rel=1e-9)
    assert result.observer == pytest.approx(4.0, abs=0.05)  # privacy-review §5 (b)
    assert sampled_accounting(6.16, q, releases, delta=delta).server == pytest.approx(4.0, abs=0.05)
    # a cap bounds the server and removes the (unproven) amplified observer claim
    capped = sampled_accounting(z, q, releases, delta=delta, max_participations=10)
    assert capped.server_participations == 10 and capped.observer == capped.server
    assert not capped.observer_amplified
    # cohorts predictable from the seed: no amplification for anyone
    public = sampled_accounting(z, q, releases, delta=delta, sampling_secret=False)
    assert public.observer == public.server
    # per-round sampling: r releases on one cohort compose as one Gaussian of z/sqrt(r)
    rounds = sampled_accounting(9.35, q, 1010, delta=delta, releases_per_unit=101)
    acc = RDPAccountant()
    acc.history = [(9.35 / math.sqrt(101), q, 10)]
    assert rounds.observer == pytest.approx(acc.get_epsilon(delta=delta), rel=1e-9)
    assert rounds.server_participations == 7  # P(Binomial(10, 0.1) >= 7) = 9.1e-6 (review)
    assert participation_bound(10, 1.0, 1e-6) == 10


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["clients.sample_rate=0.5"], "clients.sample_rate"),
        (["clients.population=true", 'privacy.placement="central"'], "privacy.placement"),
        (["clients.population=true", "clients.sample_rate=0"], "clients.sample_rate"),
        (["clients.population=true", 'clients.sampling="epoch"'], "clients.sampling"),
    ],
)
def test_population_config_errors_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config(preset="smoke", overrides=overrides)
    assert key in str(info.value)


def test_votes_have_sensitivity_sqrt_b_and_round_trip_to_logits() -> None:
    from securedream.population.votes import one_hot_votes, vote_sensitivity, votes_to_logits

    logits = torch.randn(5, 16, 10, generator=torch.Generator().manual_seed(0)) * 50
    votes = one_hot_votes(logits)
    norms = torch.linalg.vector_norm(votes.flatten(1), dim=1)
    torch.testing.assert_close(norms, torch.full((5,), vote_sensitivity(16)))
    assert torch.equal(votes.argmax(-1), logits.argmax(-1))
    fractions = votes.sum(0) / 5
    t = 4.0
    target = torch.softmax(votes_to_logits(fractions, t) / t, dim=-1)
    floored = fractions.clamp_min(1e-3)
    torch.testing.assert_close(target, floored / floored.sum(-1, keepdim=True))


@pytest.mark.slow  # ~30 s unloaded (two architectures, local dream steps, SecAgg + DP)
def test_cross_device_preset_runs_tiny_with_votes(tmp_path) -> None:
    from securedream.population.run import run_population

    cfg = resolve_config(
        preset="cross-device",
        overrides=[
            "clients.count=20",
            "clients.sample_rate=0.3",
            "privacy.min_survivors=4",
            "privacy.colluders=1",
            "dreams.global_steps=2",
            "dreams.local_steps=2",
            "rounds=1",
            "threads=1",
            "data.test_size=100",
        ],
    )
    assert cfg.dreams.soft_labels == "votes" and cfg.clients.population
    summary = run_population(cfg, tmp_path / "run")
    assert summary["engine"] == "population" and summary["architectures"] == 2
    assert summary["epsilon_total"] is not None  # the preset is private (distributed DP)
    assert 0.0 <= summary["final_mean_accuracy"] <= 1.0
    with pytest.raises(ConfigError, match=r"dreams\.soft_labels"):
        resolve_config(preset="smoke", overrides=['dreams.soft_labels="votes"'])
