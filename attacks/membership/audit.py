"""Membership inference audit: loss threshold and LiRA against the models and the dream oracle.

Targets (DESIGN.md §5):

(a) the distilled client models. Pairs (client model k, sample x), two relations:
    ``own``   — x in client k's data vs x in no client's data (local training plus distillation);
    ``cross`` — x in *another* client's data vs x in none: what reaches model k only through the
                dreams and soft labels, i.e. what the dream sharing itself leaks.
(b) the dreams, through a curious server that plants candidate samples as a dream batch and scores
    each candidate by its dream-gradient response: each client's response under plain aggregation
    (``own``), only the aggregate under secure aggregation (``any``), noised under DP.

Attacks: the global loss (statistic) threshold, and fixed-variance LiRA offline and online with
shadow runs of the whole pipeline. Every figure carries its interval (``attacks.metrics``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from attacks.membership.lira import lira_scores, relation_masks
from attacks.membership.loss import model_losses
from attacks.membership.targets import (
    OracleView,
    PipelineRun,
    Universe,
    candidate_batches,
    model_observations,
    oracle_observations,
    train_shadow,
)
from attacks.metrics import DEFAULT_FPRS, membership_metrics, roc_curve

Progress = Callable[[int], None]


@dataclass(frozen=True)
class MembershipSettings:
    shadows: int = 8
    candidates: int = 1024  # samples planted as dreams (half members, half not)
    confidence: float = 0.95
    seed: int = 0
    fprs: tuple[float, ...] = DEFAULT_FPRS
    match_labels: bool = True  # non-members subsampled to the members' label mix, per row


def train_shadows(
    cfg: Any,
    universe: Universe,
    shard_size: int,
    settings: MembershipSettings,
    progress: Progress | None = None,
) -> list[PipelineRun]:
    return [
        train_shadow(cfg, universe, shard_size, s, settings.seed, on_round=progress)
        for s in range(settings.shadows)
    ]


def matched_negatives(
    labels: np.ndarray, positive: np.ndarray, negative: np.ndarray, seed: int
) -> np.ndarray:
    """Subsample each row's non-members so their label histogram matches its members'.

    Clients hold label-skewed shards, so "member of client k" and "has one of client k's labels"
    are confounded: a threshold on loss would score the skew, not membership. Per row, the largest
    label-matched subset is kept (for each label c, round(s·members_c) non-members of label c, with
    the largest s every label can supply).
    """
    rng = np.random.default_rng(seed)
    out = np.zeros_like(negative)
    for r in range(positive.shape[0]):
        pos_labels = labels[positive[r]]
        if pos_labels.size == 0:
            continue
        classes, pos_count = np.unique(pos_labels, return_counts=True)
        neg_idx = np.flatnonzero(negative[r])
        avail = np.array([np.count_nonzero(labels[neg_idx] == c) for c in classes])
        scale = float(np.min(avail / pos_count))
        for c, n_pos in zip(classes, pos_count, strict=True):
            pool = neg_idx[labels[neg_idx] == c]
            take = min(pool.size, round(scale * n_pos))
            out[r, rng.choice(pool, take, replace=False)] = True
    return out


def _evaluate(
    name: str,
    scores: dict[str, np.ndarray],
    positive: np.ndarray,
    negative: np.ndarray,
    labels: np.ndarray,
    settings: MembershipSettings,
) -> dict[str, Any]:
    """Metrics for each attack's scores over the pairs that are positive or negative."""
    if settings.match_labels:
        negative = matched_negatives(labels, positive, negative, settings.seed)
    keep = positive | negative
    pair_labels = positive[keep].astype(int)
    out: dict[str, Any] = {
        "target": name,
        "label_matched_non_members": settings.match_labels,
        "attacks": {},
    }
    if pair_labels.size == 0 or pair_labels.min() == pair_labels.max():
        out["skipped"] = "no members or no non-members among the pairs"
        return out
    rocs = {}
    for attack, values in scores.items():
        flat = values[keep]
        out["attacks"][attack] = membership_metrics(
            flat, pair_labels, confidence=settings.confidence, fprs=settings.fprs
        )
        fpr, tpr, _ = roc_curve(flat, pair_labels)
        rocs[attack] = (fpr, tpr)
    out["_roc"] = rocs
    return out


