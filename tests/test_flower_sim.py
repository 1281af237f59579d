"""CoDream on Flower's simulation runtime (Ray) gives the in-process results.

With secure aggregation on, every client encodes with the same fixed-point scale and the same
position in the seeded rounding stream as in-process, so the sums (and therefore every metric) are
identical, not merely within the encoding bound n·Δ.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

from securedream.cli import main as cli_main
from securedream.config import resolve_config
from securedream.engines.flower import run_flower
from securedream.engines.inprocess import run_experiment
from securedream.runs import RunFolder

TINY = [
    "rounds=2",
    "dreams.global_steps=3",
    "dreams.batch_size=16",
    "data.samples_per_client=80",
    "distill.epochs=1",
    "threads=1",
]
COMPARED = (
    "train_loss",
    "client_accuracy",
    "distill_loss",
    "dream_terms",
    "dream_confidence",
    "dream_label_histogram",
    "contribution_norms",
    "aggregations",
    "survivors",
)


@pytest.fixture
def ray_tmp(monkeypatch):
    """Ray's socket paths must stay under ~107 characters: a short private folder in /tmp."""
    path = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_simulation_equals_in_process_with_secure_aggregation(tmp_path, ray_tmp) -> None:
    cfg = resolve_config(
        preset="smoke",
        overrides=[
            *TINY,
            "secure_aggregation.enabled=true",
            # compare every per-client metric (a secure run withholds them by default)
            "diagnostics.leak_per_client_metrics=true",
            "clients.count=3",
            'clients.models=["cnn-bn", "cnn-bn-wide", "cnn-gn"]',
        ],
    )
    expected = run_experiment(cfg, tmp_path / "inprocess", progress=False)
    summary = run_flower(cfg, tmp_path / "flower", progress=False)

    assert set(expected) - {"engine"} <= set(summary)
    assert summary["final_client_accuracy"] == expected["final_client_accuracy"]
    assert summary["final_mean_accuracy"] == expected["final_mean_accuracy"]
    records = RunFolder(tmp_path / "flower").read_metrics()
    reference = RunFolder(tmp_path / "inprocess").read_metrics()
    for got, want in zip(records, reference, strict=True):
        for key in COMPARED:
            assert got.get(key) == want.get(key), key
        assert got["flower"]["dropped"] == {}
        assert set(got["stage_seconds"]) >= set(want["stage_seconds"])
        # bytes are counted from the Flower payloads: the in-process tensor bytes plus record
        # overhead (npy headers, keys, protocol framing), never less
        assert all(g >= w for g, w in zip(got["bytes_up"], want["bytes_up"], strict=True))
    for name in ("config.toml", "splits.json", "summary.json", "accuracy.png", "checkpoint"):
        assert (tmp_path / "flower" / name).exists(), name
    assert sorted(p.name for p in (tmp_path / "flower" / "dreams").iterdir()) == [
        "round_001.png",
        "round_002.png",
    ]


@pytest.mark.slow
def test_cli_engine_flower(tmp_path, ray_tmp, capsys) -> None:
    code = cli_main(
        [
            "run",
            "--engine",
            "flower",
            "--preset",
            "smoke",
            "--quiet",
            "--out",
            str(tmp_path / "run"),
            *[f"--set={item}" for item in TINY],
        ]
    )
    assert code == 0
    assert "final mean client accuracy" in capsys.readouterr().out
    assert (tmp_path / "run" / "summary.json").is_file()
