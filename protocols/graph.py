"""Who shares secrets with whom: the complete graph (Bonawitz et al. 2017) or a k-regular Harary
graph with CSPRNG relabelling (SecAgg+, Bell et al. CCS 2020).

Why a sparse graph: with the complete graph every client expands n - 1 pairwise masks and the
server, for every dropped client, one mask per survivor. On a k-regular graph both become O(k)
with k = O(log n), at the price of a probabilistic security argument
(see :func:`secagg_plus_parameters`).

The Harary graph H(k, m) places the m members on a ring and joins every member to the k/2 nearest on
each side. A secret, uniformly random relabelling (Fisher-Yates driven by AES-CTR) decides the ring
order, so the neighbourhood of every client is a uniformly random k-subset of the others.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from protocols.errors import ConfigError
from protocols.keys import SESSION_ID_BYTES, Purpose, derive_key
from protocols.prg import random_below

COMPLETE = "complete"
HARARY = "harary"
GRAPH_KINDS = (COMPLETE, HARARY)


@dataclass(frozen=True)
class Graph:
    """An undirected graph over client ids; ``neighbours(u)`` excludes ``u`` itself."""

    members: tuple[int, ...]
    adjacency: dict[int, frozenset[int]]
    kind: str

    def neighbours(self, u: int) -> frozenset[int]:
        """Open neighbourhood N(u)."""
        return self.adjacency[u]

    def closed(self, u: int) -> frozenset[int]:
        """Closed neighbourhood N[u] = N(u) + {u}: the holders of u's shares."""
        return self.adjacency[u] | {u}

    @property
    def degree(self) -> int:
        """Largest degree (all degrees are equal for the graphs built here)."""
        return max((len(v) for v in self.adjacency.values()), default=0)


def complete_graph(members: Iterable[int]) -> Graph:
    """Everyone is everyone's neighbour."""
    ms = tuple(sorted(set(members)))
    full = frozenset(ms)
    return Graph(ms, {u: full - {u} for u in ms}, COMPLETE)


def relabelling(members: tuple[int, ...], seed: bytes, session: bytes) -> tuple[int, ...]:
    """Uniformly random ordering of ``members`` from a 32-byte seed (Fisher-Yates, AES-CTR)."""
    if len(seed) != 32:
        raise ConfigError(f"graph seed must be 32 bytes, got {len(seed)}")
    if len(session) != SESSION_ID_BYTES:
        raise ConfigError(f"session id must be {SESSION_ID_BYTES} bytes, got {len(session)}")
    key = derive_key(seed, Purpose.GRAPH, session, 0, 0, 0)
    order = list(members)
    draws = random_below(key, [i + 1 for i in range(len(order) - 1, 0, -1)])
    for i, r in zip(range(len(order) - 1, 0, -1), draws, strict=True):
        order[i], order[r] = order[r], order[i]
    return tuple(order)


def harary_graph(members: Iterable[int], degree: int, seed: bytes, session: bytes) -> Graph:
    """k-regular Harary graph (k even) on the members, relabelled with the CSPRNG seed.

    If ``degree >= len(members) - 1`` the complete graph is returned (it is the Harary graph
    with maximal connectivity), whatever the parity of ``degree``: the validated configuration
    allows k = n - 1 for even n, and the roster may be smaller than n.
    """
    ms = tuple(sorted(set(members)))
    m = len(ms)
    if not isinstance(degree, int) or degree < 2:
        raise ConfigError(f"Harary degree must be an integer >= 2, got {degree!r}")
    if degree >= m - 1:  # checked first: an odd k = n - 1 (even n) is the complete graph
        return complete_graph(ms)
    if degree % 2:
        raise ConfigError(f"Harary degree must be even when below members - 1, got {degree}")
    ring = relabelling(ms, seed, session)
    half = degree // 2
    adjacency: dict[int, frozenset[int]] = {}
    for pos, u in enumerate(ring):
        nb = {ring[(pos + off) % m] for off in range(1, half + 1)}
        nb |= {ring[(pos - off) % m] for off in range(1, half + 1)}
        adjacency[u] = frozenset(nb)
    return Graph(ms, adjacency, HARARY)


def build_graph(
    kind: str, members: Iterable[int], degree: int, seed: bytes, session: bytes
) -> Graph:
    """Dispatch on the configured graph kind."""
    if kind == COMPLETE:
        return complete_graph(members)
    if kind == HARARY:
        return harary_graph(members, degree, seed, session)
    raise ConfigError(f"graph must be one of {GRAPH_KINDS}, got {kind!r}")


