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
    observer = acc.get_epsilon(delta=report["delta"])
    # central placement: DP only against observers; the server sees the exact sum
    assert report["epsilon_by_adversary"]["observer"] == pytest.approx(observer, rel=1e-6)
    assert report["epsilon_by_adversary"]["server"] is None
    assert report["epsilon_by_adversary"]["server+colluders"] is None
    assert report["epsilon_total"] == pytest.approx(observer, rel=1e-6)
    assert any("no DP against it" in item for item in report["not_protected"])
    assert report["neighbouring"] == "zero-out" and "NOT hidden" in report["neighbouring_relation"]
    assert report["noise_reproducible"] is False
    assert report["accountant_library"].startswith("opacus ")


# Orders and Skellam bound written out here, independently of securedream.privacy.accounting.
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512, 1024]


def _skellam_rdp_variance_form(variance: float, d2: float, d1: float, count: int) -> np.ndarray:
    """Agarwal, Kairouz & Liu (2021) Thm 3.5 for Sk with variance v (= 2μ), per order."""
    a = np.asarray(ORDERS)
    first = a * d2**2 / (2 * variance)
    second = np.minimum(((2 * a - 1) * d2**2 + 6 * d1) / (4 * variance**2), 3 * d1 / (2 * variance))
    return count * (first + second)


def _independent_epsilon(report: dict, known_shares: int, factor: float) -> float:
    """ε against a party knowing ``known_shares`` shares of every release, from privacy.json."""
    rdp = np.zeros(len(ORDERS))
    for ch in report["channels"].values():
        for r in ch["skellam_releases"]:
            left = r["shares"] - known_shares
            if left <= 0:
                return math.inf
            variance = 2 * r["mu"] * left / r["shares"]
            rdp += _skellam_rdp_variance_form(
                variance, factor * r["l2_sensitivity"], factor * r["l1_sensitivity"], r["count"]
            )
    eps, _ = get_privacy_spent(orders=ORDERS, rdp=rdp, delta=report["delta"])
    return float(eps)


@pytest.mark.parametrize("neighbouring", ["zero-out", "replace-one"])
def test_distributed_epsilon_by_adversary_recomputes(tmp_path, neighbouring: str) -> None:
    """3 clients, t = 2, 1 colluder (t − 1); client 2 drops in round 0, so the releases carry 3
    and then 2 noise shares. Each party's ε is recomputed from the reported (μ, shares, Δ2, Δ1,
    releases, δ) with an independent Skellam bound and Opacus's RDP conversion."""
    _run(
        tmp_path,
        'privacy.placement="distributed"',
        "privacy.target_epsilon=6",
        f'privacy.neighbouring="{neighbouring}"',
        "secure_aggregation.enabled=true",
        "secure_aggregation.threshold=2",
        'secure_aggregation.dropouts=["2:masked_input:1:0"]',
    )
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert report["colluders"] == 1 and report["min_survivors"] == 2
    # calibrated for the shares left after 1 colluder among the fewest (2) survivors
    assert report["noise_split"]["noise_shares"] == 1
    shares = sorted(
        {r["shares"] for ch in report["channels"].values() for r in ch["skellam_releases"]}
    )
    assert shares == [2, 3]
    factor = 2.0 if neighbouring == "replace-one" else 1.0
    assert report["sensitivity_factor"] == factor
    by = report["epsilon_by_adversary"]
    for name, known in (("observer", 1), ("server", 0), ("server+colluders", 1)):
        assert by[name] == pytest.approx(_independent_epsilon(report, known, factor), rel=1e-9)
    assert report["epsilon_total"] == max(by.values())
    # the protected parties meet the target even at the fewest survivors
    assert report["epsilon_total"] <= 6.0
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["survivors"] == [3, 2, 2, 2] and metrics[1]["survivors"] == [3, 3, 3, 3]


def test_replace_one_doubles_the_sensitivity() -> None:
    """At the same z, replace-one is the zero-out mechanism at z/2 (Gaussian) or 2Δ (Skellam)."""
    from securedream.privacy.engine import RunPrivacy

    def planned(*extra: str) -> RunPrivacy:
        cfg = resolve_config(
            preset="smoke", overrides=[*TINY, "privacy.noise_multiplier=8", *extra]
        )
        return RunPrivacy(cfg, dim=6272, num_classes=10, secure_threshold=2)

    central = planned('privacy.placement="central"', 'privacy.neighbouring="replace-one"')
    eps = central.epsilon_by_adversary(central.planned_run(3))["observer"]
    acc = RDPAccountant()
    acc.history = [(4.0, 1.0, 2 * 3), (4.0, 1.0, 2 * 1)]
    assert eps == pytest.approx(acc.get_epsilon(delta=1e-5, alphas=ORDERS), rel=1e-9)
    flags = ("secure_aggregation.enabled=true", 'privacy.placement="distributed"')
    zero = planned(*flags)
    two = planned(*flags, 'privacy.neighbouring="replace-one"')
    assert two.noise_multiplier == zero.noise_multiplier
    r0 = next(iter(zero.planned_run(3).channels.values())).skellam[0]
    r2 = next(iter(two.planned_run(3).view(0, 2.0).channels.values())).skellam[0]
    assert r2.l2_sensitivity == 2 * r0.l2_sensitivity and r2.mu == r0.mu
    for name, value in two.epsilon_by_adversary(two.planned_run(3)).items():
        assert value > zero.epsilon_by_adversary(zero.planned_run(3))[name]


