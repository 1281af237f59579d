"""Writes an audit folder: audit.json, report.md, report.html and plots/*.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from attacks.report import plots as P
from attacks.report.document import build_document
from attacks.report.html import render_html
from attacks.report.json_report import write_json
from attacks.report.markdown import render_markdown
from securedream.runs import atomic


def make_plots(results: dict[str, Any], out: Path, universe_pixels: Any = None) -> dict[str, Path]:
    """Every PNG the results allow; returns name → path relative to ``out``."""
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}

    def rel(name: str) -> Path:
        made[name] = Path("plots") / f"{name}.png"
        return out / made[name]

    canary = results.get("canary")
    if canary and "_scores" in canary:
        P.canary_plot(
            np.asarray(canary["_scores"]["in"]),
            np.asarray(canary["_scores"]["out"]),
            canary["threshold"],
            rel("canary"),
            f"canary audit: ε ≥ {canary['eps_lower_bound']:.3f}",
        )
    mia = results.get("mia")
    if mia:
        for relation, sec in mia["models"].items():
            if "_roc" in sec:
                negatives = next(iter(sec["attacks"].values()))["non_members"]
                P.roc_plot(sec["_roc"], rel(f"roc_models_{relation}"), sec["target"], negatives)
        d = mia["dreams"]
        if "_roc" in d:
            negatives = next(iter(d["attacks"].values()))["non_members"]
            P.roc_plot(d["_roc"], rel("roc_dreams"), d["target"], negatives)
    recon = results.get("recon")
    if recon:
        gaps = {"dreams": recon["dreams"]["_gaps"].gap_l2}
        if "inversion" in recon:
            gaps["DeepInversion"] = recon["inversion"]["_gaps"].gap_l2
        P.gap_histogram(gaps, rel("gaps"), "nearest training − nearest holdout (L2)")
        if universe_pixels is not None:
            count = int(recon["settings"]["gallery"])
            P.gallery(
                recon["dreams"]["_queries"],
                universe_pixels,
                recon["dreams"]["_gaps"],
                count,
                rel("gallery_dreams"),
                "dreams closest to a training image",
            )
            if "inversion" in recon:
                P.gallery(
                    recon["inversion"]["_queries"],
                    universe_pixels,
                    recon["inversion"]["_gaps"],
                    count,
                    rel("gallery_inversion"),
                    "white-box DeepInversion",
                )
    labels = results.get("labels")
    if labels:
        P.label_plot(
            np.asarray(labels["estimates"]),
            np.asarray(labels["truth"]),
            rel("labels"),
            f"label inference from {labels['view']}",
        )
    return made


def write_report(results: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    universe_pixels = results.get("_universe_pixels")
    plots = make_plots(results, out, universe_pixels)
    results["plots"] = {k: str(v) for k, v in plots.items()}
    blocks = build_document(results, plots)
    files = {
        "json": write_json(out / "audit.json", results),
        "markdown": out / "report.md",
        "html": out / "report.html",
    }
    atomic.write_text(files["markdown"], render_markdown(blocks))
    atomic.write_text(files["html"], render_html(blocks, out))
    return files
