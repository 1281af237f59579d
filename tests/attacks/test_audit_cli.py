"""`securedream audit`: argument validation, end-to-end runs, report files, failing controls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audit_support import TINY, trained_run

from attacks.cli import main as audit_main
from attacks.controls import failed_controls
from attacks.report.document import build_document, interval
from attacks.report.json_report import to_jsonable
from attacks.report.markdown import render_markdown
from securedream.cli import main as securedream_main

FAST = [
    "--canary-runs", "300", "--canary-calibration-runs", "100", "--control-runs", "100",
    "--canary-mechanism-runs", "3",
    "--secure-check-runs", "2", "--shadows", "2", "--candidates", "64",
    "--inversion-steps", "20", "--inversion-images", "4", "--gallery", "3", "--quiet",
]  # fmt: skip


def _tiny_sets(*extra: str) -> list[str]:
    out: list[str] = []
    for item in [*TINY, *extra]:
        out += ["--set", item]
    return out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--canary-runs", "5"], "--canary-runs: must be in [10, 10000000], got 5"),
        (["--canary-runs", "lots"], "--canary-runs: must be an integer"),
        (["--confidence", "1.5"], "--confidence: must be in [0.5, 0.9999]"),
        (["--attacks", "canary,sql"], "--attacks: 'sql' is not one of"),
        (["--attacks", ","], "--attacks: must name at least one"),
        (["--shadows", "0"], "--shadows: must be in [1, 10000]"),
        (["--recon-permutations", "0"], "--recon-permutations: must be in [1, 1000000]"),
        (["--canary-channel", "pixels"], "--canary-channel: must be one of"),
        (["--canary-scope", "round"], "--canary-scope: must be one of ['run', 'release']"),
        (["--canary-mechanism-runs", "0"], "--canary-mechanism-runs: must be in [1, 100000]"),
        (["--inversion-client", "5"], "--inversion-client: must be in [0, 1] for this run"),
        (["--set", "clients.count=0"], "clients.count"),
        (["--set", "method=fedavg"], "method: the audits need method = codream"),
        (["--preset", "nope"], "--preset: unknown preset"),
        (["--run", "/nonexistent", "--preset", "smoke"], "give one of --run, --config, --preset"),
        (["--run", "/nonexistent"], "--run: /nonexistent is not a run folder"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(tmp_path, capsys, args, needle):
    argv = ["--out", str(tmp_path / "a")]
    if not any(a in args for a in ("--run", "--preset")):
        argv += ["--preset", "smoke"]
    assert audit_main(argv + args) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "a" / "audit.json").exists()


def test_out_is_required_and_set_is_refused_with_run(tmp_path, capsys):
    assert audit_main(["--preset", "smoke"]) == 2
    assert "--out" in capsys.readouterr().err
    run = str(trained_run())
    assert audit_main(["--run", run, "--set", "rounds=2", "--out", str(tmp_path)]) == 2
    assert "--set: cannot be combined with --run" in capsys.readouterr().err


def test_end_to_end_secure_dp_config_through_the_engine_cli(tmp_path, capsys):
    out = tmp_path / "audit"
    dp = (
        "secure_aggregation.enabled=true",
        'privacy.placement="distributed"',
        "privacy.noise_multiplier=1.0",
    )
    argv = ["audit", "--preset", "smoke", *_tiny_sets(*dp), "--out", str(out), *FAST]
    assert securedream_main(argv) == 0, capsys.readouterr().err
    data = json.loads((out / "audit.json").read_text())
    canary = data["canary"]
    for key in ("eps_lower_bound", "eps_theory", "runs", "confidence"):
        assert key in canary
    assert canary["runs"] == 300 and canary["confidence"] == 0.95
    assert 0 <= canary["eps_lower_bound"] <= canary["eps_theory"]
    assert canary["mechanism"]["dp_placement"] == "distributed"
    assert (canary["scope"], canary["adversary"]) == ("run", "server")
    assert canary["releases_per_run"] == 4  # tiny: one round of 3 dream steps + 1 soft-label
    assert data["controls"]["canary"]["signal_check"]["passed"] is True
    assert data["status"] == "ok" and data["failed_controls"] == []
    assert data["mia"]["dreams"]["relation"] == "any"  # secure: only the aggregate
    assert "secure" in data["labels"]["view"]
    assert data["controls"]["canary"]["secure_identity"]["passed"] is True
    assert (out / "target-run" / "checkpoint" / "state.pt").is_file()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and 'src="plots/' not in html
    md = (out / "report.md").read_text()
    assert "Canary-client audit" in md and "Membership inference" in md
    assert "| run | server |" in md  # the canary table shows scope and adversary
    for name in ("canary", "roc_models_own", "roc_dreams", "gaps", "gallery_dreams", "labels"):
        assert (out / "plots" / f"{name}.png").is_file()
    # a second audit into the same folder is refused without --force
    assert securedream_main(argv) == 2
    assert "already holds an audit" in capsys.readouterr().err


def test_audit_of_a_finished_run_with_a_subset_of_attacks(tmp_path, capsys):
    out = tmp_path / "audit"
    argv = ["--run", str(trained_run()), "--attacks", "canary,labels", "--out", str(out), *FAST]
    assert audit_main(argv) == 0, capsys.readouterr().err
    data = json.loads((out / "audit.json").read_text())
    assert set(data["attacks"]) == {"canary", "labels"} and "mia" not in data
    assert data["canary"]["eps_theory"] is None  # no DP: unbounded
    assert "unbounded" in data["canary"]["eps_theory_note"]
    assert not (out / "target-run").exists()  # the given run is audited, not retrained
    printed = capsys.readouterr().out
    assert "canary (run scope, adversary none): ε ≥" in printed
    assert "controls: all passed" in printed


def test_release_scope_keeps_the_one_release_audit(tmp_path, capsys):
    out = tmp_path / "audit"
    dp = ('privacy.placement="central"', "privacy.noise_multiplier=2.0")
    argv = ["--preset", "smoke", *_tiny_sets(*dp), "--attacks", "canary", "--out", str(out)]
    assert audit_main([*argv, *FAST, "--canary-scope", "release"]) == 0, capsys.readouterr().err
    canary = json.loads((out / "audit.json").read_text())["canary"]
    assert (canary["scope"], canary["adversary"], canary["releases_per_run"]) == (
        "release",
        "observer",
        1,
    )
    assert canary["calibration_runs"] == 100 and canary["dim"] == 16
    assert "| release | observer |" in (out / "report.md").read_text()


def test_a_failing_control_fails_loudly(tmp_path, capsys, monkeypatch):
    import attacks.audit

    def broken(*args, **kwargs):
        return {"positive": {"expected": "must leak", "passed": False, "eps_lower_bound": 0.0}}

    monkeypatch.setattr(attacks.audit, "canary_controls", broken)
    out = tmp_path / "audit"
    argv = ["--preset", "smoke", "--attacks", "canary", "--out", str(out), *FAST]
    assert audit_main(argv) == 3
    assert "CONTROLS FAILED: controls.canary.positive" in capsys.readouterr().err
    data = json.loads((out / "audit.json").read_text())
    assert data["status"] == "controls_failed"
    assert "CONTROLS FAILED" in (out / "report.md").read_text()
    assert 'class="fail"' in (out / "report.html").read_text()


def test_failed_controls_walks_nested_results():
    results = {
        "controls": {
            "canary": {"positive": {"passed": True}, "noise_check": {"passed": False}},
            "mia": {"negative": {"passed": False, "auc": {"value": 0.7}}},
        }
    }
    assert failed_controls(results) == ["controls.canary.noise_check", "controls.mia.negative"]


def test_json_is_strict_and_drops_private_arrays():
    import numpy as np

    data = to_jsonable(
        {"a": float("inf"), "b": np.float32(0.5), "_arrays": np.zeros(3), "c": [np.int64(2)]}
    )
    assert data == {"a": None, "b": 0.5, "c": [2]}
    json.dumps(data, allow_nan=False)


def test_interval_formatting_never_quotes_unresolved_or_zero_tpr():
    unresolved = {"value": None, "details": {"resolved": False, "target_fpr": 0.001}}
    assert interval(unresolved) == "n/a (needs ≥ 1000 non-members)"
    zero = {"value": 0.0, "low": 0.0, "high": 0.07, "details": {"below_tpr_resolution": True}}
    assert interval(zero) == "0 (< 0.070)"
    assert interval({"value": 0.5, "low": 0.4, "high": 0.6}) == "0.500 [0.400, 0.600]"


def test_document_renders_without_optional_sections():
    md = render_markdown(build_document({"status": "ok", "controls": {}}, {}))
    assert md.startswith("# securedream privacy audit")


def test_docs_exist():
    root = Path(__file__).resolve().parents[2]
    text = (root / "docs" / "audits.md").read_text()
    for needle in ("Threat model", "canary", "LiRA", "securedream audit", "Limits"):
        assert needle in text


def test_a_run_without_checkpoint_is_refused(tmp_path, capsys):
    run = trained_run("output.checkpoint=false")
    argv = ["--run", str(run), "--attacks", "labels", "--out", str(tmp_path / "a"), "--quiet"]
    assert audit_main(argv) == 2
    assert "no checkpoint/state.pt" in capsys.readouterr().err
