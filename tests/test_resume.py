"""Resume bookkeeping: the folder lock, a run stopped before its first checkpoint, Ctrl-C, grids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from resume_support import TINY, run_args

from securedream.cli import main
from securedream.config import resolve_config
from securedream.engines import inprocess
from securedream.runs import RunFolder

RUN = run_args()


def _accuracies(folder: Path) -> list[list[float]]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["client_accuracy"] for line in lines]


def test_locked_folder_refuses_a_second_run_or_resume(tmp_path, capsys) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.create(resolve_config(preset="smoke", overrides=TINY))
    with folder.lock():
        assert main(["run", "--resume", str(folder.path), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "in use by another securedream process" in err and str(folder.path) in err
    assert _accuracies(folder.path) == []  # the refused resume wrote nothing


def test_killed_before_first_checkpoint_restarts_with_resume(tmp_path, capsys) -> None:
    reference = tmp_path / "reference"
    assert main([*RUN, "--out", str(reference)]) == 0
    # what a run killed during round 1 leaves: its config, half a round of metrics, no checkpoint
    folder = RunFolder(tmp_path / "cut")
    folder.create(resolve_config(preset="smoke", overrides=TINY))
    folder.metrics_path.write_text('{"round": 0, "client_accuracy": [0.5')
    (folder.path / "checkpoint.new").mkdir()
    (folder.path / "checkpoint.new" / "state.pt").write_bytes(b"half")
    capsys.readouterr()
    assert main(["run", "--resume", str(folder.path), "--quiet"]) == 0
    assert "starting it again from round 0" in capsys.readouterr().err
    assert _accuracies(folder.path) == _accuracies(reference)
    assert not (folder.path / "checkpoint.new").exists()


def test_resume_of_a_run_that_finished_without_checkpoints_is_refused(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main([*RUN, "--out", str(out), "--set", "output.checkpoint=false"]) == 0
    before = (out / "summary.json").read_bytes()
    assert main(["run", "--resume", str(out), "--quiet"]) == 2
    assert "nothing to continue" in capsys.readouterr().err
    assert (out / "summary.json").read_bytes() == before


def test_ctrl_c_names_the_folder_and_the_resume_command(tmp_path, capsys, monkeypatch) -> None:
    real_round = inprocess.run_one_round

    def interrupt_second_round(exp, round_index, on_step=None):  # type: ignore[no-untyped-def]
        if round_index == 1:
            raise KeyboardInterrupt
        return real_round(exp, round_index, on_step)

    monkeypatch.setattr(inprocess, "run_one_round", interrupt_second_round)
    out = tmp_path / "run"
    assert main([*RUN, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert str(out) in err and f"securedream run --resume {out}" in err
    monkeypatch.setattr(inprocess, "run_one_round", real_round)
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert [len(a) for a in _accuracies(out)] == [2, 2]


def test_dream_grid_is_upscaled(tmp_path) -> None:
    from PIL import Image

    assert main([*RUN, "--out", str(tmp_path / "run"), "--set", "rounds=1"]) == 0
    with Image.open(tmp_path / "run" / "dreams" / "round_001.png") as image:
        width, height = image.size
    # 8 dreams of 8x8 pixels: a 2-wide grid of cells at least 64 px, each with a label strip
    assert width >= 2 * 64 and height >= 4 * 64


@pytest.mark.parametrize("cells", [1, 7])
def test_dream_grid_labels_and_atomic_write(tmp_path, cells) -> None:
    import torch
    from PIL import Image

    from securedream.runs.plots import save_dream_grid

    path = tmp_path / "grid.png"
    save_dream_grid(torch.zeros(cells, 1, 8, 8), path, [0.5], [0.5], labels=list(range(cells)))
    with Image.open(path) as image:
        assert image.size[0] >= 64 and image.size[1] >= 64 + 12
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary file left


def test_cli_hides_library_warnings_a_user_cannot_act_on() -> None:
    import warnings

    from securedream.cli import quiet_library_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_library_warnings()
        for module in ("opacus.privacy_engine", "torch.nn.modules.module", "flwr.simulation"):
            warnings.warn_explicit("noise", UserWarning, "x.py", 1, module=module)
            warnings.warn_explicit("old", DeprecationWarning, "x.py", 1, module=module)
        warnings.warn_explicit("no BatchNorm layers", UserWarning, "x.py", 1, module="securedream")
    assert [str(w.message) for w in caught] == ["no BatchNorm layers"]
