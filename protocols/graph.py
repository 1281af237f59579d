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
    with maximal connectivity).
    """
    ms = tuple(sorted(set(members)))
    m = len(ms)
    if degree < 2 or degree % 2:
        raise ConfigError(f"Harary degree must be an even integer >= 2, got {degree}")
    if degree >= m - 1:
        return complete_graph(ms)
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


def _log_comb(n: int, k: int) -> float:
    if k < 0 or k > n:
        return -math.inf
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def hypergeom_pmf(population: int, marked: int, draws: int) -> list[float]:
    """P[X = x], x = 0..draws, for the number of marked items among ``draws`` drawn without
    replacement from ``population`` containing ``marked`` marked items."""
    denom = _log_comb(population, draws)
    out = []
    for x in range(draws + 1):
        lp = _log_comb(marked, x) + _log_comb(population - marked, draws - x) - denom
        out.append(math.exp(lp) if lp > -745 else 0.0)
    return out


def _upper_tail(pmf: list[float], start: int) -> float:
    """P[X >= start]."""
    if start <= 0:
        return 1.0
    return math.fsum(pmf[start:]) if start < len(pmf) else 0.0


def ring_disconnection_bound(n: int, removed: int, degree: int) -> float:
    """Union bound on the probability that removing ``removed`` uniformly random members from the
    relabelled Harary ring H(k, n) disconnects the rest.

    Consecutive remaining members on the ring are adjacent unless at least k/2 members between them
    were removed; the ring falls apart only if that happens at two places, which needs two disjoint
    runs of k/2 removed positions: at most C(n, 2) * P[k given positions all removed].
    """
    run = 2 * (degree // 2)
    if removed < run:
        return 0.0
    log_p = 0.0
    for i in range(run):
        log_p += math.log((removed - i) / (n - i))
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


def _counts(n: int, dropout_rate: float, corruption_rate: float) -> tuple[int, int]:
    dropped = math.ceil(dropout_rate * n - 1e-12)
    corrupted = math.floor(corruption_rate * n + 1e-12)
    return dropped, corrupted


class _Evaluator:
    """Failure bounds for one (n, k, rates); the hypergeometric tables are computed once."""

    def __init__(self, n: int, degree: int, dropped: int, corrupted: int, active: bool) -> None:
        self.n, self.k, self.active = n, degree, active
        self.dropped, self.corrupted = dropped, corrupted
        self.complete = degree >= n - 1
        if not self.complete:
            drop_pmf = hypergeom_pmf(n - 1, dropped, degree)
            corrupt_pmf = hypergeom_pmf(n - 1, corrupted, degree)
            self.drop_tail = [_upper_tail(drop_pmf, x) for x in range(degree + 2)]
            self.corrupt_tail = [_upper_tail(corrupt_pmf, x) for x in range(degree + 2)]
            self.disconnect = ring_disconnection_bound(n, dropped + corrupted, degree)

    def __call__(self, t: int) -> tuple[float, float]:
        n, k = self.n, self.k
        if self.complete:
            k = n - 1
            correct_fail = 0.0 if n - self.dropped >= t else 1.0
            limit = 2 * t - k - 1 if self.active else t
            return (1.0 if self.corrupted >= limit else 0.0), correct_fail
        start = k - t + 1
        correct_fail = min(1.0, n * (self.drop_tail[start] if start >= 0 else 1.0))
        limit = 2 * t - k - 1 if self.active else t
        tail = self.corrupt_tail[limit] if 0 <= limit <= k + 1 else (1.0 if limit < 0 else 0.0)
        sec_fail = min(1.0, n * tail + self.disconnect)
        return sec_fail, correct_fail


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
    clients C (|C| = floor(gamma n)) chosen independently of the secret relabelling:

    * correctness: every client keeps at least t live holders among its k + 1 (itself included);
      fails if more than k - t of its k neighbours dropped;
    * security: no honest client has t corrupted holders (semi-honest), resp. 2t - k - 1 (active:
      a malicious server can ask different honest holders for different shares); and the honest
      survivors stay connected, otherwise the server would learn partial sums.

    Per-client events are hypergeometric (neighbourhoods are uniform k-subsets); the bounds are
    union bounds over the n clients.
    """
    dropped, corrupted = _counts(n, dropout_rate, corruption_rate)
    return _Evaluator(n, degree, dropped, corrupted, active)(threshold)


@lru_cache(maxsize=64)
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
    to it as the bounds permit.
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
    for k in candidates:
        evaluate = _Evaluator(n, k, dropped, corrupted, active)
        feasible = []
        for t in range(1, k + 2):
            sec, cor = evaluate(t)
            if sec <= sec_target and cor <= cor_target:
                feasible.append((t, sec, cor))
        if feasible:
            lo, hi = feasible[0][0], feasible[-1][0]
            t = min(max((k + 1) // 2 + 1, lo), hi)
            sec, cor = next((s, c) for tt, s, c in feasible if tt == t)
            kind = COMPLETE if k >= n - 1 else HARARY
            return GraphParameters(k, t, kind, _log2(sec), _log2(cor))
    raise ConfigError(
        f"no (degree, threshold) meets 2^-{security_bits} security and 2^-{correctness_bits} "
        f"correctness for num_clients={n}, dropout_rate={dropout_rate}, "
        f"corruption_rate={corruption_rate}: lower the rates or the security parameters"
    )
