"""End-to-end runs on a tiny config: outputs, determinism, resume, baselines, byte counts."""

from __future__ import annotations

import dataclasses
import json

import pytest

from securedream.config import resolve_config
from securedream.engines.inprocess import run_experiment
from securedream.errors import RunFolderError
from securedream.runs import RunFolder

TINY = [
    "rounds=3",
    "dreams.global_steps=4",
    "dreams.batch_size=16",
    "data.samples_per_client=80",
    "distill.epochs=1",
]


def tiny(*extra: str):
    return resolve_config(preset="smoke", overrides=[*TINY, *extra])


def _comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "timing"}


def test_run_writes_every_output(tmp_path) -> None:
    summary = run_experiment(tiny(), tmp_path, progress=False)
    for name in ("config.toml", "metrics.jsonl", "summary.json", "accuracy.png", "splits.json"):
        assert (tmp_path / name).is_file(), name
    assert sorted(p.name for p in (tmp_path / "dreams").iterdir()) == [
        "round_001.png",
        "round_002.png",
        "round_003.png",
    ]
    records = RunFolder(tmp_path).read_metrics()
    assert [r["round"] for r in records] == [0, 1, 2]
    first = records[0]
    for key in ("client_accuracy", "dream_terms", "bytes_up", "bytes_down", "stage_seconds"):
        assert key in first
    assert set(first["stage_seconds"]) >= {
        "local_training",
        "dreaming",
        "distillation",
        "evaluation",
    }
    assert len(first["client_accuracy"]) == 2
    assert summary["rounds"] == 3
    assert 0.0 <= summary["final_mean_accuracy"] <= 1.0
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["final_mean_accuracy"] == summary["final_mean_accuracy"]


def test_bytes_follow_dream_size_not_model_size(tmp_path) -> None:
    cfg = tiny()
    small = run_experiment(dataclasses.replace(cfg, rounds=1), tmp_path / "a", progress=False)
    bigger = dataclasses.replace(
        cfg, rounds=1, clients=dataclasses.replace(cfg.clients, models=["resnet18", "vgg11-bn"])
    )
    large = run_experiment(bigger, tmp_path / "b", progress=False)
    assert small["bytes_per_client_round"] == large["bytes_per_client_round"]
    # up: 4 gradient uploads of 16×1×8×8 float32 + 1 logits upload of 16×10 float32
    assert small["bytes_up_per_client_round"] == 4 * 16 * 64 * 4 + 16 * 10 * 4


def test_same_seed_same_summary(tmp_path) -> None:
    a = run_experiment(tiny(), tmp_path / "a", progress=False)
    b = run_experiment(tiny(), tmp_path / "b", progress=False)
    c = run_experiment(tiny("seed=1"), tmp_path / "c", progress=False)
    assert _comparable(a) == _comparable(b)
    assert a["final_client_accuracy"] != c["final_client_accuracy"]


class Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path) -> None:
    cfg = tiny("dreams.adaptive=true", "dreams.adaptive_from_round=2")
    full = run_experiment(cfg, tmp_path / "full", progress=False)

    def stop_after_first(round_index: int, _report: dict) -> None:
        if round_index == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_experiment(cfg, tmp_path / "cut", progress=False, on_round_end=stop_after_first)
    assert not (tmp_path / "cut" / "summary.json").exists()
    folder = RunFolder(tmp_path / "cut")
    resumed = run_experiment(folder.load_config(), folder.path, resume=True, progress=False)
    assert _comparable(resumed) == _comparable(full)
    assert [r["round"] for r in folder.read_metrics()] == [0, 1, 2]
    assert "final_server_accuracy" in resumed


def test_resume_rejects_a_folder_without_checkpoint(tmp_path) -> None:
    with pytest.raises(RunFolderError, match=r"config\.toml"):
        RunFolder(tmp_path).load_config()
    with pytest.raises(RunFolderError, match="checkpoint"):
        run_experiment(tiny(), tmp_path, resume=True, progress=False)


@pytest.mark.parametrize("method", ["independent", "fedavg", "centralized"])
def test_baselines_run_on_the_same_splits(tmp_path, method: str) -> None:
    summary = run_experiment(tiny(f'method="{method}"'), tmp_path, progress=False)
    assert summary["method"] == method
    assert 0.0 <= summary["final_mean_accuracy"] <= 1.0
    if method == "fedavg":
        accuracies = summary["final_client_accuracy"]
        assert len(set(accuracies)) == 1  # every client holds the averaged model
        assert summary["bytes_per_client_round"] > 0
    elif method == "centralized":
        assert len(summary["final_client_accuracy"]) == 1
    else:
        assert summary["bytes_per_client_round"] == 0


def test_local_steps_and_snapshots(tmp_path) -> None:
    cfg = tiny(
        "dreams.local_steps=3", 'dreams.server_update="fedadam"', "dreams.snapshots=2", "rounds=1"
    )
    summary = run_experiment(cfg, tmp_path, progress=False)
    record = RunFolder(tmp_path).read_metrics()[0]
    assert record["aggregations"] == 4 + 2
    assert summary["rounds"] == 1
    assert record["bytes_by_channel"]["up/dream_delta"] > 0


def test_resume_refuses_a_folder_from_another_engine(tmp_path) -> None:
    run_experiment(tiny("rounds=1"), tmp_path, progress=False)
    meta_path = tmp_path / "checkpoint" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "engine": "flower"}))
    with pytest.raises(RunFolderError, match="flower engine"):
        run_experiment(tiny("rounds=1"), tmp_path, resume=True, progress=False)
