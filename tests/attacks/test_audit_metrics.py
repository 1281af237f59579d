"""Membership metrics against scikit-learn and direct computations on known inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn import metrics as skm

from attacks.metrics import (
    auc,
    balanced_accuracy,
    best_balanced_accuracy,
    membership_metrics,
    roc_curve,
    tpr_at_fpr,
)
from attacks.stats import clopper_pearson


def _data(seed: int, n_pos: int = 300, n_neg: int = 700, shift: float = 0.8, ties: bool = False):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(shift, 1, n_pos), rng.normal(0, 1, n_neg)])
    if ties:
        scores = np.round(scores, 1)
    labels = np.concatenate([np.ones(n_pos, int), np.zeros(n_neg, int)])
    return scores, labels


@pytest.mark.parametrize("ties", [False, True])
def test_roc_curve_matches_sklearn(ties):
    scores, labels = _data(0, ties=ties)
    fpr, tpr, thr = roc_curve(scores, labels)
    s_fpr, s_tpr, s_thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, s_fpr)
    np.testing.assert_allclose(tpr, s_tpr)
    np.testing.assert_allclose(thr[1:], s_thr[1:])


@given(
    seed=st.integers(0, 10_000),
    n_pos=st.integers(1, 60),
    n_neg=st.integers(1, 60),
    ties=st.booleans(),
)
def test_auc_matches_sklearn(seed, n_pos, n_neg, ties):
    scores, labels = _data(seed, n_pos, n_neg, ties=ties)
    assert auc(scores, labels).value == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)


def test_auc_delong_variance_matches_the_pairwise_formula():
    scores, labels = _data(5, 40, 55, ties=True)
    pos, neg = scores[labels == 1], scores[labels == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(1), psi.mean(0)
    var = v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size
    est = auc(scores, labels, 0.95)
    assert est.details["std_error"] == pytest.approx(math.sqrt(var))
    assert est.value - est.low == pytest.approx(1.959964 * math.sqrt(var), rel=1e-5)


def test_auc_interval_covers_at_roughly_the_nominal_rate():
    covered = 0
    true_auc = 0.5 * math.erfc(-0.5 / 2)  # P(N(0.5,1) > N(0,1)) = Φ(0.5/√2)
    for seed in range(200):
        est = auc(*_data(seed, 100, 100, shift=0.5), 0.9)
        covered += est.low <= true_auc <= est.high
    assert 0.82 <= covered / 200 <= 0.97


@given(seed=st.integers(0, 10_000), threshold=st.floats(-2, 2))
def test_balanced_accuracy_matches_sklearn(seed, threshold):
    scores, labels = _data(seed, 50, 80)
    pred = (scores >= threshold).astype(int)
    assert balanced_accuracy(pred, labels) == pytest.approx(
        skm.balanced_accuracy_score(labels, pred)
    )


def test_best_balanced_accuracy_is_the_max_over_thresholds():
    scores, labels = _data(2)
    best = max(
        skm.balanced_accuracy_score(labels, (scores >= t).astype(int)) for t in np.unique(scores)
    )
    est = best_balanced_accuracy(scores, labels)
    assert est.value == pytest.approx(best)
    assert est.low < est.value < est.high


@pytest.mark.parametrize("target", [0.1, 0.01])
def test_tpr_at_fpr_matches_sklearn_roc_with_clopper_pearson_intervals(target):
    scores, labels = _data(3, 400, 1000)
    s_fpr, s_tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    expected = s_tpr[s_fpr <= target].max()
    est = tpr_at_fpr(scores, labels, target)
    assert est.value == pytest.approx(expected)
    assert est.details["achieved_fpr"] <= target
    tp = est.details["true_positives"]
    assert (est.low, est.high) == pytest.approx(clopper_pearson(tp, 400, 0.95))


def test_tpr_below_the_resolution_is_never_quoted():
    scores, labels = _data(4, 300, 700)
    est = tpr_at_fpr(scores, labels, 0.001)  # needs >= 1000 non-members; have 700
    assert est.value is None and est.low is None
    assert est.details["resolved"] is False
    assert "1000" in est.details["note"]
    ok = tpr_at_fpr(scores, labels, 0.01)  # 7 false positives allowed
    assert ok.details["resolved"] is True and ok.value is not None


def test_zero_tpr_is_flagged_with_its_upper_limit():
    scores = np.concatenate([np.zeros(50), np.linspace(1, 2, 200)])  # members score lowest
    labels = np.concatenate([np.ones(50, int), np.zeros(200, int)])
    est = tpr_at_fpr(scores, labels, 0.01)
    assert est.value == 0.0
    assert est.details["below_tpr_resolution"] is True
    assert est.high == pytest.approx(1 - 0.025 ** (1 / 50))


def test_membership_metrics_and_bad_input():
    scores, labels = _data(6, 200, 2000)
    out = membership_metrics(scores, labels)
    assert set(out["tpr_at_fpr"]) == {"0.1", "0.01", "0.001"}
    assert out["tpr_at_fpr"]["0.001"]["details"]["resolved"] is True
    assert 0.5 < out["auc"]["value"] < 1
    with pytest.raises(ValueError, match="need members and non-members"):
        auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="labels must be 0"):
        auc([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        auc([np.nan, 0.2], [1, 0])
