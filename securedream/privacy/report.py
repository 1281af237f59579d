"""``privacy.json`` and ``privacy.md``: every parameter needed to recompute ε independently."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from securedream.privacy.accounting import opacus_version

if TYPE_CHECKING:
    from securedream.privacy.engine import RunPrivacy


def build_report(rp: RunPrivacy) -> dict[str, Any]:
    cfg = rp.cfg
    p = cfg.privacy
    central = p.placement == "central"
    dp = rp.aggregator
    survivors = dp.survivors if dp is not None else []
    channels: dict[str, Any] = {}
    for name, ledger in rp.ledger.channels.items():
        clip = p.clip_logits if name == "logits" else p.clip_gradient
        entry: dict[str, Any] = {
            "releases": ledger.releases,
            "clip_norm": clip,
            "noise_multiplier": rp.noise_multiplier,
            "noise_std": rp.noise_multiplier * clip if central else None,
            "sample_rate": 1.0,
            "delta": p.delta,
            "accountant": p.accountant,
            "epsilon": rp.ledger.epsilon([name]),
        }
        if not central:
            entry["skellam_releases"] = [
                {
                    "mu": r.mu,
                    "l2_sensitivity": r.l2_sensitivity,
                    "l1_sensitivity": r.l1_sensitivity,
                    "count": r.count,
                }
                for r in ledger.skellam
            ]
        channels[name] = entry
    report: dict[str, Any] = {
        "unit": "client: one client's whole contribution to one release (client-level DP)",
        "neighbouring_relation": (
            "add or remove one client; every client takes part in every release (sample rate 1); "
            "the server divides by the public client count, never by the number of survivors"
        ),
        "placement": p.placement,
        "mechanism": (
            "Gaussian noise N(0, (z·C)²) added by the server to the (secure) sum"
            if central
            else "Skellam integer noise added by each client before masking; shares calibrated so "
            f"min_survivors = {rp.min_survivors} shares reach variance (z·Δ)² in fixed point"
        ),
        "noise_split": (
            {"server": 1.0}
            if central
            else {
                "per_client_variance_fraction": 1.0 / rp.min_survivors,
                "min_survivors": rp.min_survivors,
            }
        ),
        "noise_multiplier": rp.noise_multiplier,
        "target_epsilon": p.target_epsilon or None,
        "clip_norm": {"dream": p.clip_gradient, "logits": p.clip_logits},
        "clients": cfg.clients.count,
        "survivors_per_release": {
            "min": min(survivors) if survivors else None,
            "mean": statistics.fmean(survivors) if survivors else None,
            "max": max(survivors) if survivors else None,
        },
        "releases_per_round": rp.plan.per_round(),
        "releases": {name: c.releases for name, c in rp.ledger.channels.items()},
        "accountant": p.accountant,
        "accountant_library": f"opacus {opacus_version()}",
        "delta": p.delta,
        "channels": channels,
        "epsilon_total": rp.ledger.epsilon(),
        "epsilon_per_round": rp.epsilon_per_round,
        "max_epsilon": p.max_epsilon or None,
        "noise_key": (
            "os.urandom (fresh per run)"
            if p.secure_noise
            else "derived from the run seed: reproducible, and NOT private against anyone who "
            "knows the seed; set privacy.secure_noise = true for deployments"
        ),
        "secure_aggregation": cfg.secure_aggregation.enabled,
        "not_protected": [
            "the dreams themselves and the soft labels are broadcast to every client",
            "BatchNorm running statistics shape every client's dream gradient (they are "
            "protected only as part of the clipped, noised contribution)",
            "local training is not sample-level private unless privacy.sample_level = true",
        ],
    }
    if not central:
        scale = rp.secure_scale()
        report["fixed_point_scale"] = scale
    return report


def report_markdown(report: dict[str, Any]) -> str:
    lines = ["# Privacy report", ""]
    if report.get("placement", "off") != "off":
        lines += _client_level_markdown(report)
    else:
        lines += ["Client-level DP: off (privacy.placement = off).", ""]
    sample = report.get("sample_level")
    if sample is not None:
        from securedream.privacy.sample_level import markdown_section

        lines += markdown_section(sample)
    return "\n".join(lines)


def _client_level_markdown(report: dict[str, Any]) -> list[str]:
    lines = [
        f"- unit: {report['unit']}",
        f"- neighbouring relation: {report['neighbouring_relation']}",
        f"- placement: {report['placement']}; mechanism: {report['mechanism']}",
        f"- noise multiplier z = {report['noise_multiplier']:.4g}; clip norms C: "
        f"dream {report['clip_norm']['dream']}, logits {report['clip_norm']['logits']}",
        f"- clients: {report['clients']}; survivors per release: {report['survivors_per_release']}",
        f"- accountant: {report['accountant']} ({report['accountant_library']}); "
        f"δ = {report['delta']}",
        f"- noise key: {report['noise_key']}",
        "",
        "| channel | releases | C | ε |",
        "|---|---|---|---|",
    ]
    for name, c in report["channels"].items():
        lines.append(f"| {name} | {c['releases']} | {c['clip_norm']} | {c['epsilon']:.4g} |")
    lines += [
        "",
        f"**Total ε = {report['epsilon_total']:.4g}** at δ = {report['delta']}",
        "",
        "Not protected:",
        *[f"- {item}" for item in report["not_protected"]],
        "",
    ]
    return lines
