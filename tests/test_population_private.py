"""Secure and private population runs: cohort secure aggregation, per-adversary accounting.

The accounting is recomputed here independently: the Skellam RDP bound written out again in
numpy, the participation bound from scipy's binomial, and Opacus's accountants and RDP conversion
called directly.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import get_privacy_spent
from scipy.stats import binom

from securedream.aggregation.base import Channel
from securedream.config import resolve_config
from securedream.errors import ConfigError
from securedream.population.accounting import population_epsilons
from securedream.privacy.accounting import RDP_ORDERS, SkellamRelease

DELTA, TAIL = 1e-5, 1e-6


def skellam_rdp_reference(alpha: np.ndarray, mu: float, d2: float, d1: float) -> np.ndarray:
    """Agarwal, Kairouz and Liu (2021), Thm. 3.5, for one release."""
    return alpha * d2**2 / (4 * mu) + np.minimum(
        ((2 * alpha - 1) * d2**2 + 6 * d1) / (16 * mu**2), 3 * d1 / (4 * mu)
    )


def gaussian_like(z: float, shares: int, count: int) -> SkellamRelease:
    """A Skellam release whose variance is (z·Δ2)² at ``shares`` shares, Δ2 = 2^20 (Gaussian
    regime: the Skellam excess over the Gaussian RDP is ~1e-12)."""
    d2 = float(2**20)
    return SkellamRelease((z * d2) ** 2 / 2, d2, d2 * 10, count, shares)


def test_server_epsilon_is_unamplified_and_matches_opacus() -> None:
    z, q, units = 6.16, 0.1, 110
    release = gaussian_like(z, shares=40, count=units)
    eps = population_epsilons([release], q=q, units=units, delta=DELTA, colluders=0)
    joined = eps.participations
    assert binom.sf(joined, units, q) <= TAIL < binom.sf(joined - 1, units, q)
    assert eps.server_delta == pytest.approx(DELTA - TAIL)
    # server: J releases at sample rate 1 (no amplification), Opacus's accountant directly
    acc = RDPAccountant()
    acc.history = [(z, 1.0, joined)]
    expected = acc.get_epsilon(delta=DELTA - TAIL, alphas=list(RDP_ORDERS))
    assert eps.server == pytest.approx(expected, rel=1e-6)
    assert eps.server == pytest.approx(4.0, abs=0.05)  # privacy-review §5 (b)
    # the amplified number Opacus would give is far smaller: the server never gets it
    amplified = RDPAccountant()
    amplified.history = [(z, q, units)]
    assert eps.server > 2 * amplified.get_epsilon(delta=DELTA)


def test_observer_bound_is_sound_against_the_tight_gaussian_analysis() -> None:
    z, q, units, shares = 2.0, 0.1, 110, 40
    release = gaussian_like(z, shares=shares, count=units)
    eps = population_epsilons([release], q=q, units=units, delta=DELTA, colluders=0)
    # the observer knows its own share: it faces shares − 1 of them
    z_obs = z * math.sqrt((shares - 1) / shares)
    tight = RDPAccountant()
    tight.history = [(z_obs, q, units)]
    tight_eps = tight.get_epsilon(delta=DELTA, alphas=list(RDP_ORDERS))
    assert eps.observer_amplified
    assert tight_eps <= eps.observer < eps.server  # valid (≥ tight), and amplified (< server)
    # independent recomputation of the joint-convexity bound
    alpha = np.asarray(RDP_ORDERS)
    seen = release.seen_by(1)
    per = skellam_rdp_reference(alpha, seen.mu, seen.l2_sensitivity, seen.l1_sensitivity)
    rdp = units * np.logaddexp(math.log1p(-q), math.log(q) + (alpha - 1) * per) / (alpha - 1)
    expected, _ = get_privacy_spent(orders=list(alpha), rdp=rdp, delta=DELTA)
    assert eps.observer == pytest.approx(min(expected, eps.observer), rel=1e-9)
    assert eps.observer == pytest.approx(expected, rel=1e-6)


def test_cap_or_public_coins_remove_amplification_and_colluders_cost() -> None:
    release = gaussian_like(2.0, shares=40, count=110)
    kwargs = {"q": 0.1, "units": 110, "delta": DELTA}
    capped = population_epsilons([release], colluders=0, max_participations=10, **kwargs)
    assert capped.participations == 10 and capped.server_delta == DELTA
    assert not capped.observer_amplified and capped.observer >= capped.server
    public = population_epsilons([release], colluders=0, sampling_secret=False, **kwargs)
    assert not public.observer_amplified and public.observer >= public.server
    colluding = population_epsilons([release], colluders=10, **kwargs)
    assert colluding.server_colluders > colluding.server
    assert population_epsilons([release], colluders=40, **kwargs).server_colluders == math.inf


def test_server_bound_takes_the_costliest_releases() -> None:
    """With mixed cohort sizes, J is filled with the releases of fewest shares first."""
    small = SkellamRelease(1e6, 100.0, 1000.0, 5, 10)  # μ per share 1e5
    large = SkellamRelease(1e7, 100.0, 1000.0, 50, 100)
    eps = population_epsilons([large, small], q=0.1, units=55, delta=DELTA, colluders=0)
    joined = eps.participations
    alpha = np.asarray(RDP_ORDERS)
    rdp = 5 * skellam_rdp_reference(alpha, 1e6, 100.0, 1000.0) + (
        joined - 5
    ) * skellam_rdp_reference(alpha, 1e7, 100.0, 1000.0)
    expected, _ = get_privacy_spent(orders=list(alpha), rdp=rdp, delta=eps.server_delta)
    assert eps.server == pytest.approx(expected, rel=1e-9)


def _private_cfg(*extra: str):
    return resolve_config(
        preset="smoke",
        overrides=[
            "clients.population=true",
            "clients.count=40",
            "clients.sample_rate=0.5",
            "data.samples_per_client=4",
            "rounds=1",
            "dreams.global_steps=2",
            "threads=1",
            "secure_aggregation.enabled=true",
            'secure_aggregation.graph="harary"',
            *extra,
        ],
    )


def test_cohort_secure_aggregator_sums_the_cohort_and_skips_small_ones() -> None:
    from securedream.population.private import CohortSecureAggregator

    cfg = _private_cfg()
    agg = CohortSecureAggregator(cfg, {Channel.DREAM_GRADIENT: (3, 4)}, None)
    agg.start_round(0, list(range(40)))
    gen = torch.Generator().manual_seed(0)
    values = {k: torch.rand(3, 4, generator=gen) for k in (3, 7, 11, 20, 31)}
    result = agg.aggregate(values, channel=Channel.DREAM_GRADIENT, step=0)
    assert result.contributors == (3, 7, 11, 20, 31)
    exact = sum(values.values())
    assert torch.allclose(result.total, exact, atol=5 * agg.settings.ranges["dream"] * 1e-4)
    assert set(result.bytes_up) == set(values)
    alone = agg.aggregate({5: values[3]}, channel=Channel.DREAM_GRADIENT, step=1)
    assert alone.contributors == () and torch.equal(alone.total, torch.zeros(3, 4))


def test_private_population_run_reports_per_adversary_epsilon(tmp_path) -> None:
    from securedream.population.run import run_population

    cfg = _private_cfg(
        'privacy.placement="distributed"',
        "privacy.target_epsilon=8",
        "privacy.min_survivors=10",
        "privacy.colluders=2",
        'dreams.soft_labels="votes"',
    )
    summary = run_population(cfg, tmp_path / "run")
    report = json.loads((tmp_path / "run" / "privacy.json").read_text())
    by = report["epsilon_by_adversary"]
    assert summary["epsilon_by_adversary"] == by
    assert report["cohort_coins"] == "os.urandom" and report["observer_amplified"]
    assert report["clip"]["soft_labels"] == pytest.approx(math.sqrt(cfg.dreams.batch_size))
    assert report["noise_shares"] == 10 - 2
    assert max(report["epsilon_planned_worst_case"].values()) <= 8.0 + 1e-9
    assert report["releases_recorded"] + report["releases_skipped_small_cohort"] == 3
    # independent recomputation of the server's ε from the recorded releases: no amplification
    alpha = np.asarray(RDP_ORDERS)
    per = []
    for r in report["skellam_releases"]:
        per += [skellam_rdp_reference(alpha, r["mu"], r["l2"], r["l1"])] * r["count"]
    joined = report["participation_bound"]
    per.sort(key=lambda v: -v[0])
    rdp = np.max([np.sort(np.stack(per), axis=0)[::-1][:joined].sum(axis=0)], axis=0)
    expected, _ = get_privacy_spent(orders=list(alpha), rdp=rdp, delta=report["server_delta"])
    assert by["server"] == pytest.approx(expected, rel=1e-9)
    assert by["server+colluders"] >= by["server"]
    assert report["epsilon_total"] == max(by.values())


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (['privacy.placement="central"'], "privacy.placement"),
        (
            [
                'privacy.placement="distributed"',
                "privacy.target_epsilon=4",
                'clients.sampling="round"',
            ],
            "clients.sampling",
        ),
        (["secure_aggregation.dropout_rate=0.1"], "secure_aggregation.dropout_rate"),
    ],
)
def test_private_population_config_errors_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _private_cfg(*overrides)
    assert key in str(info.value)


def test_too_many_colluders_are_refused() -> None:
    from securedream.population.private import PopulationPrivacy

    cfg = _private_cfg(
        'privacy.placement="distributed"',
        "privacy.target_epsilon=8",
        "privacy.min_survivors=10",
        "privacy.colluders=9",
    )
    with pytest.raises(ConfigError, match=r"privacy\.colluders"):
        PopulationPrivacy(cfg, dream_dim=100, label_dim=10, dreams=4)


def test_vote_sharpness_targets_fractions_to_the_power_k() -> None:
    from securedream.population.votes import votes_to_logits

    fractions = torch.tensor([[0.5, 0.3, 0.2, 0.0]])
    t, k = 4.0, 3.0
    target = torch.softmax(votes_to_logits(fractions, t, k) / t, dim=-1)
    floored = fractions.clamp_min(1e-3)
    expected = floored**k / (floored**k).sum()
    torch.testing.assert_close(target, expected)
    with pytest.raises(ConfigError, match=r"dreams\.vote_sharpness"):
        resolve_config(preset="smoke", overrides=["dreams.vote_sharpness=2"])