def test_target_epsilon_under_replace_one_doubles_z() -> None:
    from securedream.privacy.engine import RunPrivacy

    z = {}
    for relation in ("zero-out", "replace-one"):
        cfg = resolve_config(
            preset="smoke",
            overrides=[
                *TINY,
                'privacy.placement="central"',
                "privacy.target_epsilon=3",
                f'privacy.neighbouring="{relation}"',
            ],
        )
        rp = RunPrivacy(cfg, dim=6272, num_classes=10)
        z[relation] = rp.noise_multiplier
        assert rp.epsilon_total(rp.planned_run(3)) <= 3.0
    assert z["replace-one"] == pytest.approx(2 * z["zero-out"], rel=1e-12)


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
        "privacy.reproducible_noise=true",
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


# --- nothing silently off, safe defaults ------------------------------------------------------
CLIENT_LEVEL_SETTINGS = [
    "privacy.target_epsilon=4",
    "privacy.noise_multiplier=1.0",
    "privacy.clip_gradient=0.5",
    "privacy.clip_logits=10.0",
    "privacy.max_epsilon=8",
    "privacy.min_survivors=2",
    'privacy.accountant="prv"',
    "privacy.delta=1e-6",
    "privacy.colluders=1",
    'privacy.neighbouring="replace-one"',
    "privacy.reproducible_noise=true",
]


@pytest.mark.parametrize("setting", CLIENT_LEVEL_SETTINGS)
def test_client_level_key_with_placement_off_is_an_error(setting: str) -> None:
    from securedream.errors import ConfigError

    with pytest.raises(ConfigError, match=r"privacy\.placement") as err:
        resolve_config(preset="smoke", overrides=[setting])
    assert err.value.key == setting.split("=")[0]
    # the same key with client-level DP on is accepted
    on = ['privacy.placement="central"']
    if "target_epsilon" not in setting and "noise_multiplier" not in setting:
        on.append("privacy.noise_multiplier=1.0")
    resolve_config(preset="smoke", overrides=[*on, setting])


def test_dp_sgd_keys_belong_to_sample_level() -> None:
    from securedream.errors import ConfigError

    with pytest.raises(ConfigError, match=r"privacy\.sample_level") as err:
        resolve_config(preset="smoke", overrides=["privacy.sample_noise_multiplier=2.0"])
    assert err.value.key == "privacy.sample_noise_multiplier"
    for key in ("sample_target_epsilon=4", "feature_clip=2", "feature_noise_multiplier=3"):
        with pytest.raises(ConfigError, match=r"privacy\.sample_level"):
            resolve_config(preset="smoke", overrides=[f"privacy.{key}"])
    # δ, the accountant and the research-noise switch are shared with DP-SGD, so they are fine
    # when sample_level is on
    resolve_config(
        preset="smoke",
        overrides=[
            "privacy.sample_level=true",
            'clients.models=["cnn-gn"]',
            "privacy.delta=1e-6",
            'privacy.accountant="prv"',
            "privacy.reproducible_noise=true",
        ],
    )


def test_old_secure_noise_key_says_what_replaced_it() -> None:
    from securedream.errors import ConfigError

    with pytest.raises(ConfigError, match=r"privacy\.reproducible_noise") as err:
        resolve_config(preset="smoke", overrides=["privacy.secure_noise=true"])
    assert err.value.key == "privacy.secure_noise"


def test_both_noise_multiplier_and_target_is_an_error() -> None:
    from securedream.errors import ConfigError

    with pytest.raises(ConfigError, match="not both"):
        resolve_config(
            preset="smoke",
            overrides=[
                'privacy.placement="central"',
                "privacy.noise_multiplier=1",
                "privacy.target_epsilon=2",
            ],
        )


def test_colluders_bounded_by_the_clients() -> None:
    from securedream.errors import ConfigError

    base = ['privacy.placement="central"', "privacy.noise_multiplier=1", *TINY]
    with pytest.raises(ConfigError, match=r"\[0, clients.count - 1 = 2\]"):
        resolve_config(preset="smoke", overrides=[*base, "privacy.colluders=3"])
    from securedream.stack import build_aggregation

    cfg = resolve_config(
        preset="smoke",
        overrides=[
            *TINY,
            'privacy.placement="distributed"',
            "privacy.noise_multiplier=1",
            "secure_aggregation.enabled=true",
            "privacy.colluders=2",
        ],
    )
    with pytest.raises(ConfigError, match="no honest noise share") as err:
        build_aggregation(cfg, dim=100, num_classes=10)
    assert err.value.key == "privacy.colluders"


