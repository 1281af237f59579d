"""A table of bad inputs through the real CLI: each exits 2 with one line naming what was wrong.

Run-folder cases start from one finished tiny run (built once), copy it, break one thing and
``--resume`` it; each also checks that the finished run's outputs were left untouched. The demo
preset's ε = 0.1 case is marked slow (it loads MNIST):
``python -m pytest -q -m slow tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from resume_support import TINY

from attacks.cli import main as audit_main
from securedream.cli import main
from securedream.config import config_to_toml, load_config, resolve_config
from securedream.engines.inprocess import run_experiment

TINY_SETS = [arg for item in TINY for arg in ("--set", item)]


def _one_line_error(err: str, fragment: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("finished") / "run"
    run_experiment(resolve_config(preset="smoke", overrides=TINY), folder, progress=False)
    return folder


# --- command-line arguments --------------------------------------------------------------------
def _cli_cases(tmp: Path, write: bool = True) -> list[tuple[str, list[str], str]]:
    """(label, argv, fragment the one-line error must contain); ``write`` creates the files."""
    a_file = tmp / "a-file"
    empty = tmp / "empty.toml"
    ok_config = tmp / "ok.toml"
    if write:
        a_file.write_text("x")
        empty.write_text("# nothing here\n")
        ok_config.write_text(config_to_toml(resolve_config(preset="smoke")))
    return [
        (
            "target epsilon too small on demo",
            [
                *("run", "--preset", "demo", "--out", str(tmp / "eps")),
                *("--set", "privacy.target_epsilon=0.1", "--set", 'privacy.placement="central"'),
            ],
            "privacy.target_epsilon",
        ),
        (
            "target epsilon too small on smoke",
            [
                *("run", "--preset", "smoke", "--out", str(tmp / "eps")),
                *("--set", "privacy.target_epsilon=0.001", "--set", 'privacy.placement="central"'),
            ],
            "privacy.target_epsilon",
        ),
        (
            "privacy noise for a tiny epsilon",
            ["privacy", "noise", "--preset", "smoke", "--target-epsilon", "0.0001"],
            "--target-epsilon",
        ),
        (
            "privacy.max_epsilon below one round",
            [
                *("run", "--preset", "smoke", "--out", str(tmp / "mx"), *TINY_SETS),
                *("--set", "privacy.max_epsilon=0.0001", "--set", 'privacy.placement="central"'),
                *("--set", "privacy.noise_multiplier=1"),
            ],
            "privacy.max_epsilon",
        ),
        ("--out below a file", ["run", "--preset", "smoke", "--out", str(a_file / "r")], "--out"),
        ("--out is a file", ["run", "--preset", "smoke", "--out", str(a_file)], "--out"),
        ("--out under /proc", ["run", "--preset", "smoke", "--out", "/proc/securedream"], "/proc"),
        ("--out under /sys", ["run", "--preset", "smoke", "--out", "/sys/securedream"], "/sys"),
        ("--out empty", ["run", "--preset", "smoke", "--out", ""], "--out"),
        (
            "--config with --preset",
            ["run", "--config", str(ok_config), "--preset", "smoke", "--out", str(tmp / "cp")],
            "--preset",
        ),
        (
            "--engine flower with --resume",
            ["run", "--resume", str(tmp / "r"), "--engine", "flower"],
            "--engine flower",
        ),
        ("empty TOML", ["run", "--config", str(empty), "--out", str(tmp / "e")], "--config"),
        (
            "newline in the run name",
            ["run", "--preset", "smoke", "--out", str(tmp / "n"), "--set", 'name="a\\nb"'],
            "name",
        ),
        ("--resume of a folder that is no run", ["run", "--resume", str(tmp)], "config.toml"),
        (
            "bench secagg --dim 2^31-1",
            ["bench", "secagg", "--clients", "10", "--dim", "2147483647", "--dropout", "0"],
            "GiB",
        ),
    ]


# the demo case loads MNIST (30 s on a busy machine): slow; the smoke case runs the same code path
CLI_LABELS = [
    pytest.param(label, marks=pytest.mark.slow) if "on demo" in label else label
    for label, _, _ in _cli_cases(Path("/nonexistent"), write=False)
]


@pytest.mark.parametrize("label", CLI_LABELS)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, label) -> None:
    _, argv, fragment = next(c for c in _cli_cases(tmp_path) if c[0] == label)
    code = main([*argv, "--quiet"] if argv[0] == "run" else argv)
    err = capsys.readouterr().err
    assert code == 2, err
    if argv[:2] != ["bench", "secagg"]:
        _one_line_error(err, fragment)
    else:  # the protocol benchmark prints its usage line first
        assert fragment in err and "Traceback" not in err, err
    for name in ("eps", "cp", "e", "n"):
        assert not (tmp_path / name).exists(), f"{name}: a refused run left a folder"


@pytest.mark.parametrize("out", ["/proc/securedream-audit", "/sys/x", "{file}/below"])
def test_audit_out_that_cannot_be_created(tmp_path, capsys, out) -> None:
    (tmp_path / "f").write_text("x")
    code = audit_main(["--preset", "smoke", "--out", out.format(file=tmp_path / "f")])
    assert code == 2
    _one_line_error(capsys.readouterr().err, "--out")


def test_run_name_with_newline_round_trips_through_config_toml(tmp_path) -> None:
    cfg = resolve_config(preset="smoke", overrides=['description="two\\nlines \\"quoted\\" \x7f"'])
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(cfg))
    assert load_config(path).description == cfg.description


# --- damaged run folders -----------------------------------------------------------------------
def _rehash(folder: Path) -> None:
    """Rewrite the manifest as if whoever edited the checkpoint also fixed the hashes."""
    ckpt = folder / "checkpoint"
    hashes = {
        n: hashlib.sha256((ckpt / n).read_bytes()).hexdigest() for n in ("state.pt", "meta.json")
    }
    (ckpt / "manifest.json").write_text(json.dumps({"format": 2, "sha256": hashes}))


def _edit_meta(key: str, value: object, rehash: bool) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        path = folder / "checkpoint" / "meta.json"
        meta = json.loads(path.read_text())
        meta[key] = value
        path.write_text(json.dumps(meta))
        if rehash:
            _rehash(folder)

    return edit


def _edit_config(old: str, new: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        path = folder / "config.toml"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))

    return edit


def _state(data: object, rehash: bool = True) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        path = folder / "checkpoint" / "state.pt"
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            torch.save(data, path)
        if rehash:
            _rehash(folder)

    return edit


def _metrics_edit(folder: Path) -> None:
    path = folder / "metrics.jsonl"
    path.write_text(path.read_text().replace('"round": 0', '"round": 7', 1))


FOLDER_CASES = [
    ("meta rounds_done = -1", _edit_meta("rounds_done", -1, rehash=False), "SHA-256"),
    ("meta rounds_done = -1, rehashed", _edit_meta("rounds_done", -1, rehash=True), "rounds_done"),
    ("meta rounds_done = 3 > rounds", _edit_meta("rounds_done", 3, rehash=True), "[0, 2]"),
    ("meta rounds_done a string", _edit_meta("rounds_done", "2", rehash=True), "rounds_done"),
    ("meta seconds a list", _edit_meta("seconds", [1], rehash=True), "seconds"),
    ("meta privacy a number", _edit_meta("privacy", 3, rehash=True), "privacy"),
    ("meta metrics offset", _edit_meta("metrics_bytes", 10**9, rehash=True), "metrics.jsonl"),
    ("seed edited in config.toml", _edit_config("seed = 0", "seed = 5"), "seed"),
    (
        "models changed",
        _edit_config('models = ["cnn-bn", "cnn-bn-wide"]', 'models = ["cnn-bn", "cnn-bn"]'),
        "clients.models",
    ),
    ("config.toml broken", _edit_config("seed = 0", "seed = "), "config.toml"),
    ("empty state.pt", _state(b"", rehash=False), "state.pt"),
    ("empty state.pt, rehashed", _state(b""), "state.pt"),
    ("state.pt wrong types", _state({"clients": "x", "buffer": []}), "clients"),
    ("state.pt a tensor", _state(torch.zeros(3)), "dict"),
    ("non-weights-only pickle", _state({"x": argparse.Namespace(a=1)}), "tensors only"),
    ("metrics edited", _metrics_edit, "metrics.jsonl"),
    ("manifest removed", lambda f: (f / "checkpoint" / "manifest.json").unlink(), "manifest"),
]


@pytest.mark.parametrize(
    ("label", "damage", "fragment"), FOLDER_CASES, ids=[c[0] for c in FOLDER_CASES]
)
def test_damaged_run_folder_is_refused(
    finished_run, tmp_path, capsys, label, damage, fragment
) -> None:
    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder)
    damage(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert main(["run", "--resume", str(folder), "--quiet"]) == 2
    err = capsys.readouterr().err
    _one_line_error(err, fragment)
    assert "weights_only=False" not in err
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert after == before, f"{label}: a refused resume changed the run folder"
