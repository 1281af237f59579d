"""Membership inference: LiRA on synthetic observations, relations, and the pipeline end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from audit_support import SECURE_DP, trained_run

from attacks.controls import mia_negative_control, mia_positive_control
from attacks.membership.audit import (
    MembershipSettings,
    matched_negatives,
    run_membership_audit,
    train_shadows,
)
from attacks.membership.lira import lira_scores, relation_masks
from attacks.membership.targets import (
    OracleView,
    candidate_batches,
    load_target,
    logit_confidence,
    model_observations,
    oracle_observations,
)
from attacks.metrics import auc


def test_logit_confidence_matches_the_direct_formula():
    logits = torch.randn(50, 10, generator=torch.Generator().manual_seed(0)) * 4
    labels = torch.randint(0, 10, (50,), generator=torch.Generator().manual_seed(1))
    p = F.softmax(logits.double(), 1).gather(1, labels.view(-1, 1)).squeeze(1)
    expected = torch.log(p) - torch.log(1 - p)
    torch.testing.assert_close(logit_confidence(logits, labels), expected)
    # stable where 1 - p underflows in float64 arithmetic
    big = torch.tensor([[60.0, 0.0, 0.0]])
    assert logit_confidence(big, torch.tensor([0])).item() == pytest.approx(
        60 - np.log(2), abs=1e-9
    )


def test_relation_masks():
    member_of = np.array([0, 1, -1, 0, -1])
    own_in, out = relation_masks(member_of, 2, "own")
    assert own_in.tolist() == [[1, 0, 0, 1, 0], [0, 1, 0, 0, 0]]
    assert out.tolist() == [[0, 0, 1, 0, 1]] * 2
    cross_in, _ = relation_masks(member_of, 2, "cross")
    assert cross_in.tolist() == [[0, 1, 0, 0, 0], [1, 0, 0, 1, 0]]
    any_in, any_out = relation_masks(member_of, 1, "any")
    assert any_in.tolist() == [[1, 1, 0, 1, 0]] and any_out.tolist() == [[0, 0, 1, 0, 1]]
    with pytest.raises(ValueError, match="relation"):
        relation_masks(member_of, 2, "nope")


def _synthetic(shadows: int, n: int, effect: float, seed: int = 0):
    """Per-sample difficulty (shared by target and shadows) plus a membership effect."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 3, n)
    s_in = rng.random((shadows, 1, n)) < 0.5
    s_obs = difficulty + effect * s_in + rng.normal(0, 0.5, (shadows, 1, n))
    t_in = rng.random(n) < 0.5
    t_obs = (difficulty + effect * t_in + rng.normal(0, 0.5, n))[None]
    return t_obs, s_obs, s_in, ~s_in, t_in


def test_lira_beats_a_global_threshold_when_samples_differ_in_difficulty():
    t_obs, s_obs, s_in, s_out, t_in = _synthetic(16, 2000, effect=1.0)
    scores = lira_scores(t_obs, s_obs, s_in, s_out)
    labels = t_in.astype(int)
    global_auc = auc(t_obs[0], labels).value
    assert auc(scores.offline[0], labels).value > global_auc + 0.1
    assert auc(scores.online[0], labels).value > global_auc + 0.1
    assert scores.diagnostics["sigma_out"] == pytest.approx(0.5, rel=0.1)
    assert scores.diagnostics["mean_in_minus_out"] == pytest.approx(1.0, abs=0.1)


def test_lira_without_a_membership_effect_is_at_chance():
    t_obs, s_obs, s_in, s_out, t_in = _synthetic(16, 2000, effect=0.0, seed=1)
    scores = lira_scores(t_obs, s_obs, s_in, s_out)
    est = auc(scores.online[0], t_in.astype(int), 0.999)
    assert est.low < 0.5 < est.high


def test_lira_fallbacks_for_pairs_without_in_or_out_shadows():
    t_obs, s_obs, s_in, s_out, _ = _synthetic(2, 500, effect=1.0, seed=2)
    scores = lira_scores(t_obs, s_obs, s_in, s_out)
    assert np.isfinite(scores.offline).all() and np.isfinite(scores.online).all()
    assert scores.diagnostics["pairs_without_in_shadow"] > 0


def test_matched_negatives_reproduce_the_member_label_mix():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 3000)
    positive = np.zeros((1, 3000), bool)
    positive[0, np.flatnonzero(labels < 2)[:150]] = True  # members only of labels 0 and 1
    positive[0, np.flatnonzero(labels == 4)[:50]] = True
    negative = ~positive
    kept = matched_negatives(labels, positive, negative, seed=0)
    assert not (kept & positive).any()
    pos_hist = np.bincount(labels[positive[0]], minlength=5) / positive.sum()
    neg_hist = np.bincount(labels[kept[0]], minlength=5) / kept.sum()
    np.testing.assert_allclose(neg_hist, pos_hist, atol=0.01)


def test_membership_audit_end_to_end_on_a_tiny_run():
    universe, target, exp = load_target(trained_run())
    settings = MembershipSettings(shadows=2, candidates=128)
    shadows = train_shadows(target.cfg, universe, len(exp.shards[0].indices), settings)
    assert len(shadows) == 2
    assert all((sh.member_of >= 0).sum() == (target.member_of >= 0).sum() for sh in shadows)
    assert not np.array_equal(shadows[0].member_of, shadows[1].member_of)
    result = run_membership_audit(universe, target, shadows, settings)
    for section in (result["models"]["own"], result["models"]["cross"], result["dreams"]):
        assert set(section["attacks"]) >= {"lira_offline", "lira_online"}
        for metrics in section["attacks"].values():
            assert 0 <= metrics["auc"]["low"] <= metrics["auc"]["value"] <= metrics["auc"]["high"]
            assert set(metrics["tpr_at_fpr"]) == {"0.1", "0.01", "0.001"}
    assert result["dreams"]["relation"] == "own"  # plain aggregation: per-client responses
    assert result["dreams"]["candidates"] == 128


def test_oracle_views_plain_per_client_secure_aggregate():
    universe, target, _ = load_target(trained_run())
    batches = candidate_batches(universe, target.member_of, 64, 32, seed=0)
    assert [len(b) for b in batches] == [32, 32]
    plain = oracle_observations(target, universe, batches, OracleView(per_client=True), 0)
    assert plain.shape == (2, 64)
    secure = oracle_observations(target, universe, batches, OracleView(per_client=False), 0)
    assert secure.shape == (1, 64) and np.isfinite(secure).all()


def test_oracle_under_distributed_dp_sees_noise():
    universe, target, _ = load_target(trained_run(*SECURE_DP))
    view = OracleView.for_config(target.cfg)
    assert not view.per_client
    batches = candidate_batches(universe, target.member_of, 32, 32, seed=0)
    a = oracle_observations(target, universe, batches, view, seed=0)
    b = oracle_observations(target, universe, batches, view, seed=1)
    assert not np.allclose(a, b)  # fresh noise per observation seed


def test_mia_controls_behave():
    universe, target, _ = load_target(trained_run())
    positive = mia_positive_control(universe, target, seed=0, confidence=0.95)
    assert positive["passed"], positive
    negative = mia_negative_control(universe, target, seed=0)
    assert negative["passed"], negative


def test_model_observations_shape():
    universe, target, _ = load_target(trained_run())
    obs = model_observations(target.models, universe)
    assert obs.shape == (2, len(universe)) and np.isfinite(obs).all()
