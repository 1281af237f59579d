"""Seeded division of a train pool among clients: IID, Dirichlet(alpha) or disjoint labels.

All schemes give every client exactly ``samples_per_client`` samples and never give a sample to two
clients, so that differences between runs come from label skew alone, not from unequal data volume
or overlap. Impossible requests raise :class:`SplitError` with the numbers instead of silently
handing out fewer samples.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from securedream.errors import SecureDreamError

if TYPE_CHECKING:
    from securedream.config import RunConfig

SPLIT_SCHEMES = ("iid", "dirichlet", "disjoint")


class SplitError(SecureDreamError, ValueError):
    """A client split is invalid or cannot be satisfied by the pool."""


def split_clients(
    labels: np.ndarray,
    num_clients: int,
    *,
    scheme: str,
    samples_per_client: int | None,
    alpha: float = 0.5,
    labels_per_client: int = 2,
    seed: int,
) -> list[np.ndarray]:
    """Per-client sorted int64 index arrays into ``labels`` (the train pool's labels).

    ``samples_per_client=None`` divides the whole pool equally (floor). ``alpha`` is the Dirichlet
    concentration (``scheme="dirichlet"``; small = skewed), ``labels_per_client`` the number of
    labels each client holds (``scheme="disjoint"``; labels are dealt round-robin so every label is
    used when ``num_clients * labels_per_client >= number of labels``). Same seed, same split.
    ``labels`` may be any 1-D integer array-like (a CPU tensor works).
    """
    y = _check_labels(labels)
    _check_int("num_clients", num_clients, low=1)
    if scheme not in SPLIT_SCHEMES:
        raise SplitError(f"scheme: {scheme!r} is not one of {list(SPLIT_SCHEMES)}")
    _check_int("seed", seed, low=0)
    n = len(y)
    if samples_per_client is None:
        samples_per_client = n // num_clients
        if samples_per_client < 1:
            raise SplitError(
                f"samples_per_client: the pool of {n} samples cannot give each of "
                f"{num_clients} clients at least one sample"
            )
    _check_int("samples_per_client", samples_per_client, low=1)
    total = num_clients * samples_per_client
    if total > n:
        raise SplitError(
            f"samples_per_client: {num_clients} clients x {samples_per_client} samples = {total} "
            f"exceeds the pool of {n} samples; use at most {n // num_clients} per client"
        )
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.split(rng.permutation(n)[:total], num_clients)
    elif scheme == "dirichlet":
        if not (
            isinstance(alpha, (int, float, np.integer, np.floating))
            and math.isfinite(alpha)
            and alpha > 0
        ):
            raise SplitError(f"alpha: must be a finite number > 0, got {alpha!r}")
        parts = _dirichlet(y, num_clients, samples_per_client, float(alpha), rng)
    else:
        num_labels = len(np.unique(y))
        _check_int("labels_per_client", labels_per_client, low=1, high=num_labels)
        parts = _disjoint(y, num_clients, samples_per_client, labels_per_client, rng)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def label_histogram(labels: np.ndarray, indices: np.ndarray, num_classes: int) -> np.ndarray:
    """Count of each label among ``labels[indices]`` (length ``num_classes``), e.g. to log skew."""
    y = _check_labels(labels)
    _check_int("num_classes", num_classes, low=1)
    picked = y[np.asarray(indices, dtype=np.int64)]
    if picked.size and picked.max() >= num_classes:
        raise SplitError(
            f"num_classes: is {num_classes} but the labels include {int(picked.max())}"
        )
    return np.bincount(picked, minlength=num_classes).astype(np.int64)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise SplitError(
            f"labels: must be a 1-D integer array, got shape {y.shape} dtype {y.dtype}"
        )
    if y.size and y.min() < 0:
        raise SplitError(f"labels: must be >= 0, got {int(y.min())}")
    return y.astype(np.int64, copy=False)


def _check_int(key: str, value: object, *, low: int, high: int | None = None) -> None:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise SplitError(f"{key}: must be an integer {allowed}, got {value!r}")


def _class_stock(y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """The labels present and, for each, a shuffled array of its sample indices."""
    classes = np.unique(y)
    return classes, [rng.permutation(np.flatnonzero(y == c)) for c in classes]


def _dirichlet(
    y: np.ndarray, num_clients: int, quota: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Each client draws p ~ Dir(alpha) over labels and fills its quota from the remaining stock.

    Draws are renormalised over labels that still have samples, so sizes stay exact and disjoint
    even when a client's favourite labels were used up by earlier clients.
    """
    classes, stock = _class_stock(y, rng)
    used = np.zeros(len(classes), dtype=np.int64)
    sizes = np.array([len(s) for s in stock], dtype=np.int64)
    parts = []
    for _ in range(num_clients):
        p = np.nan_to_num(rng.dirichlet(np.full(len(classes), alpha)), nan=0.0)
        take = np.zeros(len(classes), dtype=np.int64)
        need = quota
        while need > 0:
            left = sizes - used - take
            q = np.where(left > 0, p, 0.0)
            if q.sum() <= 0:  # every favoured label is exhausted: fall back to what is left
                q = (left > 0).astype(np.float64)
            draw = np.minimum(rng.multinomial(need, q / q.sum()), left)
            take += draw
            need -= int(draw.sum())
        parts.append(
            np.concatenate([stock[c][used[c] : used[c] + take[c]] for c in range(len(take))])
        )
        used += take
    return parts


def _disjoint(
    y: np.ndarray, num_clients: int, quota: int, per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Client i holds labels i*L .. i*L+L-1 (mod the label count), its quota spread evenly.

    A label shared by several clients is divided into equal shares of its samples, so clients never
    overlap; a client whose shares cannot cover its quota raises :class:`SplitError`.
    """
    classes, stock = _class_stock(y, rng)
    num_labels = len(classes)
    owned = [
        [(i * per_client + j) % num_labels for j in range(per_client)] for i in range(num_clients)
    ]
    users: list[list[int]] = [[] for _ in range(num_labels)]
    for i, labs in enumerate(owned):
        for c in labs:
            users[c].append(i)
    share = {}  # (client, label) -> samples of the label reserved for the client
    for c, us in enumerate(users):
        base, extra = divmod(len(stock[c]), max(len(us), 1))
        for rank, i in enumerate(us):
            share[(i, c)] = base + (1 if rank < extra else 0)
    used = np.zeros(num_labels, dtype=np.int64)
    parts = []
    for i, labs in enumerate(owned):
        caps = [share[(i, c)] for c in labs]
        if sum(caps) < quota:
            names = [int(classes[c]) for c in labs]
            raise SplitError(
                f"samples_per_client: client {i} holds labels {names} whose share of the pool is "
                f"{sum(caps)} samples (labels shared with other clients are divided equally), "
                f"fewer than the {quota} requested; lower samples_per_client or raise "
                "labels_per_client"
            )
        picks = []
        for c, k in zip(labs, _water_fill(caps, quota), strict=True):
            picks.append(stock[c][used[c] : used[c] + k])
            used[c] += k
        parts.append(np.concatenate(picks))
    return parts


def _water_fill(caps: list[int], quota: int) -> list[int]:
    """Spread ``quota`` as evenly as possible over slots with capacities ``caps`` (sum >= quota)."""
    alloc = [0] * len(caps)
    remaining = quota
    order = sorted(range(len(caps)), key=lambda k: (caps[k], k))
    for pos, k in enumerate(order):
        left = len(order) - pos
        alloc[k] = min(caps[k], -(-remaining // left))
        remaining -= alloc[k]
    return alloc


def split_for_config(labels: np.ndarray, cfg: RunConfig) -> list[np.ndarray]:
    """The run's split (``data.*`` and ``clients.count``, seeded from the run seed).

    The one place every engine derives it, so in-process clients, Flower nodes and population runs
    hold the same shards."""
    from securedream.seeding import derive_seed

    return split_clients(
        labels,
        cfg.clients.count,
        scheme=cfg.data.split,
        samples_per_client=cfg.data.samples_per_client or None,
        alpha=cfg.data.alpha,
        labels_per_client=cfg.data.labels_per_client,
        seed=derive_seed(cfg.seed, "split"),
    )
