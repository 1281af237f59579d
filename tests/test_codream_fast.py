"""CoDream-fast (method = "codream-fast"): config, determinism, learning, secure sums, bytes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from securedream.aggregation import Channel
from securedream.cli import main
from securedream.config import resolve_config
from securedream.engines.inprocess import run_experiment
from securedream.errors import ConfigError
from securedream.fast.generator import build_generator, flat_parameters, load_flat
from securedream.fast.round import fast_round
from securedream.rounds.experiment import Experiment
from securedream.runs import RunFolder

TINY = [
    'method="codream-fast"',
    "threads=1",
    "rounds=2",
    "dreams.batch_size=16",
    "data.samples_per_client=80",
    "distill.epochs=1",
    "fast.global_steps=2",
    "fast.local_steps=2",
    "fast.generator_width=8",
    "fast.latent_dim=8",
]


def tiny(*extra: str):
    return resolve_config(preset="smoke", overrides=[*TINY, *extra])


def _comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "timing"}


# --- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("fast.meta_lr=0", "fast.meta_lr"),
        ("fast.meta_lr=1.5", "fast.meta_lr"),
        ("fast.local_steps=0", "fast.local_steps"),
        ("fast.latent_dim=0", "fast.latent_dim"),
        ("fast.generator_width=2000", "fast.generator_width"),
        ("fast.lr_generator=-1", "fast.lr_generator"),
        ("fast.unknown=1", "fast.unknown"),
        ('privacy.placement="central"', "privacy.placement"),
        ("privacy.feature_stats=true", "privacy.feature_stats"),
    ],
)
def test_bad_settings_name_the_key(override: str, key: str) -> None:
    extra = [override]
    if "placement" in override:
        extra.append("privacy.noise_multiplier=1.0")
    with pytest.raises(ConfigError) as info:
        tiny(*extra)
    assert info.value.key == key


def test_fast_keys_need_the_fast_method() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config(preset="smoke", overrides=["fast.local_steps=3"])
    assert info.value.key == "fast.local_steps"
    assert "codream-fast" in str(info.value)


def test_cli_refuses_private_fast_run_with_one_line(tmp_path, capsys) -> None:
    code = main(
        [
            "run",
            "--preset",
            "smoke",
            "--set",
            'method="codream-fast"',
            "--set",
            'privacy.placement="central"',
            "--set",
            "privacy.noise_multiplier=1.0",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "privacy.placement" in err


def test_unvalidated_private_config_is_refused_at_run_time(tmp_path) -> None:
    """bench accuracy derives configs with dataclasses.replace; the round refuses them too."""
    cfg = tiny()
    private = dataclasses.replace(
        cfg,
        privacy=dataclasses.replace(cfg.privacy, placement="central", noise_multiplier=1.0),
    )
    exp = Experiment(dataclasses.replace(cfg, method="codream-fast"))
    exp.cfg = private
    with pytest.raises(ConfigError) as info:
        fast_round(exp, 0)
    assert info.value.key == "privacy.placement"


def test_flower_engine_refuses_codream_fast() -> None:
    from securedream.engines.flower.server_app import check_supported

    with pytest.raises(ConfigError) as info:
        check_supported(tiny())
    assert info.value.key == "method"


# --- the generator -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [8, 28, 32, 30])
def test_generator_makes_images_of_any_size(size: int) -> None:
    gen = build_generator(8, 4, 3, size, seed=1)
    out = gen(torch.randn(5, 8))
    assert out.shape == (5, 3, size, size)
    # the last BatchNorm has no affine part: every channel is standardised over the batch
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)


def test_generator_is_a_function_of_its_seed_and_round_trips_as_a_vector() -> None:
    a, b, c = (build_generator(8, 4, 1, 8, seed=s) for s in (1, 1, 2))
    assert torch.equal(flat_parameters(a), flat_parameters(b))
    assert not torch.equal(flat_parameters(a), flat_parameters(c))
    load_flat(c, flat_parameters(a))
    assert torch.equal(flat_parameters(c), flat_parameters(a))


# --- runs ----------------------------------------------------------------------------------------


def test_same_seed_same_metrics_and_other_seed_differs(tmp_path) -> None:
    a = run_experiment(tiny(), tmp_path / "a", progress=False)
    b = run_experiment(tiny(), tmp_path / "b", progress=False)
    c = run_experiment(tiny("seed=1"), tmp_path / "c", progress=False)
    assert _comparable(a) == _comparable(b)
    records_a, records_b = (
        [{k: v for k, v in r.items() if k != "stage_seconds"} for r in RunFolder(p).read_metrics()]
        for p in (tmp_path / "a", tmp_path / "b")
    )
    assert records_a == records_b
    assert a["final_client_accuracy"] != c["final_client_accuracy"]


def test_smoke_run_learns_above_chance_and_moves_the_generator(tmp_path) -> None:
    cfg = tiny("rounds=3", "fast.global_steps=3", "fast.local_steps=3")
    exp = Experiment(cfg)
    start = exp.fast.parameters.clone()
    summary = run_experiment(cfg, tmp_path, progress=False)
    assert summary["method"] == "codream-fast"
    assert summary["final_mean_accuracy"] > 0.3  # 10 classes: chance is 0.1
    records = RunFolder(tmp_path).read_metrics()
    # dreams are labelled with more than one class and the run wrote a dream grid per round
    assert all(sum(1 for n in r["dream_label_histogram"] if n) > 1 for r in records)
    assert len(list((tmp_path / "dreams").iterdir())) == 3
    # the meta-generator moved away from its initialisation (Reptile steps happened)
    meta = exp.fast
    meta_after = Experiment(cfg)
    meta_after.load_state_dict(torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=True))
    assert meta_after.fast is not None and meta is not None
    assert not torch.allclose(meta_after.fast.parameters, start)


class Interrupt(Exception):
    pass


def test_resume_restores_the_meta_generator(tmp_path) -> None:
    cfg = tiny()
    full = run_experiment(cfg, tmp_path / "full", progress=False)

    def stop_after_first(round_index: int, _report: dict) -> None:
        if round_index == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_experiment(cfg, tmp_path / "cut", progress=False, on_round_end=stop_after_first)
    folder = RunFolder(tmp_path / "cut")
    resumed = run_experiment(folder.load_config(), folder.path, resume=True, progress=False)
    assert _comparable(resumed) == _comparable(full)


def test_sample_level_dp_runs_and_is_reported(tmp_path) -> None:
    """DP-SGD local training: generator deltas are post-processing of the DP-SGD model."""
    cfg = tiny(
        "rounds=1",
        "clients.models=['cnn-gn', 'cnn-gn-wide']",
        "privacy.sample_level=true",
        "secure_aggregation.enabled=true",
    )
    summary = run_experiment(cfg, tmp_path, progress=False)
    assert summary["privacy"]["sample_level_epsilon_max"] > 0
    assert summary["final_client_accuracy"] is None  # a protected run withholds per-client figures


def _one_round(*extra: str) -> Experiment:
    exp = Experiment(tiny("clients.count=3", "clients.models=['cnn-bn']", *extra))
    fast_round(exp, 0)
    return exp


def test_secure_aggregation_matches_plain_up_to_fixed_point() -> None:
    plain = _one_round()
    secure = _one_round("secure_aggregation.enabled=true")
    assert secure.aggregator.name == "secure"
    assert plain.fast is not None and secure.fast is not None
    assert not torch.equal(plain.fast.parameters, secure.fast.parameters)  # encoding did happen
    torch.testing.assert_close(secure.fast.parameters, plain.fast.parameters, atol=1e-4, rtol=0)
    (x_plain, soft_plain), (x_secure, soft_secure) = plain.buffer[-1], secure.buffer[-1]
    torch.testing.assert_close(x_secure, x_plain, atol=1e-3, rtol=0)
    torch.testing.assert_close(soft_secure, soft_plain, atol=1e-2, rtol=0)
    # the secure protocol moved more bytes (masked integers, keys, shares) than float32 sums
    assert sum(secure.ledger.up.values()) > sum(plain.ledger.up.values())


def test_bytes_are_the_exchanged_tensors_and_independent_of_the_models(tmp_path) -> None:
    cfg = dataclasses.replace(tiny(), rounds=1)
    small = run_experiment(cfg, tmp_path / "a", progress=False)
    bigger = dataclasses.replace(
        cfg, clients=dataclasses.replace(cfg.clients, models=["cnn-bn-deep", "cnn-gn-wide"])
    )
    large = run_experiment(bigger, tmp_path / "b", progress=False)
    assert small["bytes_per_client_round"] == large["bytes_per_client_round"]

    exp = Experiment(cfg)
    assert exp.fast is not None
    params, latents, logits = exp.fast.size, 16 * 8, 16 * 10
    state = 4 * (params + latents)  # float32 generator parameters and latents
    steps = cfg.fast.global_steps
    assert small["bytes_up_per_client_round"] == steps * state + 4 * logits
    # down: the state before every aggregation and once more at the end, then the soft labels
    assert small["bytes_down_per_client_round"] == (steps + 1) * state + 4 * logits
    record = RunFolder(tmp_path / "a").read_metrics()[0]
    assert record["bytes_by_channel"][f"up/{Channel.GENERATOR_DELTA.value}"] == 2 * steps * state
    assert record["generator_parameters"] == params
