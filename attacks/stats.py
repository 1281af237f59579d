"""Exact binomial intervals and the empirical ε lower bound of a DP audit.

Everything an audit concludes from counts goes through here:

- :func:`clopper_pearson` — the exact (conservative) binomial interval, from beta quantiles.
- :func:`epsilon_lower_bound` — from the false-positive and false-negative counts of a membership
  test at one threshold, the (ε, δ)-DP hypothesis-testing bound (Kairouz et al. 2015; the form used
  by Jagielski et al. 2020 and Nasr et al. 2021)::

      ε ≥ max( ln((1 − δ − FNR) / FPR), ln((1 − δ − FPR) / FNR) )

  evaluated at *upper* confidence limits of FPR and FNR. Each limit is the upper end of a two-sided
  Clopper–Pearson interval at the requested confidence c, i.e. a one-sided limit at level
  1 − (1 − c)/2, so both hold at once with probability ≥ c (union bound). With n trials a side and a
  perfect test, the largest certifiable ε is :func:`epsilon_ceiling` (c = 0.95: 3.28 for n = 100,
  5.60 for n = 1000).
- :func:`choose_threshold` — the threshold that maximises the bound expected at the evaluation
  sample size, chosen on *calibration* scores that are never reused for the bound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import beta


def _check_counts(k: int, n: int, name: str = "k") -> None:
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if isinstance(k, bool) or int(k) != k or not 0 <= k <= n:
        raise ValueError(f"{name} must be an integer in [0, n={n}], got {k!r}")


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided exact interval for a binomial proportion with ``k`` successes in ``n`` trials.

    Lower limit Beta(α/2; k, n−k+1) (0 when k = 0), upper Beta(1−α/2; k+1, n−k) (1 when k = n),
    α = 1 − confidence.
    """
    _check_counts(k, n)
    _check_confidence(confidence)
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def clopper_pearson_upper(k: int | np.ndarray, n: int, confidence: float = 0.95) -> Any:
    """Upper end of the two-sided interval (vectorised over ``k``)."""
    _check_confidence(confidence)
    k_arr = np.asarray(k, dtype=np.float64)
    alpha = 1.0 - confidence
    with np.errstate(invalid="ignore"):
        upper = beta.ppf(1 - alpha / 2, k_arr + 1, np.maximum(n - k_arr, 1e-300))
    upper = np.where(k_arr >= n, 1.0, upper)
    return float(upper) if np.ndim(upper) == 0 else upper


@dataclass(frozen=True)
class EpsilonBound:
    """The empirical ε lower bound at one threshold, with everything needed to recompute it."""

    eps_lower_bound: float
    eps_point: float  # the same formula at the observed rates (no interval; not a bound)
    direction: str  # "fpr" (high scores mean IN) or "fnr" (low scores mean IN)
    false_positives: int
    negatives: int
    false_negatives: int
    positives: int
    fpr: float
    fnr: float
    fpr_upper: float
    fnr_upper: float
    delta: float
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _log_ratio(numerator: float, denominator: float) -> float:
    if numerator <= 0:
        return 0.0
    if denominator <= 0:
        return math.inf
    return max(0.0, math.log(numerator / denominator))


def epsilon_lower_bound(
    false_positives: int,
    negatives: int,
    false_negatives: int,
    positives: int,
    *,
    delta: float,
    confidence: float = 0.95,
) -> EpsilonBound:
    """ε lower bound from one test's error counts (see the module docstring); never below 0."""
    _check_counts(false_positives, negatives, "false_positives")
    _check_counts(false_negatives, positives, "false_negatives")
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta!r}")
    fpr = false_positives / negatives
    fnr = false_negatives / positives
    fpr_u = float(clopper_pearson_upper(false_positives, negatives, confidence))
    fnr_u = float(clopper_pearson_upper(false_negatives, positives, confidence))
    by_fpr = _log_ratio(1 - delta - fnr_u, fpr_u)
    by_fnr = _log_ratio(1 - delta - fpr_u, fnr_u)
    point = max(_log_ratio(1 - delta - fnr, fpr), _log_ratio(1 - delta - fpr, fnr))
    return EpsilonBound(
        eps_lower_bound=max(by_fpr, by_fnr),
        eps_point=point,
        direction="fpr" if by_fpr >= by_fnr else "fnr",
        false_positives=int(false_positives),
        negatives=int(negatives),
        false_negatives=int(false_negatives),
        positives=int(positives),
        fpr=fpr,
        fnr=fnr,
        fpr_upper=fpr_u,
        fnr_upper=fnr_u,
        delta=delta,
        confidence=confidence,
    )


def epsilon_ceiling(trials: int, *, delta: float = 0.0, confidence: float = 0.95) -> float:
    """The largest ε a perfect test can certify with ``trials`` runs on each side."""
    return epsilon_lower_bound(
        0, trials, 0, trials, delta=delta, confidence=confidence
    ).eps_lower_bound


