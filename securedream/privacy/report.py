"""``privacy.json`` and ``privacy.md``: every parameter needed to recompute ε independently."""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Any

from securedream.privacy.accounting import opacus_version

if TYPE_CHECKING:
    from securedream.privacy.engine import RunPrivacy


NEIGHBOURING_TEXT = {
    "zero-out": (
        "zero-out: the client stays in the run and its whole contribution to every release is "
        "replaced by zero (sensitivity C per release); participation is NOT hidden: the roster "
        "and every release's survivor set are public (and in distributed mode the noise "
        "variance reveals the number of shares)"
    ),
    "replace-one": (
        "replace-one: any change of one client's data, i.e. its whole contribution to every "
        "release replaced by another (sensitivity 2C per release); participation is NOT hidden: "
        "the roster and every release's survivor set are public"
    ),
}
ADVERSARY_TEXT = {
    "observer": "another client, or anyone who sees the dreams and soft labels",
    "server": "the server, which receives every sum",
    "server+colluders": "the server together with the colluding clients' own noise shares",
}


def _json_epsilon(eps: float) -> float | None:
    """JSON has no infinity: None means no DP against that party."""
    return eps if math.isfinite(eps) else None


def not_protected(rp: RunPrivacy) -> list[str]:
    """What this run's DP does not cover, one sentence each, for the parameters it ran with."""
    p = rp.cfg.privacy
    items = []
    if p.placement == "central":
        items.append(
            "the server: under central placement it sees the exact sum of the clipped "
            "contributions before it adds the noise, so there is no DP against it (only "
            "distributed placement gives DP against the server)"
        )
    else:
        items.append(
            f"a server colluding with more than {rp.colluders} clients: each colluder's known "
            "noise share is removed, and with all shares known nothing is left"
        )
    if p.reproducible_noise:
        items.append(
            "anyone holding the config: privacy.reproducible_noise = true derives every noise key "
            "from the run seed, so the noise can be regenerated and subtracted (research only)"
        )
    items += [
        "participation: the roster and every release's survivor set are public",
        "the dreams themselves and the soft labels are broadcast to every client",
        "a client's own trained model, which the protocol never releases but the client keeps",
        "anything a client sends outside the noised sums (see docs/privacy.md)",
        "local training is not sample-level private unless privacy.sample_level = true",
    ]
    return items


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
            "sensitivity": rp.sensitivity_factor * clip,
            "noise_multiplier": rp.noise_multiplier,
            "noise_std": rp.noise_multiplier * clip if central else None,
            "sample_rate": 1.0,
            "delta": p.delta,
            "accountant": p.accountant,
            "epsilon": _json_epsilon(rp.channel_epsilon(name)),
        }
        if not central:
            entry["skellam_releases"] = [
                {
                    "mu": r.mu,
                    "shares": r.shares,
                    "l2_sensitivity": r.l2_sensitivity,
                    "l1_sensitivity": r.l1_sensitivity,
                    "count": r.count,
                }
                for r in ledger.skellam
            ]
        channels[name] = entry
    by_adversary = rp.epsilon_by_adversary()
    report: dict[str, Any] = {
        "unit": "client: one client's whole contribution to one release (client-level DP)",
        "neighbouring": p.neighbouring,
        "neighbouring_relation": NEIGHBOURING_TEXT[p.neighbouring]
        + "; every client takes part in every release (sample rate 1); the server divides by "
        "the public client count, never by the number of survivors",
        "sensitivity_factor": rp.sensitivity_factor,
        "placement": p.placement,
        "mechanism": (
            "Gaussian noise N(0, (z·C)²) added by the server to the (secure) sum"
            if central
            else "Skellam integer noise added by each client before masking; shares calibrated so "
            f"that noise_shares = {rp.noise_shares} shares (the fewest survivors, "
            f"{rp.min_survivors}, less max(colluders, 1)) reach variance (z·Δ)² in fixed point"
        ),
        "noise_split": (
            {"server": 1.0}
            if central
            else {
                "per_client_variance_fraction": 1.0 / rp.noise_shares,
                "noise_shares": rp.noise_shares,
                "min_survivors": rp.min_survivors,
            }
        ),
        "noise_multiplier": rp.noise_multiplier,
        "target_epsilon": p.target_epsilon or None,
        "clip_norm": {"dream": p.clip_gradient, "logits": p.clip_logits},
        "clients": cfg.clients.count,
        "min_survivors": rp.min_survivors,
        "colluders": rp.colluders,
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
        "adversaries": {
            a.name: {
                "who": ADVERSARY_TEXT[a.name],
                "known_noise_shares": a.known_shares,
                "sees_exact_sum": a.known_shares is None,
                "protected": a.protected,
                "epsilon": _json_epsilon(by_adversary[a.name]),
            }
            for a in rp.adversaries()
        },
        "epsilon_by_adversary": {k: _json_epsilon(v) for k, v in by_adversary.items()},
        "epsilon_total": rp.epsilon_total(),
        "epsilon_total_is": "the largest ε among the parties the placement protects against ("
        + ", ".join(a.name for a in rp.adversaries() if a.protected)
        + ")",
        "epsilon_per_round": rp.epsilon_per_round,
        "max_epsilon": p.max_epsilon or None,
        "noise_reproducible": p.reproducible_noise,
        "noise_key": (
            "derived from the run seed (privacy.reproducible_noise = true): reproducible, and NOT "
            "private against anyone who knows the seed; research runs only"
            if p.reproducible_noise
            else "os.urandom (fresh per round)"
        ),
        "secure_aggregation": cfg.secure_aggregation.enabled,
        "not_protected": not_protected(rp),
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
    public = report.get("public_data")
    if public is not None:
        from securedream.data.public import markdown_lines

        lines += markdown_lines(public)
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
        "| party | knows noise shares | protected | ε |",
        "|---|---|---|---|",
    ]
    for name, a in report["adversaries"].items():
        known = "all (sees the exact sum)" if a["sees_exact_sum"] else a["known_noise_shares"]
        eps = "no DP" if a["epsilon"] is None else f"{a['epsilon']:.4g}"
        lines.append(
            f"| {name}: {a['who']} | {known} | {'yes' if a['protected'] else 'no'} | {eps} |"
        )
    lines += [
        "",
        "| channel | releases | C | ε (worst protected party) |",
        "|---|---|---|---|",
    ]
    for name, c in report["channels"].items():
        lines.append(f"| {name} | {c['releases']} | {c['clip_norm']} | {c['epsilon']:.4g} |")
    lines += [
        "",
        f"**Total ε = {report['epsilon_total']:.4g}** at δ = {report['delta']}: "
        f"{report['epsilon_total_is']}",
        "",
        "Not protected:",
        *[f"- {item}" for item in report["not_protected"]],
        "",
    ]
    return lines