# --------------------------------------------------------------------------- parameters
#
# Why this is fast (n = 1000 in well under a second): the failure bounds are monotone in t
# (security failure never increases with t, correctness failure never decreases), so the feasible
# thresholds of a degree k form an interval [t_sec, t_cor] found by two binary searches instead of
# evaluating every t; log-factorials are tabulated once per n; probability mass is computed only on
# the support of the hypergeometric law; and the ring-disconnection products are prefix sums shared
# by all degrees. Every tail is still ``math.fsum`` of the same float terms as a direct
# evaluation, so the derived (k, t) and bounds equal those of scanning every (k, t) with
# :func:`evaluate_parameters` (tests/protocols/test_graph_params.py checks this on a grid).


@lru_cache(maxsize=8)
def _log_factorials(n: int) -> tuple[float, ...]:
    """lgamma(i + 1) for i = 0..n: the same floats ``math.lgamma`` gives one by one."""
    return tuple(math.lgamma(i + 1) for i in range(n + 1))


@lru_cache(maxsize=8)
def _log_factorial_array(n: int) -> np.ndarray:
    return np.array(_log_factorials(n), dtype=np.float64)


def hypergeom_pmf(population: int, marked: int, draws: int) -> list[float]:
    """P[X = x], x = 0..draws, for the number of marked items among ``draws`` drawn without
    replacement from ``population`` containing ``marked`` marked items.

    Terms outside the support [max(0, draws - (population - marked)), min(draws, marked)] are
    exactly 0; inside it each term is exp of a sum of tabulated log-factorials (0 below e^-745).
    """
    lf = _log_factorials(population)
    out = [0.0] * (draws + 1)
    if not 0 <= marked <= population or not 0 <= draws <= population:
        return out
    denom = lf[population] - lf[draws] - lf[population - draws]
    rest = population - marked
    for x in range(max(0, draws - rest), min(draws, marked) + 1):
        lp = (
            (lf[marked] - lf[x] - lf[marked - x])
            + (lf[rest] - lf[draws - x] - lf[rest - draws + x])
            - denom
        )
        if lp > -745:
            out[x] = math.exp(lp)
    return out


def _upper_tail(pmf: list[float], start: int) -> float:
    """P[X >= start]."""
    if start <= 0:
        return 1.0
    return math.fsum(pmf[start:]) if start < len(pmf) else 0.0


@lru_cache(maxsize=64)
def _run_log_probabilities(n: int, removed: int) -> tuple[float, ...]:
    """Prefix sums: entry r is log P[r given positions all removed], accumulated term by term."""
    out = [0.0]
    log_p = 0.0
    for i in range(min(removed, n)):
        log_p += math.log((removed - i) / (n - i))
        out.append(log_p)
    return tuple(out)


