"""Reconstruction (nearest neighbours, DeepInversion) and label-distribution inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from audit_support import SECURE_DP, trained_run
from skimage.metrics import structural_similarity

from attacks.membership.targets import load_target
from attacks.reconstruction.audit import (
    ReconstructionSettings,
    reconstruction_controls,
    run_reconstruction_audit,
)
from attacks.reconstruction.inversion import InversionSettings, deep_inversion
from attacks.reconstruction.labels import label_inference, score_estimates
from attacks.reconstruction.nearest import (
    dream_gaps,
    matched_holdout,
    nearest,
    permutation_test,
    psnr,
    ssim,
    summarise_gaps,
)


def test_nearest_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    q, r = torch.rand(7, 1, 8, 8, generator=g), torch.rand(20, 1, 8, 8, generator=g)
    index, dist = nearest(q, r)
    brute = torch.stack([((r - x) ** 2).flatten(1).sum(1).sqrt() for x in q])
    assert index.tolist() == brute.argmin(1).tolist()
    np.testing.assert_allclose(dist, brute.min(1).values.double().numpy(), rtol=1e-6)


def test_ssim_and_psnr_against_skimage_and_edge_cases():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(1, 28, 28, generator=g), torch.rand(1, 28, 28, generator=g)
    expected = structural_similarity(a[0].double().numpy(), b[0].double().numpy(), data_range=1.0)
    assert ssim(a, b) == pytest.approx(expected)
    assert ssim(a, a) == pytest.approx(1.0)
    small = torch.rand(1, 8, 8, generator=g)
    assert ssim(small, small) == pytest.approx(1.0)  # 8x8 works (window 7)
    assert psnr(a, a) == 100.0
    mse = float(((a - b) ** 2).mean())
    assert psnr(a, b) == pytest.approx(10 * np.log10(1 / mse), rel=1e-6)
    rgb = torch.rand(3, 8, 8, generator=g)
    assert ssim(rgb, rgb) == pytest.approx(1.0)


def test_matched_holdout_has_the_training_label_mix_and_size():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2000)
    train = np.flatnonzero(labels < 3)[:90]
    pool = np.setdiff1d(np.arange(2000), train)
    hold = matched_holdout(labels[train], pool, labels[pool], rng)
    assert hold.size == train.size and not np.intersect1d(hold, train).size
    assert (
        np.bincount(labels[hold], minlength=10).tolist()
        == np.bincount(labels[train], minlength=10).tolist()
    )


def test_copies_of_training_images_have_negative_gaps():
    g = torch.Generator().manual_seed(2)
    pixels = torch.rand(100, 1, 8, 8, generator=g)
    train, hold = np.arange(0, 40), np.arange(40, 80)
    gaps = dream_gaps(pixels[:10], pixels, [train], [hold])
    assert (gaps.gap_l2 < 0).all() and (gaps.l2_train == 0).all()
    summary = summarise_gaps(gaps)
    assert summary["closer_to_train"]["value"] == 1.0
    assert summary["closer_to_train"]["sign_test_p_value"] < 0.01


def test_permutation_test_flags_copies_and_matches_the_observed_share():
    g = torch.Generator().manual_seed(3)
    pixels = torch.rand(120, 1, 8, 8, generator=g)
    labels = np.repeat(np.arange(4), 30)
    train, hold = np.arange(0, 120, 2), np.arange(1, 120, 2)  # label-matched halves
    copies = (pixels[train[:20]] + 0.01).clamp(0, 1)
    result = permutation_test(
        copies, pixels, [train], [hold], labels, np.random.default_rng(0), permutations=199
    )
    share = summarise_gaps(dream_gaps(copies, pixels, [train], [hold]))["closer_to_train"]
    assert result["observed"] == share["value"] == 1.0
    assert result["p_value"] == pytest.approx(1 / 200)  # nothing in the null reaches 1.0
    assert 0.3 < result["null_mean"] < 0.7


def test_permutation_null_is_wide_when_every_query_shares_one_neighbour():
    # Queries far from every image all pick the one image of smallest norm. Whichever set holds it
    # wins every pair: the binomial test calls that certain, the permutation null does not.
    g = torch.Generator().manual_seed(4)
    pixels = torch.rand(60, 1, 8, 8, generator=g) * 0.5 + 0.5
    pixels[0] = 0.0  # smallest norm, in the training set
    labels = np.zeros(60, dtype=np.int64)
    train, hold = np.arange(0, 30), np.arange(30, 60)
    far = -torch.ones(40, 1, 8, 8)
    share = summarise_gaps(dream_gaps(far, pixels, [train], [hold]))["closer_to_train"]
    assert share["value"] == 1.0 and share["sign_test_p_value"] < 1e-9
    result = permutation_test(
        far, pixels, [train], [hold], labels, np.random.default_rng(1), permutations=400
    )
    assert result["null_q025"] == 0.0 and result["null_q975"] == 1.0
    assert result["p_value"] > 0.3  # about one half: the image lands in T' half of the time


def test_permutation_test_rejects_zero_permutations():
    pixels = torch.rand(4, 1, 2, 2)
    with pytest.raises(ValueError, match="permutations"):
        permutation_test(
            pixels,
            pixels,
            [np.arange(2)],
            [np.arange(2, 4)],
            np.zeros(4, int),
            np.random.default_rng(0),
            permutations=0,
        )


def test_reconstruction_audit_and_controls_on_a_tiny_run():
    universe, target, _ = load_target(trained_run())
    settings = ReconstructionSettings(inversion=InversionSettings(images=8, steps=30))
    result = run_reconstruction_audit(universe, target, settings)
    dreams = result["dreams"]
    assert dreams["pairs"] == 2 * sum(x.shape[0] for x, _ in target.buffer)
    assert dreams["closer_to_train"]["low"] <= dreams["closer_to_train"]["value"]
    perm = dreams["closer_to_train"]["permutation"]
    assert perm["observed"] == pytest.approx(dreams["closer_to_train"]["value"])
    assert 0 < perm["p_value"] <= 1 and perm["null_q025"] <= perm["null_q975"]
    assert result["inversion"]["pairs"] == 8 and result["inversion"]["client"] == 0
    controls = reconstruction_controls(universe, target, settings)
    assert controls["positive"]["passed"], controls["positive"]
    assert controls["negative"]["passed"], controls["negative"]


def test_deep_inversion_reaches_its_target_labels():
    _, target, _ = load_target(trained_run())
    settings = InversionSettings(images=10, steps=150)
    images, labels, terms = deep_inversion(target.clients[0].model, (1, 8, 8), 10, settings)
    assert images.shape == (10, 1, 8, 8) and labels.tolist() == list(range(10))
    assert terms["target_accuracy"] >= 0.9
    # the model's weights are untouched and trainable again
    assert all(p.requires_grad for p in target.clients[0].model.parameters())


def test_score_estimates_perfect_and_uniform():
    truth = np.array([[0.5, 0.5, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    perfect = score_estimates(truth, truth)
    assert perfect["tv_distance"] == 0.0 and perfect["presence_accuracy"] == 1.0
    uniform = score_estimates(np.full_like(truth, 0.25), truth)
    assert uniform["tv_distance"] == pytest.approx((0.5 + 0.2) / 2)
    assert uniform["presence_accuracy"] == pytest.approx((0.5 + 0.75) / 2)  # τ = 1/8


def test_label_inference_plain_vs_secure():
    _, plain_run, _ = load_target(trained_run())
    plain = label_inference(plain_run, 10, seed=0)
    assert "plain" in plain["view"]
    est = np.asarray(plain["estimates"])
    assert est.shape == (2, 10) and not np.allclose(est[0], est[1])
    np.testing.assert_allclose(est.sum(1), 1.0)
    _, secure_run, _ = load_target(trained_run(*SECURE_DP))
    secure = label_inference(secure_run, 10, seed=0)
    assert "secure" in secure["view"]
    est = np.asarray(secure["estimates"])
    np.testing.assert_allclose(est[0], est[1])  # one aggregate estimate for every client
