"""Sample-level DP: the per-client ledger (DP-SGD + DP feature statistics), recomputed with Opacus
from the report's raw parameters; feature-vector clipping and noise; the private-demo preset; the
``bench private --mode sample`` rows."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from securedream.bench.private_sample import (
    SampleBenchRow,
    plan_variants,
    rows_from_log,
    rows_json,
    run_sample_bench,
)
from securedream.config import resolve_config
from securedream.dreams import DreamLossWeights, dream_loss
from securedream.engines.inprocess import run_experiment
from securedream.errors import ConfigError
from securedream.models import build_model
from securedream.privacy.feature_stats import (
    LayerTarget,
    clip_rows,
    measure_feature_statistics,
    per_example_features,
)
from securedream.privacy.sample_level import calibrate_sgd_noise, ledger_epsilon

# digits (8x8), 2 GroupNorm clients, 2 rounds: seconds on one core
TINY = [
    "rounds=2",
    "dreams.global_steps=3",
    "dreams.batch_size=8",
    "data.samples_per_client=60",
    "distill.epochs=1",
    "clients.count=2",
    'clients.models=["cnn-gn", "cnn-gn-wide"]',
    "clients.batch_size=16",
    "clients.local_epochs=1",
    "clients.warmup_epochs=0",
    "privacy.sample_level=true",
    "privacy.reproducible_noise=true",
]


def _tiny(*extra: str):  # type: ignore[no-untyped-def]
    return resolve_config(preset="smoke", overrides=[*TINY, *extra])


def _recompute(history: list[tuple[float, float, int]], delta: float) -> tuple[float, float]:
    rdp, prv = RDPAccountant(), PRVAccountant()
    rdp.history = list(history)
    prv.history = list(history)
    return rdp.get_epsilon(delta=delta), prv.get_epsilon(delta=delta)


def test_ledger_with_feature_stats_recomputes_with_opacus(tmp_path: Path) -> None:
    cfg = _tiny(
        "privacy.feature_stats=true",
        "privacy.feature_noise_multiplier=4.0",
        "privacy.feature_clip=3.0",
        "privacy.sample_target_epsilon=6.0",
    )
    run_experiment(cfg, tmp_path, progress=False)
    sample = json.loads((tmp_path / "privacy.json").read_text())["sample_level"]
    assert sample["unit"].startswith("sample")
    assert sample["dream_exchange_epsilon"] == 0.0
    for c in sample["clients"]:
        # independent recomputation from the schedule, not from the stored history
        batches = math.ceil(c["samples"] / cfg.clients.batch_size)
        assert c["sample_rate"] == pytest.approx(1 / batches)
        assert c["steps"] == cfg.rounds * cfg.clients.local_epochs * batches
        assert c["feature_releases"] == cfg.rounds
        history = [(c["noise_multiplier"], 1 / batches, c["steps"]), (4.0, 1.0, cfg.rounds)]
        rdp, prv = _recompute(history, sample["delta"])
        assert c["epsilon_rdp"] == pytest.approx(rdp, rel=1e-9)
        assert c["epsilon_prv"] == pytest.approx(prv, rel=1e-6)
        # calibrated to the target under the configured accountant (rdp), from below
        assert 6.0 - 0.011 <= c["epsilon_rdp"] <= 6.0 + 1e-9
        # the feature releases cost something: the same z without them spends less
        alone = RDPAccountant()
        alone.history = [history[0]]
        assert alone.get_epsilon(delta=sample["delta"]) < c["epsilon_rdp"]
    md = (tmp_path / "privacy.md").read_text()
    assert "dream exchange adds ε = 0" in md and "(PRV)" in md


@pytest.mark.slow
def test_calibration_without_features_is_opacus_get_noise_multiplier() -> None:
    z = calibrate_sgd_noise(4.0, 1e-5, 0.25, 40, 0, 5.0, "rdp")
    assert z == get_noise_multiplier(
        target_epsilon=4.0,
        target_delta=1e-5,
        sample_rate=0.25,
        steps=40,
        accountant="rdp",
        epsilon_tolerance=0.005,
    )
    with_features = calibrate_sgd_noise(4.0, 1e-5, 0.25, 40, 10, 5.0, "rdp")
    assert with_features > z  # DP-SGD gets less of the budget
    eps = ledger_epsilon([(with_features, 0.25, 40), (5.0, 1.0, 10)], 1e-5, "rdp")
    assert 3.99 <= eps <= 4.0


def test_feature_noise_alone_over_budget_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="feature_noise_multiplier"):
        calibrate_sgd_noise(1.0, 1e-5, 0.25, 40, 10, 0.5, "rdp")


def test_clip_rows_bounds_every_row_and_keeps_small_rows() -> None:
    v = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    clipped, count = clip_rows(v, 1.0)
    assert count == 1
    assert torch.linalg.vector_norm(clipped, dim=1).tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert torch.equal(clipped[1], v[1])
    assert clipped[0].tolist() == pytest.approx([0.6, 0.8])


def _model_and_data() -> tuple[torch.nn.Module, torch.Tensor]:
    model = build_model("cnn-gn", in_channels=1, num_classes=10, image_size=8, seed=0)
    x = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return model, x


def test_feature_release_noise_std_is_z_times_clip_over_n() -> None:
    model, x = _model_and_data()
    clip, z = 1.0, 3.0
    v, _ = clip_rows(per_example_features(model, x).double(), clip)
    exact_mean = v.mean(dim=0)
    channels = [16, 32]
    residuals = []
    for seed in range(40):
        release = measure_feature_statistics(
            model, x, clip=clip, noise_multiplier=z, generator=torch.Generator().manual_seed(seed)
        )
        offset = 0
        for c, target in zip(channels, release.targets, strict=True):
            residuals.append(target.mean.double() - exact_mean[offset : offset + c])
            offset += 2 * c
    noise = torch.cat(residuals)
    expected = z * clip / len(x)
    assert noise.mean().item() == pytest.approx(0.0, abs=4 * expected / math.sqrt(len(noise)))
    assert noise.std().item() == pytest.approx(expected, rel=0.08)


def test_exact_statistics_match_the_batch_and_zero_the_dream_term() -> None:
    model, x = _model_and_data()
    release = measure_feature_statistics(model, x, clip=1.0, noise_multiplier=0.0, generator=None)
    assert release.clipped_fraction == 0.0
    weights = DreamLossWeights(entropy=0, tv=0, l2=0, bn=0, diversity=0, feature=1.0)
    loss, terms, _ = dream_loss(model, x, weights, feature_targets=release.targets)
    assert terms["feature"] == pytest.approx(0.0, abs=1e-4)
    shifted = [LayerTarget(t.mean + 1.0, t.var) for t in release.targets]
    xg = x.clone().requires_grad_(True)
    loss, terms, _ = dream_loss(model, xg, weights, feature_targets=shifted)
    assert terms["feature"] > 1.0
    (grad,) = torch.autograd.grad(loss, [xg])
    assert torch.linalg.vector_norm(grad) > 0


def test_private_demo_preset_validates() -> None:
    cfg = resolve_config(preset="private-demo")
    assert cfg.privacy.sample_level and cfg.secure_aggregation.enabled
    assert cfg.privacy.sample_target_epsilon > 0 and cfg.privacy.feature_stats
    assert all(name.startswith("cnn-gn") for name in cfg.client_models())
    assert len(set(cfg.client_models())) > 1  # heterogeneous architectures


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (['clients.models="cnn-bn"'], "clients.models"),
        (['clients.models="cnn-bn"', "privacy.sample_level=false"], "privacy.feature_stats"),
        (["privacy.feature_noise_multiplier=0"], "privacy.feature_noise_multiplier"),
    ],
)
def test_private_demo_bad_overrides_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config(preset="private-demo", overrides=overrides)
    assert info.value.key == key


@pytest.mark.slow
def test_tiny_private_codream_run_with_secagg(tmp_path: Path) -> None:
    cfg = _tiny(
        "privacy.feature_stats=true",
        "privacy.sample_target_epsilon=8.0",
        "secure_aggregation.enabled=true",
    )
    summary = run_experiment(cfg, tmp_path, progress=False)
    assert 0.0 <= summary["final_mean_accuracy"] <= 1.0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(len(r["feature_stats_clipped_fraction"]) == 2 for r in records)
    assert records[-1]["dream_terms"]["feature"] > 0


def _fake_run(cfg, out, progress=False):  # type: ignore[no-untyped-def]
    """Stands in for run_experiment: writes the privacy.json the bench reads back."""
    out = Path(out)
    out.mkdir(parents=True)
    if cfg.privacy.sample_level:
        section = {
            "epsilon_max_prv": cfg.privacy.sample_target_epsilon * 0.9,
            "epsilon_max_rdp": cfg.privacy.sample_target_epsilon,
            "noise_multiplier": 1.0,
        }
        (out / "privacy.json").write_text(json.dumps({"sample_level": section}))
    acc = 0.5 + 0.01 * cfg.seed + (0.1 if cfg.method == "codream" else 0.0)
    return {"final_mean_accuracy": acc}


def test_bench_rows_schema_and_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = resolve_config(preset="private-demo")
    rows = run_sample_bench(base, [1.0, 4.0], 2, tmp_path, ablation_epsilons=[4.0], run=_fake_run)
    assert [(r.method, r.epsilon, r.feature_stats) for r in rows] == [
        ("codream", 1.0, True),
        ("independent", 1.0, None),
        ("fedavg", 1.0, None),
        ("codream", 4.0, True),
        ("independent", 4.0, None),
        ("fedavg", 4.0, None),
        ("codream", None, True),
        ("independent", None, None),
        ("fedavg", None, None),
        ("codream", 4.0, False),
    ]
    data = json.loads(rows_json(rows))
    required = {"method", "epsilon", "accuracy_mean", "accuracy_std", "accuracy_per_seed"}
    required |= {"seconds"}
    for row in data:
        assert required <= set(row)
        assert len(row["accuracy_per_seed"]) == 2
    assert rows[0].accuracy_per_seed == pytest.approx([0.6, 0.61])
    assert rows[0].epsilon_rdp == 1.0 and rows[0].epsilon_prv == pytest.approx(0.9)
    assert rows[6].epsilon_rdp is None  # non-private row
    log = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(log) == 20
    # both seeds of the first ε (with the non-private rows) before any run at ε = 4
    assert [r["epsilon"] in (1.0, None) for r in log] == [True] * 12 + [False] * 8
    assert [r["seed"] for r in log] == [0] * 6 + [1] * 6 + [0] * 4 + [1] * 4
    err = capsys.readouterr().err
    assert "run 1 of 20" in err and "run 20 of 20" in err and "min left" in err
    assert isinstance(rows[0], SampleBenchRow)
    again = rows_from_log(tmp_path / "runs.jsonl")

    def key(r: SampleBenchRow) -> tuple[object, ...]:
        return (r.method, r.epsilon or 0.0, bool(r.feature_stats))

    assert [asdict(r) for r in sorted(again, key=key)] == [asdict(r) for r in sorted(rows, key=key)]


def test_ablation_epsilon_must_be_benched() -> None:
    with pytest.raises(ConfigError, match="--ablation"):
        plan_variants([1.0], feature_stats=True, ablation_epsilons=[4.0])


@pytest.mark.slow
def test_secure_aggregation_does_not_change_a_private_round() -> None:
    """SecAgg on vs off, same DP-SGD noise (research seeds): dreams and soft labels agree within
    the fixed-point encoding bound, so accuracy does not move."""
    from securedream.aggregation import Channel
    from securedream.rounds.codream import codream_round
    from securedream.rounds.experiment import Experiment

    extra = ("privacy.feature_stats=true", "privacy.sample_target_epsilon=8.0", "rounds=1")
    plain = Experiment(_tiny(*extra))
    secure = Experiment(_tiny(*extra, "secure_aggregation.enabled=true"))
    codream_round(plain, 0)
    codream_round(secure, 0)
    (x_plain, soft_plain), (x_secure, soft_secure) = plain.buffer[-1], secure.buffer[-1]
    bound = secure.aggregator.error_bound(Channel.LOGITS, 2) / 2  # mean of 2 clients
    assert torch.max(torch.abs(soft_plain - soft_secure)) <= bound + 1e-4
    assert torch.allclose(x_plain, x_secure, atol=5e-3)
    for a, b in zip(plain.clients, secure.clients, strict=True):
        assert a.evaluate(plain.data.test_x, plain.data.test_y) == pytest.approx(
            b.evaluate(secure.data.test_x, secure.data.test_y), abs=0.02
        )
