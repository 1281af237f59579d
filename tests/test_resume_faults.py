"""Kill a run at any file operation, resume it, and get the uninterrupted run's results (or exit 2).

``securedream.runs.atomic`` counts every file operation of a run (writes, fsyncs, renames,
appends, removals); ``SECUREDREAM_FAULT_AT=k`` stops the process just before the k-th. The fast
tests do it in-process (``SECUREDREAM_FAULT_MODE=raise``: an exception that nothing on the way up
cleans files for, so the disk is left as a kill leaves it) at the instants that matter most and at
one random instant. The slow sweep stops the run before *every* file operation of a 3-round run
(64 instants, in-process), kills real processes (``os._exit``) before 6 random ones, and SIGKILLs
3 real runs at random times. Run the sweep (13 min on 2 shared cores at load 8) with::

    python -m pytest -q -m slow tests/test_resume_faults.py
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from resume_support import run_args

from securedream.cli import main
from securedream.runs import atomic

ROOT = Path(__file__).resolve().parents[1]
RUN = run_args("rounds=3")


def _metrics(folder: Path) -> list[dict]:
    """Per-round records without wall-clock times (the only thing a resume may change)."""
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("stage_seconds", None)
    return records


def _summary(folder: Path) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    summary.pop("timing")
    return summary


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, list[str]]:
    """The uninterrupted run, and the label of each of its file operations in order."""
    folder = tmp_path_factory.mktemp("reference") / "run"
    log = folder.parent / "operations.log"
    mp = pytest.MonkeyPatch()
    mp.setenv(atomic.FAULT_LOG_ENV, str(log))
    atomic.reset_fault_counter()
    try:
        assert main([*RUN, "--out", str(folder)]) == 0
    finally:
        mp.undo()
    labels = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
    return folder, labels


def _crash_in_process(folder: Path, k: int, monkeypatch) -> None:
    monkeypatch.setenv(atomic.FAULT_ENV, str(k))
    monkeypatch.setenv(atomic.FAULT_MODE_ENV, "raise")
    atomic.reset_fault_counter()
    with pytest.raises(atomic.SimulatedCrash):
        main([*RUN, "--out", str(folder)])
    monkeypatch.delenv(atomic.FAULT_ENV)


def _check_resume(folder: Path, reference: Path, code: int, err: str, k: int, label: str) -> str:
    """Assert the resume either equals the uninterrupted run or refused cleanly; say which."""
    where = f"killed before operation {k} ({label})"
    if code == 2:  # a clean refusal is allowed, but must be one line naming the problem
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (where, err)
        return "refused"
    assert code == 0, (where, err)
    assert _metrics(folder) == _metrics(reference), where
    assert _summary(folder) == _summary(reference), where
    assert not (folder / "checkpoint.new").exists() and not (folder / "checkpoint.old").exists()
    return "resumed"


def _interesting(labels: list[str]) -> list[int]:
    """Instants inside the second round's checkpoint commit, and the append after it."""

    def at(label: str) -> list[int]:
        return [i + 1 for i, lab in enumerate(labels) if lab == label]

    renames, metas, appends = (
        at("rename checkpoint -> checkpoint.old"),
        at("rename meta.json"),
        at("append metrics.jsonl"),
    )
    # between the two renames of one commit; between state.pt and meta.json of one checkpoint;
    # after a round's metrics were appended but before its checkpoint
    return [renames[0] + 1, metas[1], appends[2] + 1]


def test_fault_points_cover_every_checkpoint_step(reference) -> None:
    _, labels = reference
    for step in (
        "mkdir checkpoint.new",
        "write state.pt",
        "rename state.pt",
        "rename meta.json",
        "rename manifest.json",
        "rename checkpoint -> checkpoint.old",
        "rename checkpoint.new -> checkpoint",
        "remove checkpoint.old",
        "append metrics.jsonl",
    ):
        assert step in labels, step
    assert labels.count("mkdir checkpoint.new") == 3


def test_kill_at_chosen_and_random_instants_then_resume(
    reference, tmp_path, monkeypatch, capsys
) -> None:
    ref_folder, labels = reference
    rng = random.Random()
    instants = [*_interesting(labels), rng.randint(1, len(labels))]
    outcomes = []
    for n, k in enumerate(instants):
        folder = tmp_path / f"cut{n}"
        _crash_in_process(folder, k, monkeypatch)
        capsys.readouterr()
        code = main(["run", "--resume", str(folder), "--quiet"])
        err = capsys.readouterr().err
        outcomes.append(_check_resume(folder, ref_folder, code, err, k, labels[k - 1]))
    # the chosen instants all fall after the first checkpoint: each resume must finish the run
    assert outcomes[:3] == ["resumed"] * 3


# --- the broad sweep: real processes ------------------------------------------------------------
def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    full_env.pop(atomic.FAULT_ENV, None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "securedream.cli", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_kill_before_every_file_operation_then_resume(
    reference, tmp_path, monkeypatch, capsys
) -> None:
    ref_folder, labels = reference
    for k in range(1, len(labels) + 1):
        folder = tmp_path / f"cut{k}"
        _crash_in_process(folder, k, monkeypatch)
        capsys.readouterr()
        if not (folder / "config.toml").exists():
            # killed before the run folder existed: the same command starts it
            assert main([*RUN, "--out", str(folder)]) == 0
            assert _metrics(folder) == _metrics(ref_folder)
            continue
        code = main(["run", "--resume", str(folder), "--quiet"])
        _check_resume(folder, ref_folder, code, capsys.readouterr().err, k, labels[k - 1])


@pytest.mark.slow
def test_real_process_killed_at_random_file_operations_then_resume(reference, tmp_path) -> None:
    ref_folder, labels = reference
    rng = random.Random()
    for k in sorted(rng.sample(range(1, len(labels) + 1), 6)):
        folder = tmp_path / f"cut{k}"
        crashed = _cli([*RUN, "--out", str(folder)], {atomic.FAULT_ENV: str(k)})
        assert crashed.returncode == atomic.FAULT_EXIT, (k, crashed.stderr[-2000:])
        if not (folder / "config.toml").exists():
            again = _cli([*RUN, "--out", str(folder)])
            assert again.returncode == 0, again.stderr[-2000:]
            continue
        resumed = _cli(["run", "--resume", str(folder), "--quiet"])
        _check_resume(folder, ref_folder, resumed.returncode, resumed.stderr, k, labels[k - 1])


@pytest.mark.slow
def test_sigkill_at_random_times_then_resume(reference, tmp_path) -> None:
    ref_folder, _ = reference
    rng = random.Random()
    for n in range(3):
        folder = tmp_path / f"kill{n}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "securedream.cli", *RUN, "--out", str(folder)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while not (folder / "config.toml").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 6.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        resumed = _cli(["run", "--resume", str(folder), "--quiet"])
        outcome = _check_resume(
            folder, ref_folder, resumed.returncode, resumed.stderr, -1, "SIGKILL"
        )
        # a folder killed at any time resumes (or restarts) to the uninterrupted run's metrics
        assert outcome == "resumed", resumed.stderr[-2000:]
