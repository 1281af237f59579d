"""Client-level DP: clipping, noise of the configured size, accounting equal to Opacus, budget."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.rdp import get_privacy_spent
from scipy import stats

from securedream.aggregation import Channel, PlainAggregator
from securedream.config import resolve_config
from securedream.engines.inprocess import run_experiment
from securedream.privacy.accounting import (
    RDP_ORDERS,
    GaussianRelease,
    PrivacyLedger,
    SkellamRelease,
    gaussian_epsilon,
    noise_for_epsilon,
    skellam_rdp,
)
from securedream.privacy.aggregator import DPAggregator, DPSettings
from securedream.privacy.clipping import clip_l2
from securedream.privacy.noise import NoiseSource, poisson_log_pmf

# Statistical tests below use a false-failure rate of 1e-6 each.
ALPHA = 1e-6

TINY = [
    "rounds=2",
    "dreams.global_steps=3",
    "dreams.batch_size=8",
    "data.samples_per_client=60",
    "distill.epochs=1",
    "clients.count=3",
    'clients.models="cnn-bn"',
]


@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=64),
    st.floats(1e-3, 1e3),
)
def test_clipping_bounds_every_contribution(values, clip) -> None:
    x = torch.tensor(values, dtype=torch.float32)
    clipped = clip_l2(x, clip)
    norm = float(torch.linalg.vector_norm(clipped.double()))
    assert norm <= clip * (1 + 1e-5)
    if float(torch.linalg.vector_norm(x.double())) <= clip * (1 - 1e-5):
        assert torch.equal(clipped, x)  # small contributions are untouched
    else:  # direction preserved
        cos = torch.nn.functional.cosine_similarity(clipped.double(), x.double(), dim=0)
        assert cos > 1 - 1e-6 or float(torch.linalg.vector_norm(x)) == 0


def _chi2_std_interval(n: int, std: float) -> tuple[float, float]:
    lo = math.sqrt(stats.chi2.ppf(ALPHA / 2, n - 1) / (n - 1)) * std
    hi = math.sqrt(stats.chi2.ppf(1 - ALPHA / 2, n - 1) / (n - 1)) * std
    return lo, hi


def test_gaussian_sampler_has_configured_std_and_is_normal() -> None:
    samples = NoiseSource.from_seed(1, "t").gaussian(200_000, 2.5)
    lo, hi = _chi2_std_interval(len(samples), 2.5)
    assert lo <= samples.std(ddof=1) <= hi
    assert abs(samples.mean()) < stats.norm.ppf(1 - ALPHA / 2) * 2.5 / math.sqrt(len(samples))
    assert stats.kstest(samples / 2.5, "norm").pvalue > ALPHA


@pytest.mark.parametrize("mu", [0.7, 4.0, 25.0, 1e4, 1e9, 1e12, 5e14])
def test_skellam_sampler_moments(mu: float) -> None:
    samples = NoiseSource.from_seed(2, mu).skellam(100_000, mu)
    assert samples.dtype == np.int64
    std = math.sqrt(2 * mu)
    lo, hi = _chi2_std_interval(len(samples), std)
    assert lo <= samples.std(ddof=1) <= hi
    if mu <= 25:  # exact distribution check where scipy's pmf is cheap: chi-square GOF
        values, counts = np.unique(samples, return_counts=True)
        keep = counts >= 20
        expected = stats.skellam.pmf(values[keep], mu, mu) * len(samples)
        observed = counts[keep]
        expected *= observed.sum() / expected.sum()
        assert stats.chisquare(observed, expected).pvalue > ALPHA


@pytest.mark.parametrize("mu", [10.0, 37.5, 1000.0])
def test_poisson_log_pmf_matches_scipy(mu: float) -> None:
    k = np.arange(0, int(mu + 12 * math.sqrt(mu)))
    assert np.allclose(poisson_log_pmf(k, mu), stats.poisson.logpmf(k, mu), atol=1e-10, rtol=0)


@pytest.mark.parametrize("mu", [1e8, 1e12, 2.0**50])
def test_poisson_log_pmf_is_normalised_at_large_means(mu: float) -> None:
    """Where −μ + k·log μ − log k! cancels catastrophically, the stable form still sums to 1."""
    sigma = math.sqrt(mu)
    k = np.round(mu + np.arange(-12 * sigma, 12 * sigma, max(1.0, sigma / 200)))
    step = k[1] - k[0]
    total = np.exp(poisson_log_pmf(k, mu)).sum() * step
    assert total == pytest.approx(1.0, abs=1e-3)


def test_noise_keys() -> None:
    a = NoiseSource.from_seed(3).gaussian(10, 1.0)
    b = NoiseSource.from_seed(3).gaussian(10, 1.0)
    c = NoiseSource.from_seed(4).gaussian(10, 1.0)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert NoiseSource.from_os().secure and not NoiseSource.from_seed(3).secure
    assert not np.array_equal(
        NoiseSource.from_os().gaussian(10, 1), NoiseSource.from_os().gaussian(10, 1)
    )


def test_central_noise_added_has_std_z_times_c() -> None:
    ledger = PrivacyLedger("rdp", 1e-5)
    settings = DPSettings(
        "central", noise_multiplier=3.0, clip_gradient=0.5, clip_logits=2.0, min_survivors=2
    )
    dp = DPAggregator(PlainAggregator(), settings, ledger, lambda r: NoiseSource.from_seed(9, r))
    zeros = {0: torch.zeros(50_000), 1: torch.zeros(50_000)}
    noise = dp.aggregate(zeros, channel=Channel.DREAM_GRADIENT, step=0).total.double().numpy()
    lo, hi = _chi2_std_interval(len(noise), 1.5)
    assert lo <= noise.std(ddof=1) <= hi
    logit_noise = dp.aggregate(zeros, channel=Channel.LOGITS, step=0).total.double().numpy()
    lo, hi = _chi2_std_interval(len(logit_noise), 6.0)
    assert lo <= logit_noise.std(ddof=1) <= hi
    assert ledger.channel("dream_gradient").releases == 1
    assert ledger.channel("logits").releases == 1


def test_central_clips_before_summing() -> None:
    settings = DPSettings(
        "central", noise_multiplier=1e-9, clip_gradient=1.0, clip_logits=1.0, min_survivors=1
    )
    dp = DPAggregator(
        PlainAggregator(),
        settings,
        PrivacyLedger("rdp", 1e-5),
        lambda r: NoiseSource.from_seed(0, r),
    )
    big = {0: torch.full((4,), 100.0), 1: torch.zeros(4)}
    total = dp.aggregate(big, channel=Channel.LOGITS, step=0).total
    assert float(torch.linalg.vector_norm(total)) == pytest.approx(1.0, rel=1e-4)


def test_distributed_needs_secure_aggregation() -> None:
    from securedream.errors import SecureDreamError

    settings = DPSettings("distributed", 1.0, 1.0, 1.0, 2)
    with pytest.raises(SecureDreamError, match="secure_aggregation"):
        DPAggregator(
            PlainAggregator(),
            settings,
            PrivacyLedger("rdp", 1e-5),
            lambda r: NoiseSource.from_seed(0, r),
        )


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_gaussian_epsilon_equals_opacus(accountant: str) -> None:
    ours = gaussian_epsilon([GaussianRelease(5.0, 300), GaussianRelease(2.0, 10)], 1e-5, accountant)
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = [(5.0, 1.0, 300), (2.0, 1.0, 10)]
    kwargs = {"alphas": list(RDP_ORDERS)} if accountant == "rdp" else {}
    assert ours == pytest.approx(acc.get_epsilon(delta=1e-5, **kwargs), rel=1e-9)


def test_noise_for_epsilon_round_trip() -> None:
    z = noise_for_epsilon(4.0, 1e-5, 1000, "prv")
    assert 30 < z < 40  # ANCHORS: z ≈ 34 for ε = 4 over 1000 releases
    assert gaussian_epsilon([GaussianRelease(z, 1000)], 1e-5, "prv") <= 4.0


def test_skellam_rdp_approaches_gaussian_for_large_mu() -> None:
    d2 = 1000.0
    z = 5.0
    mu = (z * d2) ** 2 / 2  # variance 2μ = (z·Δ2)²
    sk = skellam_rdp([2.0, 8.0, 32.0], SkellamRelease(mu, d2, d2 * 10, 1))
    gauss = np.array([2.0, 8.0, 32.0]) / (2 * z * z)
    assert np.all(sk >= gauss) and np.allclose(sk, gauss, rtol=1e-3)


def _run(tmp_path, *extra: str):
    cfg = resolve_config(preset="smoke", overrides=[*TINY, *extra])
    return run_experiment(cfg, tmp_path, progress=False)


def test_privacy_json_epsilon_recomputes_with_opacus(tmp_path) -> None:
    _run(
        tmp_path,
        'privacy.placement="central"',
        "privacy.noise_multiplier=2.0",
        'privacy.accountant="prv"',
        "secure_aggregation.enabled=true",
    )
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert (tmp_path / "privacy.md").is_file()
    history = []
    for name, ch in report["channels"].items():
        for key in (
            "noise_multiplier",
            "sample_rate",
            "releases",
            "delta",
            "accountant",
            "epsilon",
        ):
            assert key in ch, key
        acc = PRVAccountant()
        acc.history = [(ch["noise_multiplier"], ch["sample_rate"], ch["releases"])]
        assert ch["epsilon"] == pytest.approx(acc.get_epsilon(delta=ch["delta"]), rel=1e-6), name
        history.append((ch["noise_multiplier"], ch["sample_rate"], ch["releases"]))
    assert report["releases"] == {"dream_gradient": 2 * 3, "logits": 2 * 1}
    acc = PRVAccountant()
    acc.history = history
    assert report["epsilon_total"] == pytest.approx(
        acc.get_epsilon(delta=report["delta"]), rel=1e-6
    )
    assert report["accountant_library"].startswith("opacus ")


def test_distributed_privacy_json_recomputes(tmp_path) -> None:
    _run(
        tmp_path,
        'privacy.placement="distributed"',
        "privacy.target_epsilon=6",
        "secure_aggregation.enabled=true",
        "secure_aggregation.threshold=2",
    )
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert report["noise_split"]["min_survivors"] == 2
    rdp = np.zeros(len(RDP_ORDERS))
    for ch in report["channels"].values():
        for r in ch["skellam_releases"]:
            rdp += skellam_rdp(
                RDP_ORDERS,
                SkellamRelease(r["mu"], r["l2_sensitivity"], r["l1_sensitivity"], r["count"]),
            )
    eps, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=report["delta"])
    assert report["epsilon_total"] == pytest.approx(eps, rel=1e-9)
    assert report["epsilon_total"] <= 6.0


def test_target_epsilon_is_met(tmp_path) -> None:
    summary = _run(tmp_path, 'privacy.placement="central"', "privacy.target_epsilon=3")
    assert 2.9 <= summary["privacy"]["epsilon_total"] <= 3.0


def test_budget_stops_the_run_before_exceeding(tmp_path) -> None:
    summary = _run(
        tmp_path,
        "rounds=4",
        'privacy.placement="central"',
        "privacy.noise_multiplier=3.0",
        "privacy.max_epsilon=4.0",
    )
    assert summary["stopped_early"] and "max_epsilon" in summary["stopped_early"]
    assert summary["rounds"] < 4
    assert summary["privacy"]["epsilon_total"] <= 4.0
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert len(report["epsilon_per_round"]) == summary["rounds"]


def test_dp_run_is_deterministic_and_resumable(tmp_path) -> None:
    extra = (
        'privacy.placement="central"',
        "privacy.noise_multiplier=1.0",
        "secure_aggregation.enabled=true",
    )
    a = _run(tmp_path / "a", *extra)
    b = _run(tmp_path / "b", *extra)
    assert a["final_client_accuracy"] == b["final_client_accuracy"]
    assert a["privacy"] == b["privacy"]


def test_sample_level_dp_sgd_reports_opacus_epsilon(tmp_path) -> None:
    summary = _run(
        tmp_path,
        "privacy.sample_level=true",
        'clients.models="cnn-gn"',
        "privacy.sample_noise_multiplier=1.5",
    )
    report = json.loads((tmp_path / "privacy.json").read_text())
    sample = report["sample_level"]
    assert report["placement"] == "off"
    for entry in sample["clients"]:
        acc = RDPAccountant()
        acc.history = [(1.5, entry["sample_rate"], entry["steps"])]
        assert entry["epsilon"] == pytest.approx(acc.get_epsilon(delta=sample["delta"]), rel=1e-9)
        assert entry["steps"] > 0
    assert summary["privacy"]["sample_level_epsilon_max"] == sample["epsilon_max"]


def test_sample_level_dp_refuses_batchnorm_models(tmp_path) -> None:
    from securedream.errors import ConfigError

    with pytest.raises(ConfigError, match="GroupNorm"):
        _run(tmp_path, "privacy.sample_level=true", 'clients.models="cnn-bn"')
    assert not (tmp_path / "config.toml").exists()
