"""The report as a list of blocks, rendered to Markdown and HTML by their own modules.

Building the content once keeps the two reports identical; the renderers only know how to draw a
heading, a paragraph, a table and an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attacks.report.json_report import get


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str
    emphasis: str = ""  # "", "fail" or "ok"


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)


@dataclass
class Image:
    path: Path  # relative to the report folder
    caption: str


Block = Heading | Paragraph | Table | Image


# ------------------------------------------------------------------------------------------------
# formatting


def num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"
    return str(x)


def interval(est: dict[str, Any] | None, digits: int = 3) -> str:
    """'0.716 [0.690, 0.741]', with TPR below resolution or unresolved FPR spelled out."""
    if not est:
        return "–"
    details = est.get("details", {})
    if details.get("resolved") is False:
        return f"n/a (needs ≥ {round(1 / details['target_fpr'])} non-members)"
    if est.get("value") is None:
        return "–"
    if details.get("below_tpr_resolution"):
        return f"0 (< {num(est['high'], digits)})"
    return f"{num(est['value'], digits)} [{num(est['low'], digits)}, {num(est['high'], digits)}]"


# ------------------------------------------------------------------------------------------------
# sections


def _canary(results: dict[str, Any], plots: dict[str, Path]) -> list[Block]:
    c = results["canary"]
    m = c["mechanism"]
    test = c["test"]
    theory = "∞ (no DP)" if c["eps_theory"] is None else num(c["eps_theory"])
    scope = c.get("scope", "release")
    adversary = c.get("adversary") or "none (no DP)"
    if scope == "run":
        channels = ", ".join(
            f"{v['releases']} on {name} (length {v['dim']}, C = {num(c['canary_norm'][name])})"
            for name, v in c["releases_by_channel"].items()
        )
        what = (
            f"Scope: the whole run — the canary client is in every one of the run's "
            f"{c['releases_per_run']} releases ({channels}) and a run is scored by the sum of "
            f"its per-release scores; the theory is the run's ε for the audited adversary "
            f"({adversary}), the number privacy.json reports. "
            f"{c['runs']} statistics runs per side, drawn from a model of the mechanism with "
            f"the noise the engine logged for each release; "
            f"{c['mechanism_runs']['runs_per_side']} whole runs per side through the engine's "
            f"real stack check that model (noise, signal and, with secure aggregation, "
            f"bit-identity with the full protocol). Threshold: "
            f"{c['threshold_method']}."
        )
    else:
        what = (
            f"Scope: {c['releases_per_run']} release(s) per run on the {c['channel']} channel "
            f"(canary ‖C·u‖ = {num(c['canary_norm'])}, length {c['dim']}); the theory is the ε "
            f"of those releases alone, not the run's. {c['runs']} evaluation runs per side "
            f"through the engine's stack, threshold chosen on {c['calibration_runs']} separate "
            f"runs per side."
        )
    blocks: list[Block] = [
        Heading("Canary-client audit of the release mechanism"),
        Paragraph(
            f"Mechanism: {m['aggregation']} aggregation, DP {m['dp_placement']}, z = "
            f"{num(m['noise_multiplier'])}; {m['clients']} clients; δ = {c['delta']:g}; "
            f"audited adversary: {adversary}. {what}"
        ),
        Table(
            [
                "scope",
                "adversary",
                "ε lower bound",
                "ε theory",
                "ceiling (perfect test)",
                "confidence",
                "FP / OUT",
                "FN / IN",
            ],
            [
                [
                    scope,
                    adversary,
                    num(c["eps_lower_bound"]),
                    theory,
                    num(c["eps_ceiling"]),
                    f"{c['confidence']:.0%}",
                    f"{test['false_positives']} / {test['negatives']}",
                    f"{test['false_negatives']} / {test['positives']}",
                ]
            ],
        ),
        Paragraph(f"Theory: {c['eps_theory_note']}."),
    ]
    nc = c.get("noise_check")
    if nc:
        blocks.append(
            Paragraph(
                f"Noise check ({nc.get('what', 'spread of OUT scores')}): observed / accounted = "
                f"{num(nc['ratio'])} [{num(nc['ratio_interval'][0])}, "
                f"{num(nc['ratio_interval'][1])}] — {nc['status']}.",
                "" if nc["passed"] else "fail",
            )
        )
    sc = c.get("signal_check")
    if sc:
        blocks.append(
            Paragraph(
                f"Signal check: a canary of {num(sc['canary_factor'])}·C moved each of "
                f"{sc['releases']} releases by {num(sc['shift_min'], 6)} to "
                f"{num(sc['shift_max'], 6)} C along u (expected 1 ± {sc['tolerance']:.2g}).",
                "" if sc["passed"] else "fail",
            )
        )
    ident = c.get("secure_identity")
    if ident:
        blocks.append(
            Paragraph(
                f"Secure aggregation: {ident['runs']} runs re-run through the full protocol gave "
                f"{'bit-identical' if ident['identical'] else 'DIFFERENT'} releases "
                f"(max |difference| {ident['max_abs_difference']:g}).",
                "" if ident["identical"] else "fail",
            )
        )
    if "canary" in plots:
        blocks.append(Image(plots["canary"], "Canary scores, IN vs OUT (log counts)"))
    return blocks


def _mia_table(section: dict[str, Any]) -> Table:
    table = Table(["attack", "AUC", "balanced acc.", "TPR@10% FPR", "TPR@1% FPR", "TPR@0.1% FPR"])
    for attack, m in section.get("attacks", {}).items():
        tprs = m["tpr_at_fpr"]
        table.rows.append(
            [
                attack,
                interval(m["auc"]),
                interval(m["balanced_accuracy"]),
                interval(tprs.get("0.1")),
                interval(tprs.get("0.01")),
                interval(tprs.get("0.001")),
            ]
        )
    return table


def _mia(results: dict[str, Any], plots: dict[str, Path]) -> list[Block]:
    mia = results["mia"]
    s = mia["settings"]
    blocks: list[Block] = [
        Heading("Membership inference"),
        Paragraph(
            f"{s['shadows']} shadow runs of the whole pipeline; universe of "
            f"{mia['universe']['samples']} samples ({mia['universe']['members']} members). "
            f"Non-members {'are' if s['match_labels'] else 'are not'} subsampled to each "
            f"target's label mix. Intervals: AUC DeLong, rates Clopper–Pearson, "
            f"{s['confidence']:.0%}."
        ),
    ]
    for relation, title in (("own", "own data"), ("cross", "other clients' data")):
        sec = mia["models"].get(relation)
        if not sec:
            continue
        blocks.append(Heading(f"Client models — {title}", 3))
        if "skipped" in sec:
            blocks.append(Paragraph(sec["skipped"]))
            continue
        m = next(iter(sec["attacks"].values()))
        blocks.append(
            Paragraph(f"{m['members']} member pairs, {m['non_members']} non-member pairs.")
        )
        blocks.append(_mia_table(sec))
        key = f"roc_models_{relation}"
        if key in plots:
            blocks.append(Image(plots[key], f"ROC, client models ({title}), log-log"))
    d = mia["dreams"]
    blocks.append(Heading(f"Dreams — server planting candidates, observing {d['view']}", 3))
    if "skipped" in d:
        blocks.append(Paragraph(d["skipped"]))
    else:
        m = next(iter(d["attacks"].values()))
        blocks.append(
            Paragraph(
                f"{d['candidates']} candidates in {d['planted_batches']} planted batches; "
                f"{m['members']} member pairs, {m['non_members']} non-member pairs."
            )
        )
        blocks.append(_mia_table(d))
        if "roc_dreams" in plots:
            blocks.append(Image(plots["roc_dreams"], "ROC, planted dreams, log-log"))
    return blocks


def _gap_row(name: str, g: dict[str, Any]) -> list[str]:
    c = g["closer_to_train"]
    perm = c.get("permutation")
    null = (
        f"{num(perm['null_q025'])} … {num(perm['null_q975'])} (p = {num(perm['p_value'])})"
        if perm
        else ""
    )
    return [
        name,
        str(g["pairs"]),
        num(g["gap_l2"]["median"]),
        f"{num(g['gap_l2']['q05'])} … {num(g['gap_l2']['q95'])}",
        f"{num(c['value'])} [{num(c['low'])}, {num(c['high'])}]",
        null,
        num(g["ssim_train"]["median"]),
        num(g["psnr_train"]["median"], 4),
        num(g["gap_ssim"]["median"]),
    ]


def _recon(results: dict[str, Any], plots: dict[str, Path]) -> list[Block]:
    r = results["recon"]
    table = Table(
        [
            "queries",
            "pairs",
            "median gap L2",
            "gap 5%…95%",
            "share closer to train",
            "permutation null 95% (p)",
            "SSIM (train NN)",
            "PSNR dB (train NN)",
            "median gap SSIM",
        ],
        [_gap_row("dreams (buffer)", r["dreams"])],
    )
    if "inversion" in r:
        table.rows.append(
            _gap_row(f"DeepInversion of client {r['inversion']['client']}", r["inversion"])
        )
    neg = get(results, "controls.recon.negative")
    if neg:
        table.rows.append(
            [
                "negative control (unseen images)",
                "",
                num(neg["median_gap_l2"]),
                "",
                num(neg["closer_to_train"]["value"]),
                "",
                "",
                "",
                "",
            ]
        )
    blocks: list[Block] = [
        Heading("Reconstruction"),
        Paragraph(
            "Gap = L2 to the nearest training image of a client − L2 to the nearest image of a "
            "label-matched, same-size holdout set (pixels in [0, 1]); negative = closer to "
            "training data. The share's binomial interval assumes independent pairs; the "
            "permutation null (label-matched random re-splits of training ∪ holdout) does not, "
            "so judge leakage by its p-value."
        ),
        table,
    ]
    for key, caption in (
        ("gaps", "Distribution of the gap"),
        (
            "gallery_dreams",
            "Dreams closest to a training image: dream | nearest training | nearest holdout",
        ),
        (
            "gallery_inversion",
            "White-box DeepInversion: image | nearest training | nearest holdout",
        ),
    ):
        if key in plots:
            blocks.append(Image(plots[key], caption))
    return blocks


def _labels(results: dict[str, Any], plots: dict[str, Path]) -> list[Block]:
    lab = results["labels"]
    rows = []
    for name, key in (
        ("server's estimate", "estimated"),
        ("uniform guess (no information)", "reference_uniform_guess"),
        ("true federation mix (best aggregate-only guess)", "reference_true_federation_mix"),
    ):
        s = lab[key]
        rows.append(
            [name, num(s["presence_accuracy"]), num(s["tv_distance"]), num(s["top_label_accuracy"])]
        )
    blocks: list[Block] = [
        Heading("Label-distribution inference"),
        Paragraph(f"The server observes {lab['view']} on {lab['dreams']} dreams."),
        Table(["estimate", "presence accuracy", "TV distance", "top-label accuracy"], rows),
    ]
    if "labels" in plots:
        blocks.append(Image(plots["labels"], "True vs estimated label distribution per client"))
    return blocks


def _controls(results: dict[str, Any]) -> list[Block]:
    table = Table(["control", "passed", "expected", "observed"])

    def observed(c: dict[str, Any]) -> str:
        keys = ("eps_lower_bound", "auc", "closer_to_train", "ratio", "identical", "shift_max")
        for key in keys:
            if key in c:
                v = c[key]
                if isinstance(v, dict):
                    return (
                        f"{key} {num(v.get('value'))} [{num(v.get('low'))}, {num(v.get('high'))}]"
                    )
                return f"{key} {num(v) if not isinstance(v, bool) else v}"
        return ""

    for family, controls in results.get("controls", {}).items():
        for name, c in controls.items():
            expected = c.get("expected") or c.get("status", "")
            table.rows.append(
                [f"{family}.{name}", "yes" if c.get("passed") else "**NO**", expected, observed(c)]
            )
    return [Heading("Controls"), table]


def build_document(results: dict[str, Any], plots: dict[str, Path]) -> list[Block]:
    cfg = results.get("config", {})
    status = results.get("status", "ok")
    blocks: list[Block] = [Heading("securedream privacy audit", 1)]
    if status != "ok":
        blocks.append(
            Paragraph(
                "CONTROLS FAILED: "
                + ", ".join(results.get("failed_controls", []))
                + ". The figures below cannot be trusted until the controls behave.",
                "fail",
            )
        )
    else:
        blocks.append(Paragraph("All controls behaved.", "ok"))
    sa = cfg.get("secure_aggregation", {})
    pr = cfg.get("privacy", {})
    blocks.append(
        Paragraph(
            f"Run config: {cfg.get('name')} — {cfg.get('data', {}).get('dataset')}, "
            f"{cfg.get('clients', {}).get('count')} clients, {cfg.get('rounds')} rounds, "
            f"secure aggregation {'on' if sa.get('enabled') else 'off'}, DP "
            f"{pr.get('placement')}; seed {cfg.get('seed')}; audit seed "
            f"{results.get('audit_settings', {}).get('seed')}. Attacks: "
            f"{', '.join(results.get('attacks', []))}. Source run: "
            f"{get(results, 'source.run') or '(canary only: no run needed)'}."
        )
    )
    tr = results.get("target_run")
    if tr and tr.get("final_mean_accuracy") is not None:
        eps = get(tr, "privacy.epsilon_total")
        blocks.append(
            Paragraph(
                f"Target run: final mean client test accuracy {num(tr['final_mean_accuracy'])}"
                + (f"; run ε = {num(eps)} (δ = {get(tr, 'privacy.delta')})" if eps else "")
                + "."
            )
        )
    if "canary" in results:
        blocks += _canary(results, plots)
    if "mia" in results:
        blocks += _mia(results, plots)
    if "recon" in results:
        blocks += _recon(results, plots)
    if "labels" in results:
        blocks += _labels(results, plots)
    blocks += _controls(results)
    blocks.append(
        Paragraph(
            "How to read this report, the threat model of each attack and its limits: "
            "docs/audits.md. Every figure and its parameters are in audit.json."
        )
    )
    return blocks
