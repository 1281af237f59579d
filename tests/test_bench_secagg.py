"""``securedream bench secagg``: argument validation, JSON and human output, Flower comparison."""

from __future__ import annotations

import importlib.util
import json

import pytest

from securedream.bench import secagg


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert secagg.main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_json_output_has_the_documented_fields(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, ["--clients", "8", "--dim", "3000", "--dropout", "0.25", "--json"])
    for key in (
        "clients",
        "dim",
        "dropout",
        "client_seconds",
        "server_seconds",
        "bytes_up_per_client",
        "bytes_down_per_client",
        "aes_ctr_gbps",
        "mask_gbps",
        "max_abs_error",
        "exact",
    ):
        assert key in out
    assert out["clients"] == 8 and out["dim"] == 3000 and out["dropout"] == 0.25
    assert out["exact"] is True and out["max_abs_error"] <= out["error_bound"]
    assert out["survivors"] == 6


def test_harary_threshold_bits_seed_steps(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(
        capsys,
        [
            "--clients",
            "20",
            "--dim",
            "1000",
            "--dropout",
            "0.1",
            "--graph",
            "harary",
            "--degree",
            "6",
            "--threshold",
            "4",
            "--bits",
            "64",
            "--seed",
            "7",
            "--steps",
            "2",
            "--json",
        ],
    )
    assert (out["graph"], out["degree"], out["threshold"], out["bits"]) == ("harary", 6, 4, 64)
    assert out["steps"] == 2 and out["steady_client_seconds"] > 0


def test_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert secagg.main(["--clients", "5", "--dim", "100", "--dropout", "0"]) == 0
    text = capsys.readouterr().out
    assert "client compute, mean per surviving client" in text
    assert "mask expansion into accumulator" in text and "exact" in text


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (
            ["--clients", "1", "--dim", "10", "--dropout", "0"],
            "--clients must be an integer in [2,",
        ),
        (["--clients", "x", "--dim", "10", "--dropout", "0"], "--clients must be an integer"),
        (["--clients", "5", "--dim", "0", "--dropout", "0"], "--dim must be an integer in [1,"),
        (
            ["--clients", "5", "--dim", "10", "--dropout", "1.0"],
            "--dropout must be a number in [0, 1)",
        ),
        (["--clients", "5", "--dim", "10", "--dropout", "0", "--bits", "16"], "--bits"),
        (["--clients", "5", "--dim", "10", "--dropout", "0", "--graph", "ring"], "--graph"),
        (
            ["--clients", "5", "--dim", "10", "--dropout", "0", "--threshold", "9"],
            "--threshold must be in [1, 5]",
        ),
        (
            [
                "--clients",
                "9",
                "--dim",
                "10",
                "--dropout",
                "0",
                "--graph",
                "harary",
                "--degree",
                "3",
            ],
            "--degree needs --graph harary and an even value in [2, 8]",
        ),
        (["--clients", "5", "--dim", "10", "--dropout", "0", "--seed", "-1"], "--seed"),
        (["--clients", "5", "--dim", "10"], "--dropout"),
    ],
)
def test_invalid_arguments_name_the_argument_and_range(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    assert secagg.main(argv) == 2
    assert needle in capsys.readouterr().err


def test_protocol_configuration_errors_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--clients", "10", "--dim", "10", "--dropout", "0", "--graph", "harary"]
    assert secagg.main([*argv, "--degree", "4", "--threshold", "6"]) == 2
    assert "threshold must be an integer in [1, 5]" in capsys.readouterr().err


def test_compare_flower_without_flwr(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setattr(secagg, "_flower_available", lambda: False)
    out = _json(
        capsys, ["--clients", "4", "--dim", "100", "--dropout", "0", "--compare-flower", "--json"]
    )
    assert "not installed" in out["flower"]["skipped"]


@pytest.mark.skipif(importlib.util.find_spec("flwr") is None, reason="flwr not installed")
def test_flower_primitives_small_shape() -> None:
    prim = secagg.flower_primitives(6, 2000, 5, 3, survivors=5, dropped=1)
    assert prim["client_seconds"] > 0 and prim["server_seconds"] > 0
    assert prim["server_masks"] == 5 + 1 * 5
    assert set(prim["client_breakdown"]) == {"setup", "share_keys", "masked_input"}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("flwr") is None, reason="flwr not installed")
def test_flower_workflow_in_simulation(tmp_path) -> None:
    wf = secagg.flower_workflow(4, 1000, 3, 2, tmp_path, timeout=300)
    assert "error" not in wf, wf.get("error")
    assert wf["round_seconds"] > 0 and set(wf["stage_seconds"]) == {
        "setup",
        "share_keys",
        "masked_vectors",
        "unmask",
    }
