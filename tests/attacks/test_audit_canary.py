"""The canary-client audit of one release (``--canary-scope release``) on the engine's own stacks.

The run scope (the default) is tested in test_audit_canary_run.py.
"""

from __future__ import annotations

import dataclasses

import pytest
from audit_support import tiny_config

from attacks.canary import (
    CanaryExperiment,
    CanarySettings,
    canary_negative_control,
    canary_positive_control,
    run_canary_audit,
)
from attacks.config import DEFAULT_CANARY_RUNS, AuditConfig
from attacks.stats import epsilon_ceiling
from securedream.privacy.accounting import GaussianRelease, gaussian_epsilon, noise_for_epsilon

SMALL = CanarySettings(runs=1500, calibration_runs=750, secure_check_runs=0, scope="release")
# the release scope's defaults, as `securedream audit --canary-scope release` sets them
RELEASE = CanarySettings(runs=DEFAULT_CANARY_RUNS["release"], scope="release")


def _dp(placement: str, z: float, accountant: str = "rdp", secure: bool = False):
    return tiny_config(
        f"secure_aggregation.enabled={'true' if secure else 'false'}",
        f'privacy.placement="{placement}"',
        f"privacy.noise_multiplier={z}",
        f'privacy.accountant="{accountant}"',
    )


@pytest.mark.slow  # 2.2 × 10⁵ runs through the engine's stack: 20 s idle, 7 min on loaded cores
def test_default_runs_reach_half_of_epsilon_two():
    """ε = 2 for one release (PRV, the tight accountant): the default run count certifies ≥ 1."""
    z = noise_for_epsilon(2.0, 1e-5, 1, "prv")
    settings = dataclasses.replace(RELEASE, secure_check_runs=0)
    result = run_canary_audit(_dp("central", z, "prv"), settings)
    assert result["eps_theory"] == pytest.approx(2.0, abs=0.02)
    assert result["runs"] == 100_000
    assert 1.0 <= result["eps_lower_bound"] <= result["eps_theory"]
    assert result["noise_check"]["passed"]


@pytest.mark.parametrize("z", [0.6, 2.0])
def test_lower_bound_never_exceeds_theory_over_seeds(z):
    """A statistical test: at 95% confidence per seed, a bound above theory would be a bug."""
    cfg = _dp("central", z, "prv")
    theory = gaussian_epsilon([GaussianRelease(z, 1)], 1e-5, "prv")
    bounds = []
    for seed in range(6):
        result = run_canary_audit(cfg, dataclasses.replace(SMALL, seed=seed))
        assert result["eps_theory"] == pytest.approx(theory)
        assert (result["scope"], result["adversary"]) == ("release", "observer")
        bounds.append(result["eps_lower_bound"])
    assert max(bounds) <= theory
    assert min(bounds) > 0  # the audit is not vacuous at these noise levels


def test_distributed_dp_bound_below_theory_and_releases_match_the_protocol():
    cfg = _dp("distributed", 0.8, secure=True)
    for seed in range(2):
        settings = dataclasses.replace(SMALL, runs=800, calibration_runs=400, seed=seed)
        result = run_canary_audit(cfg, dataclasses.replace(settings, secure_check_runs=4))
        assert 0 < result["eps_lower_bound"] <= result["eps_theory"]
        assert result["secure_identity"]["identical"] is True
        assert result["mechanism"]["dp_placement"] == "distributed"


def test_secure_central_releases_are_bit_identical_to_the_full_protocol():
    cfg = _dp("central", 1.0, secure=True)
    exp = CanaryExperiment(cfg, dataclasses.replace(SMALL, runs=10, calibration_runs=10))
    check = exp.check_secure_identity(6)
    assert check["identical"] is True and check["max_abs_difference"] == 0.0


def test_plain_mechanism_hits_the_ceiling_and_theory_is_unbounded():
    result = run_canary_audit(tiny_config(), dataclasses.replace(SMALL, runs=1000))
    assert result["eps_theory"] is None
    assert result["eps_lower_bound"] == pytest.approx(epsilon_ceiling(1000, delta=1e-5))
    assert "unbounded" in result["eps_theory_note"]


def test_secure_aggregation_without_dp_also_hits_the_ceiling():
    cfg = tiny_config("secure_aggregation.enabled=true")
    settings = dataclasses.replace(SMALL, runs=300, calibration_runs=100, secure_check_runs=2)
    result = run_canary_audit(cfg, settings)
    assert result["eps_lower_bound"] == pytest.approx(epsilon_ceiling(300, delta=1e-5))
    assert result["secure_identity"]["identical"] is True


def test_controls_behave_on_a_dp_mechanism():
    cfg = _dp("central", 1.0)
    settings = dataclasses.replace(SMALL, runs=500, calibration_runs=250)
    negative = canary_negative_control(cfg, settings)
    assert negative["passed"] and negative["eps_lower_bound"] == 0.0
    positive = canary_positive_control(cfg, settings)
    assert positive["passed"]
    assert positive["eps_lower_bound"] == pytest.approx(epsilon_ceiling(500, delta=1e-5))


def test_noise_check_flags_less_noise_than_accounted():
    import numpy as np

    from attacks.canary import noise_check

    scores = np.random.default_rng(0).normal(0, 0.8, 5000)  # 20% less spread than claimed
    check = noise_check(scores, 1.0, 0.95)
    assert check["passed"] is False and "LESS noise" in check["status"]
    assert noise_check(np.random.default_rng(1).normal(0, 1, 5000), 1.0, 0.95)["passed"]


def test_multiple_releases_sum_and_theory_composes():
    z = 2.0
    settings = dataclasses.replace(SMALL, runs=300, calibration_runs=150, releases=4)
    result = run_canary_audit(_dp("central", z, "rdp"), settings)
    assert result["eps_theory"] == pytest.approx(
        gaussian_epsilon([GaussianRelease(z, 4)], 1e-5, "rdp")
    )
    assert result["score_summary"]["in_mean"] == pytest.approx(4.0, abs=0.6)
    assert result["eps_lower_bound"] <= result["eps_theory"]


def test_audit_config_defaults_match_the_canary_defaults():
    a, c = AuditConfig(), CanarySettings()
    assert (a.canary_scope, c.scope) == ("run", "run")
    assert (a.canary_mechanism_runs, c.mechanism_runs) == (None, 0)  # both: automatic
    assert a.resolved_canary_runs() == c.runs
    release = AuditConfig(canary_scope="release")
    assert release.resolved_canary_runs() == RELEASE.runs == 100_000
    assert (a.canary_calibration_runs, a.canary_dim) == (
        c.calibration_runs,
        c.dim,
    )
    assert (a.canary_releases, a.secure_check_runs, a.confidence) == (
        c.releases,
        c.secure_check_runs,
        c.confidence,
    )


@pytest.mark.slow
def test_default_runs_on_distributed_dp_at_epsilon_two():
    """The distributed (Skellam) stack at ε = 2 per release, default run count (about 2 minutes)."""
    z = noise_for_epsilon(2.0, 1e-5, 1, "rdp")
    result = run_canary_audit(_dp("distributed", z, secure=True), RELEASE)
    assert 0.5 <= result["eps_lower_bound"] <= result["eps_theory"]
    assert result["secure_identity"]["identical"] is True
    assert result["noise_check"]["passed"]  # never less noise than accounted
