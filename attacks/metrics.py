"""Membership-inference metrics with intervals that respect the sample size.

Convention everywhere: ``labels`` are 1 for members (IN) and 0 for non-members (OUT); a *higher*
score means "more likely a member"; a sample is predicted IN when ``score >= threshold``.

- :func:`roc_curve` / :func:`auc` — computed here (tested against scikit-learn), AUC with a DeLong
  interval (normal approximation of the Mann–Whitney statistic's variance).
- :func:`tpr_at_fpr` — the largest TPR whose empirical FPR is ≤ the target, with Clopper–Pearson
  intervals on both rates. *Resolution-aware*: with n negatives the smallest non-zero FPR is 1/n, so
  a target FPR below 1/n cannot be measured and is reported as unresolved (never as a number).
- :func:`best_balanced_accuracy` — max over thresholds of (TPR + TNR)/2; the threshold is picked
  on the same data, so this is optimistic by construction, and the report says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata

from attacks.stats import clopper_pearson

DEFAULT_FPRS = (0.1, 0.01, 0.001)


@dataclass(frozen=True)
class Estimate:
    """A figure with its interval and how it was obtained."""

    value: float | None
    low: float | None
    high: float | None
    confidence: float
    method: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _split(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape} vs {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (non-member) or 1 (member)")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    pos, neg = s[y == 1], s[y == 0]
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"need members and non-members, got {pos.size} and {neg.size}")
    return pos, neg


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, from (0, 0) at threshold +inf upwards."""
    pos, neg = _split(scores, labels)
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    tp = pos.size - np.searchsorted(np.sort(pos), thresholds, side="left")
    fp = neg.size - np.searchsorted(np.sort(neg), thresholds, side="left")
    fpr = np.concatenate([[0.0], fp / neg.size])
    tpr = np.concatenate([[0.0], tp / pos.size])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


def auc(scores: Any, labels: Any, confidence: float = 0.95) -> Estimate:
    """Area under the ROC curve (ties count ½) with a DeLong interval clipped to [0, 1]."""
    pos, neg = _split(scores, labels)
    n1, n0 = pos.size, neg.size
    combined = rankdata(np.concatenate([pos, neg]))
    rank_pos = rankdata(pos)
    rank_neg = rankdata(neg)
    value = float((combined[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
    v10 = (combined[:n1] - rank_pos) / n0
    v01 = 1.0 - (combined[n1:] - rank_neg) / n1
    var = (np.var(v10, ddof=1) / n1 if n1 > 1 else 0.0) + (
        np.var(v01, ddof=1) / n0 if n0 > 1 else 0.0
    )
    half = float(norm.ppf(0.5 + confidence / 2) * math.sqrt(max(var, 0.0)))
    return Estimate(
        value=value,
        low=max(0.0, value - half),
        high=min(1.0, value + half),
        confidence=confidence,
        method="DeLong",
        details={"members": int(n1), "non_members": int(n0), "std_error": math.sqrt(var)},
    )


def balanced_accuracy(predictions: Any, labels: Any) -> float:
    """(TPR + TNR)/2 of hard 0/1 predictions."""
    p = np.asarray(predictions).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if p.shape != y.shape:
        raise ValueError("predictions and labels differ in length")
    tpr = float(np.mean(p[y == 1] == 1))
    tnr = float(np.mean(p[y == 0] == 0))
    return (tpr + tnr) / 2


def best_balanced_accuracy(scores: Any, labels: Any, confidence: float = 0.95) -> Estimate:
    """Max over thresholds of (TPR + TNR)/2, with an interval from Clopper–Pearson on each rate.

    Each rate's interval is taken at level 1 − (1 − c)/2 so both hold at once with probability
    ≥ c; the threshold is chosen on these same scores, so the value is an optimistic summary.
    """
    pos, neg = _split(scores, labels)
    fpr, tpr, thresholds = roc_curve(scores, labels)
    values = (tpr + 1.0 - fpr) / 2
    i = int(np.argmax(values))
    tp = round(tpr[i] * pos.size)
    tn = round((1 - fpr[i]) * neg.size)
    each = 1 - (1 - confidence) / 2
    tpr_lo, tpr_hi = clopper_pearson(tp, pos.size, each)
    tnr_lo, tnr_hi = clopper_pearson(tn, neg.size, each)
    return Estimate(
        value=float(values[i]),
        low=(tpr_lo + tnr_lo) / 2,
        high=(tpr_hi + tnr_hi) / 2,
        confidence=confidence,
        method="max over thresholds (in-sample); Clopper-Pearson on TPR and TNR",
        details={
            "threshold": float(thresholds[i]),
            "members": int(pos.size),
            "non_members": int(neg.size),
        },
    )


def fpr_resolution(negatives: int) -> float:
    """The smallest non-zero false-positive rate ``negatives`` samples can show."""
    return 1.0 / negatives


def tpr_at_fpr(scores: Any, labels: Any, target_fpr: float, confidence: float = 0.95) -> Estimate:
    """TPR at the threshold with the largest TPR among those with empirical FPR ≤ ``target_fpr``.

    Unresolved (value None) when ``target_fpr`` < 1/negatives: the sample cannot tell that FPR
    from zero, and quoting a TPR there would claim a precision the data does not have.
    """
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr!r}")
    pos, neg = _split(scores, labels)
    allowed = math.floor(target_fpr * neg.size + 1e-9)
    details: dict[str, Any] = {
        "target_fpr": target_fpr,
        "members": int(pos.size),
        "non_members": int(neg.size),
        "fpr_resolution": fpr_resolution(neg.size),
        "tpr_resolution": 1.0 / pos.size,
    }
    if allowed < 1:
        details["resolved"] = False
        details["note"] = (
            f"unresolved: FPR {target_fpr:g} needs at least {math.ceil(1 / target_fpr)} "
            f"non-members, have {neg.size}"
        )
        return Estimate(None, None, None, confidence, "Clopper-Pearson", details)
    fpr, tpr, thresholds = roc_curve(scores, labels)
    ok = np.flatnonzero(fpr <= allowed / neg.size + 1e-12)
    i = int(ok[np.argmax(tpr[ok])])
    tp = round(tpr[i] * pos.size)
    fp = round(fpr[i] * neg.size)
    low, high = clopper_pearson(tp, pos.size, confidence)
    fpr_lo, fpr_hi = clopper_pearson(fp, neg.size, confidence)
    details.update(
        resolved=True,
        threshold=float(thresholds[i]),
        true_positives=int(tp),
        false_positives=int(fp),
        achieved_fpr=float(fpr[i]),
        achieved_fpr_interval=[fpr_lo, fpr_hi],
        below_tpr_resolution=tp == 0,
    )
    if tp == 0:
        details["note"] = f"no member detected: TPR < {high:.3g} at {confidence:.0%}"
    return Estimate(float(tpr[i]), low, high, confidence, "Clopper-Pearson", details)


def membership_metrics(
    scores: Any,
    labels: Any,
    *,
    confidence: float = 0.95,
    fprs: tuple[float, ...] = DEFAULT_FPRS,
) -> dict[str, Any]:
    """AUC, best balanced accuracy and TPR at each FPR, every one with its interval."""
    pos, neg = _split(scores, labels)
    return {
        "members": int(pos.size),
        "non_members": int(neg.size),
        "auc": auc(scores, labels, confidence).to_dict(),
        "balanced_accuracy": best_balanced_accuracy(scores, labels, confidence).to_dict(),
        "tpr_at_fpr": {f"{f:g}": tpr_at_fpr(scores, labels, f, confidence).to_dict() for f in fprs},
    }