def _shadow_masks(
    shadows: list[PipelineRun], rows: int, relation: str, subset: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    ins, outs = [], []
    for sh in shadows:
        m = sh.member_of if subset is None else sh.member_of[subset]
        i, o = relation_masks(m, rows, relation)
        ins.append(i)
        outs.append(o)
    return np.stack(ins), np.stack(outs)


def audit_models(
    universe: Universe,
    target: PipelineRun,
    shadows: list[PipelineRun],
    settings: MembershipSettings,
) -> dict[str, Any]:
    """Target (a): every client model on every universe sample."""
    k = len(target.clients)
    target_obs = model_observations(target.models, universe)
    losses = model_losses(target.models, universe)
    shadow_obs = np.stack([model_observations(sh.models, universe) for sh in shadows])
    results: dict[str, Any] = {}
    for relation in ("own", "cross"):
        if relation == "cross" and k < 2:
            continue
        t_in, t_out = relation_masks(target.member_of, k, relation)
        s_in, s_out = _shadow_masks(shadows, k, relation)
        lira = lira_scores(target_obs, shadow_obs, s_in, s_out)
        res = _evaluate(
            f"client models, {relation}",
            {"loss": losses, "lira_offline": lira.offline, "lira_online": lira.online},
            t_in,
            t_out,
            universe.y.numpy(),
            settings,
        )
        res["lira_diagnostics"] = lira.diagnostics
        results[relation] = res
    return results


def audit_dreams(
    universe: Universe,
    target: PipelineRun,
    shadows: list[PipelineRun],
    settings: MembershipSettings,
) -> dict[str, Any]:
    """Target (b): candidates planted as dreams, scored by the gradient response the server sees."""
    batch = target.cfg.dreams.batch_size
    batches = candidate_batches(
        universe, target.member_of, settings.candidates, batch, settings.seed
    )
    flat = np.concatenate(batches)
    view = OracleView.for_config(target.cfg)
    rows = len(target.clients) if view.per_client else 1
    relation = "own" if view.per_client else "any"
    target_obs = oracle_observations(target, universe, batches, view, settings.seed)
    shadow_obs = np.stack(
        [
            oracle_observations(sh, universe, batches, view, settings.seed + 1 + i)
            for i, sh in enumerate(shadows)
        ]
    )
    t_in, t_out = relation_masks(target.member_of[flat], rows, relation)
    s_in, s_out = _shadow_masks(shadows, rows, relation, flat)
    lira = lira_scores(target_obs, shadow_obs, s_in, s_out)
    res = _evaluate(
        f"dreams: {view.name}",
        {"gradient": target_obs, "lira_offline": lira.offline, "lira_online": lira.online},
        t_in,
        t_out,
        universe.y.numpy()[flat],
        settings,
    )
    res["lira_diagnostics"] = lira.diagnostics
    res["view"] = view.name
    res["relation"] = relation
    res["candidates"] = int(flat.size)
    res["planted_batches"] = len(batches)
    return res


def run_membership_audit(
    universe: Universe,
    target: PipelineRun,
    shadows: list[PipelineRun],
    settings: MembershipSettings,
) -> dict[str, Any]:
    return {
        "settings": asdict(settings),
        "universe": {
            "samples": len(universe),
            "members": int((target.member_of >= 0).sum()),
            "non_members": int((target.member_of < 0).sum()),
        },
        "models": audit_models(universe, target, shadows, settings),
        "dreams": audit_dreams(universe, target, shadows, settings),
    }
