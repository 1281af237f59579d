"""Clopper–Pearson intervals and the empirical ε lower bound against known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import binom

from attacks.stats import (
    bound_at_threshold,
    choose_threshold,
    clopper_pearson,
    clopper_pearson_upper,
    epsilon_ceiling,
    epsilon_lower_bound,
)


def test_clopper_pearson_closed_forms_at_the_edges():
    # k = 0: upper = 1 - (α/2)^(1/n); k = n: lower = (α/2)^(1/n)
    for n in (1, 10, 100, 1000):
        low, high = clopper_pearson(0, n, 0.95)
        assert low == 0.0
        assert high == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-10)
        low, high = clopper_pearson(n, n, 0.95)
        assert high == 1.0
        assert low == pytest.approx(0.025 ** (1 / n), rel=1e-10)


def test_clopper_pearson_known_table_values():
    # classic tabulated exact intervals (e.g. Brown, Cai & DasGupta 2001; R binom.test)
    assert clopper_pearson(5, 10, 0.95) == pytest.approx((0.187086, 0.812914), abs=1e-6)
    assert clopper_pearson(1, 20, 0.95) == pytest.approx((0.001265, 0.248732), abs=1e-6)


@given(n=st.integers(1, 500), frac=st.floats(0, 1), conf=st.sampled_from([0.8, 0.95, 0.99]))
def test_clopper_pearson_limits_are_binomial_tail_quantiles(n, frac, conf):
    k = round(frac * n)
    low, high = clopper_pearson(k, n, conf)
    alpha = 1 - conf
    assert 0 <= low <= k / n <= high <= 1
    if k < n:  # P(X <= k | p = high) = α/2
        assert binom.cdf(k, n, high) == pytest.approx(alpha / 2, abs=1e-7)
    if k > 0:  # P(X >= k | p = low) = α/2
        assert binom.sf(k - 1, n, low) == pytest.approx(alpha / 2, abs=1e-7)
    assert clopper_pearson_upper(k, n, conf) == pytest.approx(high)


def test_clopper_pearson_rejects_bad_input():
    with pytest.raises(ValueError, match="n must be"):
        clopper_pearson(0, 0)
    with pytest.raises(ValueError, match=r"k must be an integer in \[0, n=5\]"):
        clopper_pearson(6, 5)
    with pytest.raises(ValueError, match="confidence"):
        clopper_pearson(1, 5, 1.0)


def test_epsilon_ceiling_matches_the_published_figures():
    # ANCHORS.md: perfect attack at 95%: 100 trials a side -> 3.28, 1000 -> 5.60
    assert epsilon_ceiling(100, delta=1e-5) == pytest.approx(3.28, abs=0.005)
    assert epsilon_ceiling(1000, delta=1e-5) == pytest.approx(5.60, abs=0.005)
    assert epsilon_ceiling(100) < epsilon_ceiling(1000) < epsilon_ceiling(10_000)


def test_epsilon_lower_bound_by_hand():
    fp, n_out, fn, n_in, delta = 10, 1000, 400, 1000, 1e-5
    bound = epsilon_lower_bound(fp, n_out, fn, n_in, delta=delta, confidence=0.95)
    fpr_u = clopper_pearson(fp, n_out, 0.95)[1]
    fnr_u = clopper_pearson(fn, n_in, 0.95)[1]
    expected = max(math.log((1 - delta - fnr_u) / fpr_u), math.log((1 - delta - fpr_u) / fnr_u))
    assert bound.eps_lower_bound == pytest.approx(expected)
    assert bound.direction == "fpr"
    assert bound.eps_point == pytest.approx(math.log((1 - delta - 0.4) / 0.01))
    # symmetric: swapping the roles of the two error types gives the same bound
    swapped = epsilon_lower_bound(fn, n_in, fp, n_out, delta=delta, confidence=0.95)
    assert swapped.eps_lower_bound == pytest.approx(bound.eps_lower_bound)
    assert swapped.direction == "fnr"


def test_useless_test_gives_zero():
    assert epsilon_lower_bound(500, 1000, 500, 1000, delta=1e-5).eps_lower_bound == 0.0
    assert epsilon_lower_bound(1000, 1000, 0, 1000, delta=1e-5).eps_lower_bound == 0.0


@given(
    n_out=st.integers(1, 2000),
    n_in=st.integers(1, 2000),
    a=st.floats(0, 1),
    b=st.floats(0, 1),
    delta=st.sampled_from([0.0, 1e-5, 1e-3]),
)
def test_bound_is_never_above_the_point_estimate(n_out, n_in, a, b, delta):
    bound = epsilon_lower_bound(round(a * n_out), n_out, round(b * n_in), n_in, delta=delta)
    assert bound.eps_lower_bound >= 0.0
    assert bound.eps_lower_bound <= bound.eps_point + 1e-12
    perfect = epsilon_lower_bound(0, n_out, 0, n_in, delta=delta).eps_lower_bound
    assert bound.eps_lower_bound <= perfect + 1e-9


def test_choose_threshold_separates_separable_scores():
    rng = np.random.default_rng(0)
    out, inn = rng.normal(0, 1, 500), rng.normal(10, 1, 500)
    t = choose_threshold(inn, out, delta=1e-5)
    assert out.max() < t < inn.min()
    bound = bound_at_threshold(inn, out, t, delta=1e-5)
    assert bound.eps_lower_bound == pytest.approx(epsilon_ceiling(500, delta=1e-5))


def test_both_tails_of_the_same_orientation_are_used():
    # IN scores shifted up; a threshold in the *lower* tail bounds ε through the FNR direction
    rng = np.random.default_rng(3)
    inn = np.concatenate([rng.normal(0, 1, 1900), np.full(100, 50.0)])
    out = np.concatenate([rng.normal(0, 1, 1000), rng.normal(-30, 1, 1000)])
    t = choose_threshold(inn, out, delta=1e-5)
    bound = bound_at_threshold(inn, out, t, delta=1e-5)
    assert bound.direction == "fnr" and t < -5
    assert bound.eps_lower_bound > 0.5


def test_choose_threshold_on_a_gaussian_tail_is_close_to_optimal():
    rng = np.random.default_rng(1)
    mu = 2.0
    t = choose_threshold(rng.normal(mu, 1, 5000), rng.normal(0, 1, 5000), delta=1e-5)
    got = bound_at_threshold(rng.normal(mu, 1, 5000), rng.normal(0, 1, 5000), t, delta=1e-5)
    # the best threshold on fresh data, chosen with hindsight, is an upper reference
    ins, outs = rng.normal(mu, 1, 5000), rng.normal(0, 1, 5000)
    best = max(
        bound_at_threshold(ins, outs, x, delta=1e-5).eps_lower_bound for x in np.linspace(0, 5, 101)
    )
    assert got.eps_lower_bound > 0.7 * best


def test_gaussian_threshold_comes_from_the_accounted_noise_alone():
    from attacks.stats import gaussian_threshold

    kw = {"runs_in": 100_000, "runs_out": 100_000, "delta": 1e-5}
    assert gaussian_threshold(22.0, 0.0, **kw) == 11.0  # no noise: any t in (0, T) separates
    t = gaussian_threshold(22.0, 47.4, **kw)
    assert gaussian_threshold(44.0, 94.8, **kw) == pytest.approx(2 * t)  # scale-free
    # a deep tail, but not one 10⁵ runs cannot resolve: the deciding error count stays ≥ 10
    from scipy.stats import norm

    deciding = norm.sf(t / 47.4) if t > 0 else norm.cdf((t - 22.0) / 47.4)
    assert abs(t) > 2 * 47.4
    assert 100_000 * deciding >= 10
    with pytest.raises(ValueError, match="std"):
        gaussian_threshold(1.0, -1.0, **kw)
