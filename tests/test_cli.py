"""The command line: exit codes, error messages naming the argument, run and resume."""

from __future__ import annotations

import json

import pytest

from securedream.cli import main

TINY = [
    "--set",
    "rounds=2",
    "--set",
    "dreams.global_steps=3",
    "--set",
    "dreams.batch_size=8",
    "--set",
    "data.samples_per_client=60",
    "--quiet",
]


def test_bad_key_exits_2_and_names_it(tmp_path, capsys) -> None:
    code = main(
        ["run", "--preset", "smoke", "--out", str(tmp_path / "r"), "--set", "clients.count=-1"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "clients.count" in err and "[1, 1000]" in err
    assert not (tmp_path / "r").exists()  # nothing written for a rejected config


def test_unknown_preset_exits_2(capsys) -> None:
    assert main(["run", "--preset", "nope"]) == 2
    assert "--preset" in capsys.readouterr().err


def test_argparse_rejects_bad_device() -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--device", "tpu"])
    assert info.value.code == 2


def test_run_then_refuse_to_overwrite_then_resume(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["run", "--preset", "smoke", "--out", str(out), "--seed", "3", *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == 3 and summary["rounds"] == 2
    assert "final mean client accuracy" in capsys.readouterr().out
    assert main(["run", "--preset", "smoke", "--out", str(out), *TINY]) == 2
    assert "already holds a run" in capsys.readouterr().err
    # resuming a finished run recomputes nothing and reproduces the summary
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["final_client_accuracy"] == summary["final_client_accuracy"]


def test_resume_refuses_other_config_arguments(tmp_path, capsys) -> None:
    assert main(["run", "--resume", str(tmp_path), "--seed", "1"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_presets_listed(capsys) -> None:
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "smoke" in out and "demo" in out and "paper-mnist" in out


def test_bench_accuracy_json(tmp_path, capsys) -> None:
    code = main(
        [
            "bench",
            "accuracy",
            "--preset",
            "smoke",
            "--seeds",
            "1",
            "--json",
            "--methods",
            "codream,independent",
            "--out",
            str(tmp_path),
            *TINY,
        ]
    )
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["codream", "independent"]
    for row in rows:
        assert {
            "method",
            "accuracy_mean",
            "accuracy_std",
            "bytes_per_client_round",
            "seconds",
        } <= set(row)
        assert 0 <= row["accuracy_mean"] <= 1
    assert rows[0]["bytes_per_client_round"] > 0 and rows[1]["bytes_per_client_round"] == 0


def test_bench_accuracy_sweeps_alphas(tmp_path, capsys) -> None:
    argv = ["bench", "accuracy", "--preset", "smoke", "--seeds", "1", "--methods", "independent"]
    code = main([*argv, "--alphas", "0.5,0.1", "--json", "--out", str(tmp_path), *TINY])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["method"], r["alpha"]) for r in rows] == [("independent", 0.5), ("independent", 0.1)]
    # each alpha is its own split: the runs' configs differ in data.alpha only
    saved = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert saved == ["independent-seed0-alpha0.1", "independent-seed0-alpha0.5"]
    assert rows[0]["accuracy_per_seed"] != rows[1]["accuracy_per_seed"]


def test_bench_accuracy_seeds_start_at_seed(tmp_path, capsys) -> None:
    """--seed S --seeds N runs S..S+N-1: a table on seeds that no preset uses is one command."""
    argv = ["bench", "accuracy", "--preset", "smoke", "--seed", "3", "--seeds", "2"]
    code = main([*argv, "--methods", "independent", "--json", "--out", str(tmp_path), *TINY])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["seed_list"] == [3, 4]
    saved = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert saved == ["independent-seed3", "independent-seed4"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--seeds", "0"], "--seeds"),
        (["--methods", "codream,sgd"], "--methods"),
        (["--alphas", "0.5,zero"], "--alphas"),
        (["--alphas", "0"], "--alphas"),
        (["--alphas", "0.5", "--set", 'data.split="iid"'], "--alphas"),
    ],
)
def test_bench_accuracy_validates(args, fragment, capsys) -> None:
    assert main(["bench", "accuracy", "--preset", "smoke", *args]) == 2
    assert fragment in capsys.readouterr().err


def test_bench_private_json_rows_and_nested_timing(tmp_path, capsys) -> None:
    code = main(
        [
            *("bench", "private", "--preset", "smoke", "--epsilons", "8", "--json"),
            *("--out", str(tmp_path), *TINY),
        ]
    )
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in rows] == [
        "plain",
        "secagg",
        "secagg+dp-central ε=8",
        "secagg+dp-distributed ε=8",
    ]
    plain, secagg, central, distributed = rows
    assert plain["secagg_seconds_per_round"] == 0 and plain["epsilon"] is None
    assert secagg["secagg_seconds_per_round"] > 0 and secagg["dp_noise_seconds_per_round"] == 0
    for row in (central, distributed):
        assert row["dp_noise_seconds_per_round"] > 0
        assert 0 < row["epsilon"] <= 8 * (1 + 1e-6) and row["noise_multiplier"] > 0
    for row in rows:
        # the nested stages are parts of the round, never added on top of it
        assert (
            row["secagg_seconds_per_round"] + row["dp_noise_seconds_per_round"]
            < row["round_seconds"]
        )
        assert 0 <= row["secagg_share"] < 1


def test_round_seconds_leaves_nested_stages_out() -> None:
    from securedream.runs.timing import round_seconds

    stages = {"dreaming": 10.0, "secure_aggregation": 2.0, "dp_noise": 1.0, "evaluation": 0.5}
    assert round_seconds(stages) == pytest.approx(10.5)


def test_deploy_command_writes_an_app_and_refuses_bad_config(tmp_path, capsys) -> None:
    """`securedream deploy` forwards to the Flower launcher; a bad config is one line, exit 2."""
    assert main(["deploy", "app", str(tmp_path / "app"), "--preset", "smoke"]) == 0
    assert (tmp_path / "app" / "pyproject.toml").is_file()
    rc = main(["deploy", "local", "--preset", "smoke", "--set", "clients.count=0", "--out", "x"])
    assert rc == 2
    assert "clients.count" in capsys.readouterr().err
