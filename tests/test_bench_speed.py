"""`securedream bench speed`: prints what it measured, refuses bad arguments with exit 2."""

from __future__ import annotations

import json

import pytest

from securedream.cli import main


def test_cohort_speed_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "bench",
            "speed",
            "--cohorts",
            "1,3",
            "--dream-batch",
            "2",
            "--repeats",
            "1",
            "--loop",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["step_ms"]) == {"1", "3"}
    assert result["ratio_to_smallest"]["1"] == 1.0
    assert set(result["loop_step_ms"]) == {"1", "3"}
    assert result["device"] == "cpu" and len(result["loadavg"]) == 3


def test_preset_speed_reports_stages(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "bench",
            "speed",
            "--preset",
            "smoke",
            "--set",
            "dreams.global_steps=3",
            "--set",
            "threads=1",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dream_step_ms_median"] > 0
    assert result["local_training_s_per_round"] > 0
    assert result["secure_aggregation_share"] == 0.0  # smoke has no secure aggregation


@pytest.mark.parametrize(
    "args", [["--cohorts", "0,4"], ["--cohorts", "a"], ["--population", "--rate", "2"]]
)
def test_bad_arguments_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "speed", *args]) == 2
    assert "securedream bench speed:" in capsys.readouterr().err


def test_secagg_step_reports_serial_and_pipelined(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "speed", "--secagg-step", "--clients", "3", "--dim", "500"]
    code = main([*argv, "--steps", "4", "--gap-ms", "1", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    for mode in ("serial", "pipelined"):
        assert result[mode]["critical_path_ms_median"] > 0
        assert result[mode]["main_thread_cpu_ms_median"] > 0
    assert result["serial"]["ahead_cpu_ms_per_aggregation"] == 0.0
    assert result["pipelined"]["ahead_cpu_ms_per_aggregation"] > 0  # work moved to the worker
    assert result["clients"] == 3 and result["dim"] == 500


def test_preset_speed_reports_secure_aggregation(capsys: pytest.CaptureFixture[str]) -> None:
    common = ["bench", "speed", "--preset", "smoke", "--set", "dreams.global_steps=3"]
    common += ["--set", "secure_aggregation.enabled=true", "--set", "threads=1", "--json"]
    for extra, pipelined in (([], True), (["--no-pipeline"], False)):
        assert main([*common, *extra]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["secure_aggregation_pipeline"] is pipelined
        assert result["aggregations_per_round"] == 4  # 3 dream steps + 1 soft-label snapshot
        assert result["secure_aggregation_ms_per_aggregation"] > 0
        assert 0 < result["secure_aggregation_share"] < 1
        assert (result["secure_aggregation_ahead_cpu_s_per_round"] > 0) is pipelined
        assert result["compute"] == {"autocast": "off", "channels_last": False}


@pytest.mark.parametrize(
    "args", [["--secagg-step", "--clients", "1"], ["--secagg-step", "--dim", "0"]]
)
def test_secagg_step_bad_arguments_exit_2(args: list[str], capsys) -> None:
    assert main(["bench", "speed", *args]) == 2
    assert "securedream bench speed: --" in capsys.readouterr().err
