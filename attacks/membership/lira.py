"""LiRA (Carlini et al., S&P 2022) with a fixed (global) variance, offline and online.

Per target pair (model row r, sample x) the attacker observes a statistic o (a client model's
logit-scaled confidence φ, or the negative log norm of a planted dream's gradient). From shadow runs
of the whole pipeline it estimates, per pair, the mean of that statistic over shadows where x was
OUT (μ_out) and, online, where x was IN (μ_in). With few shadows per-example variances are noise,
so one global variance per side is used (the paper's "fixed variance" variant):

- offline: score = (o − μ_out) / σ_out — how far above the OUT distribution the observation lies;
- online:  score = log N(o; μ_in, σ_in) − log N(o; μ_out, σ_out).

Pairs that no shadow saw OUT get μ_out = the mean of all OUT observations of their row; pairs
that no shadow saw IN get μ_in = μ_out + the mean IN−OUT shift over pairs that have both (the
diagnostics count how often each fallback was used).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

RELATIONS = ("own", "cross", "any")


def relation_masks(
    member_of: np.ndarray, rows: int, relation: str
) -> tuple[np.ndarray, np.ndarray]:
    """(IN, OUT) boolean masks of shape [rows, N] for a membership relation.

    ``own``: row k is client k's model; IN = x in client k's data. ``cross``: IN = x in another
    client's data (what can only reach model k through dreams and soft labels). ``any`` (one row,
    the aggregate): IN = x in some client's data. OUT is always "no client holds x"; pairs that are
    neither (x held by another client, for ``own``) are left out.
    """
    m = np.asarray(member_of)
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {list(RELATIONS)}, got {relation!r}")
    out = np.broadcast_to(m < 0, (rows, m.size)).copy()
    if relation == "any":
        if rows != 1:
            raise ValueError("relation 'any' has one row (the aggregate)")
        return (m >= 0)[None, :].copy(), out
    k = np.arange(rows)[:, None]
    if relation == "own":
        return m[None, :] == k, out
    return (m[None, :] >= 0) & (m[None, :] != k), out


@dataclass(frozen=True)
class LiraScores:
    offline: np.ndarray
    online: np.ndarray
    diagnostics: dict[str, Any]


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    count = mask.sum(axis=0)
    total = np.where(mask, values, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    return mean, count


def _pooled_std(values: np.ndarray, mask: np.ndarray, mean: np.ndarray, count: np.ndarray) -> float:
    """Square root of the pooled within-pair variance (pairs with ≥ 2 observations)."""
    dev = np.where(mask, values - mean[None], 0.0)
    dof = np.clip(count - 1, 0, None)
    if dof.sum() == 0:
        return float("nan")
    return float(np.sqrt((dev**2).sum() / dof.sum()))


def lira_scores(
    target: np.ndarray,
    shadows: np.ndarray,
    shadow_in: np.ndarray,
    shadow_out: np.ndarray,
) -> LiraScores:
    """Offline and online fixed-variance LiRA scores for every target pair ([rows, N] each).

    ``shadows``, ``shadow_in``, ``shadow_out`` have shape [S, rows, N].
    """
    if shadows.shape != shadow_in.shape or shadows.shape != shadow_out.shape:
        raise ValueError("shadow observations and masks must share one shape")
    if shadows.shape[1:] != target.shape:
        raise ValueError(f"shadows {shadows.shape} do not match the target {target.shape}")
    mu_out, n_out = _masked_mean(shadows, shadow_out)
    mu_in, n_in = _masked_mean(shadows, shadow_in)
    sd_out = _pooled_std(shadows, shadow_out, np.nan_to_num(mu_out), n_out)
    sd_in = _pooled_std(shadows, shadow_in, np.nan_to_num(mu_in), n_in)
    # fallbacks for pairs without OUT (or IN) shadows
    row_out = np.array(
        [
            np.nanmean(np.where(shadow_out[:, r], shadows[:, r], np.nan))
            for r in range(target.shape[0])
        ]
    )
    no_out = n_out == 0
    mu_out = np.where(no_out, row_out[:, None], mu_out)
    both = (n_in > 0) & ~no_out
    shift = float(np.mean((mu_in - mu_out)[both])) if both.any() else 0.0
    no_in = n_in == 0
    mu_in = np.where(no_in, mu_out + shift, mu_in)
    if not np.isfinite(sd_out) or sd_out <= 0:
        sd_out = float(np.nanstd(shadows)) or 1.0
    if not np.isfinite(sd_in) or sd_in <= 0:
        sd_in = sd_out
    offline = (target - mu_out) / sd_out
    online = _log_normal(target, mu_in, sd_in) - _log_normal(target, mu_out, sd_out)
    diagnostics = {
        "shadows": int(shadows.shape[0]),
        "sigma_out": sd_out,
        "sigma_in": sd_in,
        "mean_in_minus_out": shift,
        "pairs_without_out_shadow": int(no_out.sum()),
        "pairs_without_in_shadow": int(no_in.sum()),
        "mean_out_shadows_per_pair": float(n_out.mean()),
        "mean_in_shadows_per_pair": float(n_in.mean()),
    }
    return LiraScores(offline=offline, online=online, diagnostics=diagnostics)


def _log_normal(x: np.ndarray, mu: np.ndarray, sd: float) -> np.ndarray:
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd)
