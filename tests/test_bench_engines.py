"""``securedream bench engines``: rows read back from real runs; bad flags exit 2 with one line."""

from __future__ import annotations

import json
import shutil
import tempfile

import pytest

from securedream.cli import main as cli_main

SMALL = ["--preset", "smoke", "--set", "threads=1", "--set", "dreams.global_steps=2"]


def test_inprocess_rows_as_json(tmp_path, capsys) -> None:
    code = cli_main(
        ["bench", "engines", *SMALL, "--engines", "inprocess", "--json", "--out", str(tmp_path)]
    )
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["engine"], r["aggregation"]) for r in rows] == [
        ("inprocess", "plain"),
        ("inprocess", "secure"),
    ]
    for row in rows:
        assert set(row) == {
            "engine",
            "aggregation",
            "seconds_per_round",
            "round_trips",
            "accuracy",
            "load_1min",
        }
        assert row["seconds_per_round"] > 0 and row["round_trips"] is None
        assert 0.0 <= row["accuracy"] <= 1.0
    assert rows[0]["accuracy"] == rows[1]["accuracy"]  # secure aggregation sums exactly


@pytest.mark.parametrize(
    ("flag", "value"), [("--engines", "inprocess,ray"), ("--aggregations", ""), ("--rounds", "0")]
)
def test_bad_flags_exit_2_with_one_line(flag, value, capsys) -> None:
    assert cli_main(["bench", "engines", "--preset", "smoke", flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and flag in err


@pytest.mark.slow
def test_every_engine_gives_the_same_accuracy(tmp_path, capsys, monkeypatch) -> None:
    """One smoke round, plain, on in-process, simulation and localhost deployment (~3 min)."""
    pytest.importorskip("flwr")
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    try:
        args = ["bench", "engines", *SMALL, "--aggregations", "plain", "--json"]
        assert cli_main([*args, "--out", str(tmp_path)]) == 0
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    rows = json.loads(capsys.readouterr().out)
    assert [r["engine"] for r in rows] == ["inprocess", "simulation", "deployment"]
    assert len({r["accuracy"] for r in rows}) == 1
    assert rows[1]["round_trips"] == rows[2]["round_trips"] > 0
