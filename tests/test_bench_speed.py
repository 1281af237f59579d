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