def ring_disconnection_bound(n: int, removed: int, degree: int) -> float:
    """Union bound on the probability that removing ``removed`` uniformly random members from the
    relabelling Harary ring H(k, n) disconnects the rest.

    Consecutive remaining members on the ring are adjacent unless at least k/2 members between them
    were removed; the ring falls apart only if that happens at two places, which needs two disjoint
    runs of k/2 removed positions: at most C(n, 2) * P[k given positions all removed].
    """
    run = 2 * (degree // 2)
    if removed < run:
        return 0.0
    log_p = _run_log_probabilities(n, removed)[run]
    return min(1.0, n * (n - 1) / 2 * math.exp(log_p))


@dataclass(frozen=True)
class GraphParameters:
    """(k, t) and the failure bounds they were chosen against (base-2 logs)."""

    degree: int
    threshold: int
    kind: str
    log2_security_failure: float
    log2_correctness_failure: float


def _log2(p: float) -> float:
    return math.log2(p) if p > 0 else -math.inf


def corruption_count(n: int, corruption_rate: float) -> int:
    """Colluding clients the bounds assume: ceil(gamma n), so any gamma > 0 means at least one
    (a rate is an upper bound on the fraction; rounding it down would assume nobody colludes in
    small cohorts)."""
    return math.ceil(corruption_rate * n - 1e-12)


def _counts(n: int, dropout_rate: float, corruption_rate: float) -> tuple[int, int]:
    dropped = math.ceil(dropout_rate * n - 1e-12)
    return dropped, corruption_count(n, corruption_rate)


def min_default_threshold(n: int) -> int:
    """The least threshold a derived configuration may have: 2 from three clients on, so that no
    single holder ever owns both secrets of a client."""
    return 2 if n >= 3 else 1


class _Hypergeom:
    """Upper tails P[X >= s] of one hypergeometric law.

    The log-terms on the support are evaluated with numpy in the same operation order as
    :func:`hypergeom_pmf` (so the same float64 values), exponentiated with ``math.exp``, and a tail
    is ``math.fsum`` of the terms x >= s: bit for bit ``_upper_tail(hypergeom_pmf(...), s)``, since
    terms outside the support are exactly 0 and do not change an exact sum.
    """

    def __init__(self, population: int, marked: int, draws: int) -> None:
        self.draws = draws
        self.lo = max(0, draws - (population - marked))
        hi = min(draws, marked)
        lf = _log_factorial_array(population)
        rest = population - marked
        x = np.arange(self.lo, hi + 1)
        denom = lf[population] - lf[draws] - lf[population - draws]
        lp = (lf[marked] - lf[x] - lf[marked - x]) + (
            lf[rest] - lf[draws - x] - lf[rest - draws + x]
        )
        lp = lp - denom
        self.terms = [math.exp(v) if v > -745 else 0.0 for v in lp.tolist()]
        self.tails: dict[int, float] = {}

    def tail(self, start: int) -> float:
        if start <= 0:
            return 1.0
        if start > self.draws:
            return 0.0
        value = self.tails.get(start)
        if value is None:
            value = math.fsum(self.terms[max(start - self.lo, 0) :])
            self.tails[start] = value
        return value


class _Evaluator:
    """Failure bounds for one (n, k, counts); tails are computed lazily and memoised."""

    def __init__(self, n: int, degree: int, dropped: int, corrupted: int, active: bool) -> None:
        self.n, self.k, self.active = n, degree, active
        self.dropped, self.corrupted = dropped, corrupted
        self.complete = degree >= n - 1
        self._drop: _Hypergeom | None = None
        self._corrupt: _Hypergeom | None = None
        self.disconnect = (
            0.0 if self.complete else ring_disconnection_bound(n, dropped + corrupted, degree)
        )

    def drop_tail(self, start: int) -> float:
        if self._drop is None:
            self._drop = _Hypergeom(self.n - 1, self.dropped, self.k)
        return self._drop.tail(start)

    def corrupt_tail(self, start: int) -> float:
        if self._corrupt is None:
            self._corrupt = _Hypergeom(self.n - 1, self.corrupted, self.k)
        return self._corrupt.tail(start)

    def security(self, t: int) -> float:
        """Bound on P[security fails]; never increases with t."""
        k = self.k
        limit = 2 * t - k - 1 if self.active else t
        if self.complete:
            if self.active:
                limit = 2 * t - (self.n - 1) - 1
            return 1.0 if self.corrupted >= limit else 0.0
        tail = self.corrupt_tail(limit) if 0 <= limit <= k + 1 else (1.0 if limit < 0 else 0.0)
        return min(1.0, self.n * tail + self.disconnect)

    def correctness(self, t: int) -> float:
        """Bound on P[some client has fewer than t live holders]; never decreases with t."""
        if self.complete:
            return 0.0 if self.n - self.dropped >= t else 1.0
        start = self.k - t + 1
        return min(1.0, self.n * (self.drop_tail(start) if start >= 0 else 1.0))

    def __call__(self, t: int) -> tuple[float, float]:
        return self.security(t), self.correctness(t)

    def top(self) -> int:
        return (self.n - 1 if self.complete else self.k) + 1

    def secure_from(self, target: float) -> int | None:
        """Smallest t in [1, k + 1] with security(t) <= target, or None."""
        lo, hi = 1, self.top()
        if self.security(hi) > target:
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            if self.security(mid) <= target:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def correct_to(self, target: float) -> int | None:
        """Largest t in [1, k + 1] with correctness(t) <= target, or None."""
        lo, hi = 1, self.top()
        if self.correctness(lo) > target:
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.correctness(mid) <= target:
                lo = mid
            else:
                hi = mid - 1
        return lo


def evaluate_parameters(
    n: int,
    degree: int,
    threshold: int,
    dropout_rate: float,
    corruption_rate: float,
    active: bool,
) -> tuple[float, float]:
    """Failure probability bounds (security, correctness) of a given (k, t).

    Conditions, after Bell et al. (CCS 2020), for dropouts D (|D| = ceil(delta n)) and corrupted
    clients C (|C| = ceil(gamma n), see :func:`corruption_count`) chosen independently of the
    secret relabelling:

    * correctness: every client keeps at least t live holders among its k + 1 (itself included);
      fails if more than k - t of its k neighbours dropped;
    * security: no honest client has t corrupted holders (semi-honest), resp. 2t - k - 1 (active:
      a malicious server can ask different honest holders for different shares); and the honest
      survivors stay connected, otherwise the server would learn partial sums.

    Per-client events are hypergeometric (neighbourhoods are uniform k-subsets); the bounds are
    union bounds over the n clients. For the complete graph both are exact (0 or 1).
    """
    dropped, corrupted = _counts(n, dropout_rate, corruption_rate)
    return _Evaluator(n, degree, dropped, corrupted, active)(threshold)


def threshold_for_degree(
    n: int,
    degree: int,
    dropout_rate: float,
    corruption_rate: float,
    *,
    security_bits: int = 40,
    correctness_bits: int = 30,
    active: bool = False,
) -> int | None:
    """The threshold derived for a *given* degree, or None if no t meets the security target.

    Same rule as :func:`secagg_plus_parameters` for one k: majority of the closed neighbourhood
    clamped into the feasible interval; when correctness cannot be met as well, the smallest secure
    t (security first: an aggregation that cannot reach t holders aborts, it never leaks). In
    semi-honest mode a degree too small for 2^-security_bits still gets a threshold, at least the
    majority and at least the smallest t whose bound is not vacuous (< 1), as an explicit threshold
    would; active mode returns None.
    """
    dropped, corrupted = _counts(n, dropout_rate, corruption_rate)
    ev = _Evaluator(n, degree, dropped, corrupted, active)
    k = min(degree, n - 1)
    majority = (k + 1) // 2 + 1
    lo = ev.secure_from(2.0**-security_bits)
    if lo is None and not active:  # semi-honest: the explicit degree is the user's opt-in
        weak = ev.secure_from(math.nextafter(1.0, 0.0))
        return None if weak is None else min(max(weak, majority, min_default_threshold(n)), k + 1)
    if lo is None:
        return None
    lo = min(max(lo, min_default_threshold(n)), k + 1)
    hi = ev.correct_to(2.0**-correctness_bits)
    if hi is None or hi < lo:
        return lo
    return min(max(majority, lo), hi)


@lru_cache(maxsize=256)
def secagg_plus_parameters(
    n: int,
    dropout_rate: float,
    corruption_rate: float,
    *,
    security_bits: int = 40,
    correctness_bits: int = 30,
    active: bool = False,
    graph: str = HARARY,
) -> GraphParameters:
    """Smallest even degree k (or the complete graph) and a threshold t meeting both bounds.

    Among the thresholds that satisfy security (failure <= 2^-security_bits) and correctness
    (failure <= 2^-correctness_bits), t is the majority of the closed neighbourhood
    floor((k+1)/2) + 1 clamped into that interval: majority when it is allowed, otherwise as close
    to it as the bounds permit. From n = 3 on, t >= 2 (:func:`min_default_threshold`). Small
    cohorts, where no sparse degree meets the bounds, get the complete graph.
    """
    if n < 2:
        raise ConfigError(f"num_clients must be >= 2, got {n}")
    if not 0 <= dropout_rate < 1:
        raise ConfigError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    if not 0 <= corruption_rate < 1:
        raise ConfigError(f"corruption_rate must be in [0, 1), got {corruption_rate}")
    if dropout_rate + corruption_rate >= 1:
        raise ConfigError(
            f"dropout_rate + corruption_rate must be < 1, got {dropout_rate + corruption_rate}"
        )
    sec_target = 2.0**-security_bits
    cor_target = 2.0**-correctness_bits
    candidates: list[int] = []
    if graph == HARARY:
        candidates = list(range(2, n - 1, 2))
    candidates.append(n - 1)
    dropped, corrupted = _counts(n, dropout_rate, corruption_rate)
    floor_t = min_default_threshold(n)
    for k in candidates:
        evaluate = _Evaluator(n, k, dropped, corrupted, active)
        lo = evaluate.secure_from(sec_target)
        if lo is None:
            continue
        lo = max(lo, floor_t)
        if evaluate.correctness(lo) > cor_target:  # monotone: no t >= lo is correct either
            continue
        hi = evaluate.correct_to(cor_target)
        assert hi is not None and hi >= lo
        t = min(max((k + 1) // 2 + 1, lo), hi)
        sec, cor = evaluate(t)
        kind = COMPLETE if k >= n - 1 else HARARY
        return GraphParameters(k, t, kind, _log2(sec), _log2(cor))
    raise ConfigError(
        f"no (degree, threshold) meets 2^-{security_bits} security and 2^-{correctness_bits} "
        f"correctness for num_clients={n}, dropout_rate={dropout_rate}, "
        f"corruption_rate={corruption_rate}: lower the rates or the security parameters"
    )