def _bounds_for_counts(
    fp: np.ndarray, fn: np.ndarray, n_out: int, n_in: int, delta: float, confidence: float
) -> np.ndarray:
    """Vectorised lower bound (max of both directions) for arrays of error counts."""
    fpr_u = clopper_pearson_upper(fp, n_out, confidence)
    fnr_u = clopper_pearson_upper(fn, n_in, confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(np.clip(1 - delta - fnr_u, 1e-300, None) / fpr_u)
        b = np.log(np.clip(1 - delta - fpr_u, 1e-300, None) / fnr_u)
    return np.maximum(np.maximum(a, b), 0.0)


def choose_threshold(
    scores_in: np.ndarray,
    scores_out: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    eval_in: int | None = None,
    eval_out: int | None = None,
    calibration_confidence: float = 0.8,
) -> float:
    """Threshold (score ≥ t means IN) maximising the bound expected on the evaluation runs.

    The error rates at each candidate threshold come from these calibration scores, taken at the
    upper end of a Clopper–Pearson interval (``calibration_confidence``) rather than at the point
    estimate: a threshold deep in a sparse tail looks best on calibration by luck more often than
    not (winner's curse), and the pessimistic rate steers away from it. The rates are scaled to the
    evaluation sample sizes (``eval_in``/``eval_out``, default the calibration sizes), so a deeper
    tail is chosen when more evaluation runs will resolve it. The orientation is fixed (higher
    score = IN); both of its tails are tried: a high threshold bounds ε through FPR, a low one
    through FNR.
    Thresholds are the midpoints between consecutive distinct calibration scores, plus one beyond
    each end.
    """
    s_in = np.sort(np.asarray(scores_in, dtype=np.float64))
    s_out = np.sort(np.asarray(scores_out, dtype=np.float64))
    if s_in.size == 0 or s_out.size == 0:
        raise ValueError("choose_threshold needs calibration scores on both sides")
    n_in = eval_in or s_in.size
    n_out = eval_out or s_out.size
    candidates = np.unique(np.concatenate([s_in, s_out]))
    mids = (candidates[:-1] + candidates[1:]) / 2
    span = max(float(candidates[-1] - candidates[0]), 1.0)
    thresholds = np.concatenate([[candidates[0] - span], mids, [candidates[-1] + span]])
    fp_k = s_out.size - np.searchsorted(s_out, thresholds, side="left")
    fn_k = np.searchsorted(s_in, thresholds, side="left")
    fp_rate = clopper_pearson_upper(fp_k, s_out.size, calibration_confidence)
    fn_rate = clopper_pearson_upper(fn_k, s_in.size, calibration_confidence)
    fp = np.minimum(np.round(fp_rate * n_out), n_out)
    fn = np.minimum(np.round(fn_rate * n_in), n_in)
    bounds = _bounds_for_counts(fp, fn, n_out, n_in, delta, confidence)
    # ties: prefer the threshold nearest the middle of the best plateau
    best = np.flatnonzero(bounds >= bounds.max() - 1e-12)
    return float(thresholds[best[len(best) // 2]])


def bound_at_threshold(
    scores_in: np.ndarray,
    scores_out: np.ndarray,
    threshold: float,
    *,
    delta: float,
    confidence: float = 0.95,
) -> EpsilonBound:
    """The bound on evaluation scores at a fixed threshold (score ≥ threshold means IN)."""
    s_in = np.asarray(scores_in, dtype=np.float64)
    s_out = np.asarray(scores_out, dtype=np.float64)
    fp = int(np.count_nonzero(s_out >= threshold))
    fn = int(np.count_nonzero(s_in < threshold))
    return epsilon_lower_bound(fp, s_out.size, fn, s_in.size, delta=delta, confidence=confidence)


def gaussian_threshold(
    shift: float,
    std: float,
    *,
    runs_in: int,
    runs_out: int,
    delta: float,
    confidence: float = 0.95,
    points: int = 4001,
) -> float:
    """Threshold (score ≥ t means IN) maximising the bound expected for OUT ~ N(0, std²) and
    IN ~ N(shift, std²) with ``runs_in``/``runs_out`` evaluation runs.

    Chosen from the *accounted* noise alone, before any score is drawn: the threshold depends on no
    evaluation score, so :func:`bound_at_threshold` stays a valid bound whatever the real score
    distributions are (a wrong model costs power, never soundness), and no runs are spent on
    calibration. The expected error counts are rounded to integers and scored with the same
    Clopper–Pearson limits as the real bound, so a tail too sparse for the run count is never
    preferred. Without noise (``std`` = 0) any threshold strictly between 0 and ``shift`` separates
    the sides; the midpoint is returned.
    """
    from scipy.stats import norm

    if std < 0 or not math.isfinite(std):
        raise ValueError(f"std must be finite and >= 0, got {std!r}")
    if std == 0:
        return shift / 2
    # both tails: a high threshold bounds ε through FPR, a low one through FNR
    z = np.linspace(-9.0, shift / std + 9.0, points)
    fp = np.round(runs_out * norm.sf(z))
    fn = np.round(runs_in * norm.cdf(z - shift / std))
    bounds = _bounds_for_counts(fp, fn, runs_out, runs_in, delta, confidence)
    best = np.flatnonzero(bounds >= bounds.max() - 1e-12)
    return float(z[best[len(best) // 2]] * std)