def _zeros_through(cfg, clients: int):  # type: ignore[no-untyped-def]
    from securedream.stack import build_aggregation

    agg, _ = build_aggregation(cfg, dim=64, num_classes=10)
    agg.start_round(0, list(range(clients)))
    try:
        zeros = {c: torch.zeros(64) for c in range(clients)}
        return agg.aggregate(zeros, channel=Channel.DREAM_GRADIENT, step=0)
    finally:
        agg.end_round()


@pytest.mark.parametrize(
    "privacy", [[], ['privacy.placement="central"', "privacy.noise_multiplier=1.0"]]
)
def test_one_survivor_of_two_is_refused(privacy: list[str]) -> None:
    """2 clients, secure aggregation (with or without DP), one drops: nothing is released."""
    from securedream.aggregation.secure import SecureAggregationAborted
    from securedream.stack import secure_threshold

    cfg = resolve_config(
        preset="smoke",
        overrides=[
            "clients.count=2",
            "secure_aggregation.enabled=true",
            'secure_aggregation.dropouts=["1:masked_input:0"]',
            *privacy,
        ],
    )
    assert secure_threshold(cfg) == 2  # the protocol itself cannot unmask one survivor
    with pytest.raises(SecureAggregationAborted):
        _zeros_through(cfg, 2)


@pytest.mark.parametrize(
    "graph", [[], ['secure_aggregation.graph="harary"', "secure_aggregation.neighbours=2"]]
)
def test_survivors_below_privacy_minimum_are_refused(graph: list[str]) -> None:
    """Complete graph: t is raised to the floor; Harary (k = 2): t is a neighbourhood threshold
    (at most k + 1 = 3), and the global floor of 4 survivors is still enforced."""
    from securedream.aggregation.secure import SecureAggregationAborted

    base = [
        "clients.count=5",
        'clients.models="cnn-bn"',
        "secure_aggregation.enabled=true",
        'privacy.placement="central"',
        "privacy.noise_multiplier=1.0",
        "privacy.min_survivors=4",
        *graph,
    ]
    cfg = resolve_config(preset="smoke", overrides=base)
    assert _zeros_through(cfg, 5).contributors == (0, 1, 2, 3, 4)
    one_drop = ['secure_aggregation.dropouts=["4:masked_input:0"]']
    assert _zeros_through(
        resolve_config(preset="smoke", overrides=[*base, *one_drop]), 5
    ).contributors == (0, 1, 2, 3)
    two_drop = ['secure_aggregation.dropouts=["3:masked_input:0", "4:masked_input:0"]']
    cfg = resolve_config(preset="smoke", overrides=[*base, *two_drop])
    with pytest.raises(SecureAggregationAborted, match=r"not released|fewer than t"):
        _zeros_through(cfg, 5)


@pytest.mark.parametrize("placement", ["central", "distributed"])
def test_default_noise_is_not_reproducible(placement: str) -> None:
    """Same seed, same config: fresh os.urandom noise each time unless asked for research noise."""
    base = [
        "clients.count=3",
        'clients.models="cnn-bn"',
        "secure_aggregation.enabled=true",
        f'privacy.placement="{placement}"',
        "privacy.noise_multiplier=1.0",
    ]
    default = resolve_config(preset="smoke", overrides=base)
    a, b = (_zeros_through(default, 3).total for _ in range(2))
    assert not torch.equal(a, b) and float(a.abs().max()) > 0
    research = resolve_config(preset="smoke", overrides=[*base, "privacy.reproducible_noise=true"])
    with pytest.warns(UserWarning, match="reproducible_noise"):
        c, d = (_zeros_through(research, 3).total for _ in range(2))
    assert torch.equal(c, d)


def test_deployment_refuses_reproducible_noise(tmp_path) -> None:
    from securedream.engines.flower.deploy import write_app
    from securedream.errors import ConfigError

    cfg = resolve_config(
        preset="smoke",
        overrides=[
            'privacy.placement="central"',
            "privacy.noise_multiplier=1.0",
            "privacy.reproducible_noise=true",
        ],
    )
    with pytest.raises(ConfigError, match="deployment") as err:
        write_app(tmp_path / "app", cfg)
    assert err.value.key == "privacy.reproducible_noise"
    assert not (tmp_path / "app").exists()


def test_target_epsilon_below_reach_names_the_key_and_the_floor() -> None:
    from securedream.errors import ConfigError

    with pytest.raises(ConfigError, match=r"smallest reachable ε is about 0\.1") as err:
        noise_for_epsilon(0.01, 1e-5, 1010, "rdp")
    assert err.value.key == "privacy.target_epsilon"


def test_turning_client_dp_off_on_a_copy_drops_its_keys() -> None:
    """Baselines and audit controls derive a non-private copy of a private config."""
    from securedream.config import apply_overrides, client_dp_off, config_from_dict, config_to_dict

    private = resolve_config(
        preset="smoke",
        overrides=['privacy.placement="central"', "privacy.target_epsilon=4", "privacy.delta=1e-6"],
    )
    raw = apply_overrides(config_to_dict(private), ['privacy.placement="off"'])
    plain = config_from_dict(client_dp_off(raw))
    assert plain.privacy.placement == "off" and plain.privacy.target_epsilon == 0.0
    assert private.privacy.target_epsilon == 4  # the private config itself is untouched
