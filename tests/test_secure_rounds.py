"""CoDream rounds through secure aggregation: same result as plain, dropouts, no individual leak."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import protocols
from securedream.aggregation import Channel
from securedream.aggregation.secure import (
    SecureAggregationAborted,
    SecureAggregationSettings,
    SecureAggregator,
    parse_dropouts,
)
from securedream.config import resolve_config
from securedream.engines.inprocess import run_experiment
from securedream.errors import ConfigError
from securedream.rounds.codream import codream_round
from securedream.rounds.experiment import Experiment
from securedream.runs import RunFolder

TINY = [
    "rounds=1",
    "dreams.global_steps=4",
    "dreams.batch_size=8",
    "data.samples_per_client=60",
    "distill.epochs=1",
    'clients.models="cnn-bn"',
]


def _experiment(*extra: str) -> Experiment:
    return Experiment(resolve_config(preset="smoke", overrides=[*TINY, *extra]))


def test_secure_round_matches_plain_within_encoding_bound() -> None:
    plain = _experiment("clients.count=4")
    secure = _experiment("clients.count=4", "secure_aggregation.enabled=true")
    assert isinstance(secure.aggregator, SecureAggregator)
    codream_round(plain, 0)
    codream_round(secure, 0)
    (x_plain, soft_plain), (x_secure, soft_secure) = plain.buffer[-1], secure.buffer[-1]
    bound = secure.aggregator.error_bound(Channel.LOGITS, 4) / 4  # mean of 4
    assert torch.max(torch.abs(soft_plain - soft_secure)) <= bound + 1e-4
    # dreams move by Adam steps computed from gradients equal up to 4·Δ: nearly identical
    assert torch.allclose(x_plain, x_secure, atol=5e-3)
    for a, b in zip(plain.clients, secure.clients, strict=True):  # distillation too
        assert a.evaluate(plain.data.test_x, plain.data.test_y) == pytest.approx(
            b.evaluate(secure.data.test_x, secure.data.test_y), abs=0.02
        )


def test_dropouts_at_every_stage_round_completes_without_individual_leak(monkeypatch) -> None:
    exp = _experiment(
        "clients.count=7",
        "secure_aggregation.enabled=true",
        "secure_aggregation.threshold=3",
        'secure_aggregation.dropouts=["0:advertise:0", "1:share:0", "2:masked_input:1", '
        '"3:unmask:2"]',
    )
    agg = exp.aggregator
    assert isinstance(agg, SecureAggregator)
    encoded: list[np.ndarray] = []
    original_encode = agg._clients_encode

    def recording_encode(*args, **kwargs):
        vectors = original_encode(*args, **kwargs)
        encoded.extend(vector.copy() for vector in vectors)
        return vectors

    monkeypatch.setattr(agg, "_clients_encode", recording_encode)
    received: list[bytes] = []
    original_receive = protocols.Server.receive

    def spy(self, data, sender=None):
        received.append(bytes(data))
        return original_receive(self, data, sender=sender)

    monkeypatch.setattr(protocols.Server, "receive", spy)
    report = codream_round(exp, 0)
    log = agg.survivors_log
    assert [e["survivors"] for e in log if e["channel"] == "dream_gradient"] == [5, 4, 4, 3]
    assert report["aggregations"] == 5
    # the server never saw any client's encoded vector: masked uploads look nothing like it
    assert encoded and received
    blob = b"".join(received)
    for vector in encoded:
        raw = vector.astype(np.int32).view(np.uint32).tobytes()
        assert raw[:256] not in blob


def test_too_few_survivors_aborts_with_clear_error() -> None:
    exp = _experiment(
        "clients.count=3",
        "secure_aggregation.enabled=true",
        "secure_aggregation.threshold=3",
        'secure_aggregation.dropouts=["2:masked_input:1"]',
    )
    with pytest.raises(SecureAggregationAborted, match="fewer than t=3"):
        codream_round(exp, 0)


def test_dropped_client_returns_next_round(tmp_path) -> None:
    cfg = resolve_config(
        preset="smoke",
        overrides=[
            *TINY,
            "rounds=2",
            "clients.count=4",
            "secure_aggregation.enabled=true",
            'secure_aggregation.dropouts=["1:masked_input:1:0"]',
        ],
    )
    run_experiment(cfg, tmp_path, progress=False)
    first, second = RunFolder(tmp_path).read_metrics()
    assert first["bytes_up"][1] < first["bytes_up"][0]  # out for the rest of round 0
    assert second["bytes_up"][1] == second["bytes_up"][0]  # back in round 1


def test_simulated_dropout_rate_never_breaks_threshold(tmp_path) -> None:
    cfg = resolve_config(
        preset="smoke",
        overrides=[
            *TINY,
            "clients.count=5",
            "secure_aggregation.enabled=true",
            "secure_aggregation.dropout_rate=0.3",
            "dreams.global_steps=8",
        ],
    )
    summary = run_experiment(cfg, tmp_path, progress=False)
    assert summary["rounds"] == 1


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("9:unmask:0", "client must be in"),
        ("0:nowhere:0", "stage must be"),
        ("0:unmask", "client:stage:step"),
        ("a:unmask:0", "integers"),
    ],
)
def test_dropout_schedule_validation(item: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_dropouts([item], 4)


def test_secure_aggregation_config_errors_name_the_section() -> None:
    with pytest.raises(ConfigError, match="secure_aggregation"):
        _experiment(
            "clients.count=4", "secure_aggregation.enabled=true", "secure_aggregation.threshold=9"
        )


def test_private_secure_run_resumes_to_the_same_result(tmp_path) -> None:
    overrides = [
        *TINY,
        "rounds=3",
        "clients.count=3",
        "secure_aggregation.enabled=true",
        'privacy.placement="distributed"',
        "privacy.noise_multiplier=0.5",
        "privacy.reproducible_noise=true",  # bit-identical resume needs the same noise
    ]
    cfg = resolve_config(preset="smoke", overrides=overrides)
    full = run_experiment(cfg, tmp_path / "full", progress=False)

    class Stop(Exception):
        pass

    def stop(round_index, _report):
        if round_index == 0:
            raise Stop

    with pytest.raises(Stop):
        run_experiment(cfg, tmp_path / "cut", progress=False, on_round_end=stop)
    folder = RunFolder(tmp_path / "cut")
    resumed = run_experiment(folder.load_config(), folder.path, resume=True, progress=False)
    # a private run records only the harness's mean and spread of the client accuracies
    assert resumed["final_mean_accuracy"] == full["final_mean_accuracy"]
    assert resumed["final_std_accuracy"] == full["final_std_accuracy"]
    assert resumed["privacy"] == full["privacy"]
    a = json.loads((tmp_path / "full" / "privacy.json").read_text())
    b = json.loads((tmp_path / "cut" / "privacy.json").read_text())
    assert a["epsilon_per_round"] == b["epsilon_per_round"]


def test_settings_reject_one_client() -> None:
    from securedream.errors import SecureDreamError

    with pytest.raises(SecureDreamError, match="at least 2"):
        SecureAggregator(1, SecureAggregationSettings())
