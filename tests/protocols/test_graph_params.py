"""Sharing graphs (complete, Harary with CSPRNG relabelling), (k, t) derivation, config checks."""

from __future__ import annotations

import math
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import SecAggConfig, secagg_plus_parameters
from protocols.errors import ConfigError
from protocols.graph import (
    complete_graph,
    evaluate_parameters,
    harary_graph,
    hypergeom_pmf,
    relabelling,
    ring_disconnection_bound,
)

SESSION = bytes(16)


def _connected(adj: dict[int, frozenset[int]], nodes: set[int]) -> bool:
    if not nodes:
        return True
    start = next(iter(nodes))
    seen, todo = {start}, deque([start])
    while todo:
        u = todo.popleft()
        for v in adj[u]:
            if v in nodes and v not in seen:
                seen.add(v)
                todo.append(v)
    return seen == nodes


@given(m=st.integers(4, 60), half=st.integers(1, 10), seed=st.binary(min_size=32, max_size=32))
def test_harary_is_k_regular_symmetric_and_k_connected(m: int, half: int, seed: bytes) -> None:
    k = 2 * half
    g = harary_graph(range(m), k, seed, SESSION)
    if k >= m - 1:
        assert g.kind == "complete"
        return
    assert all(len(g.neighbours(u)) == k for u in range(m))
    assert all(u in g.neighbours(v) for u in range(m) for v in g.neighbours(u))
    assert all(u not in g.neighbours(u) for u in range(m))
    # k-connected: removing k - 1 members (a run of consecutive ring positions) keeps it connected
    ring = relabelling(tuple(range(m)), seed, SESSION)
    removed = set(ring[: k - 1])
    assert _connected(g.adjacency, set(range(m)) - removed)


def test_relabelling_is_seeded_csprng_permutation() -> None:
    members = tuple(range(50))
    a = relabelling(members, b"a" * 32, SESSION)
    assert sorted(a) == list(members)
    assert a == relabelling(members, b"a" * 32, SESSION)
    assert a != relabelling(members, b"b" * 32, SESSION)
    assert a != relabelling(members, b"a" * 32, b"\x01" * 16)


def test_neighbourhoods_look_uniform() -> None:
    """Over many seeds, client 0's neighbours are spread over all other clients."""
    counts = [0] * 20
    for s in range(400):
        g = harary_graph(range(20), 4, s.to_bytes(32, "big"), SESSION)
        for v in g.neighbours(0):
            counts[v] += 1
    assert counts[0] == 0
    expected = 400 * 4 / 19
    assert all(abs(c - expected) < 0.5 * expected for c in counts[1:])


def test_complete_graph_and_bad_degrees() -> None:
    g = complete_graph([3, 1, 2])
    assert g.members == (1, 2, 3) and g.neighbours(1) == {2, 3} and g.closed(1) == {1, 2, 3}
    with pytest.raises(ConfigError, match="even"):
        harary_graph(range(10), 3, bytes(32), SESSION)
    with pytest.raises(ConfigError, match="32 bytes"):
        harary_graph(range(10), 4, bytes(31), SESSION)


def test_hypergeometric_pmf_sums_to_one() -> None:
    pmf = hypergeom_pmf(99, 30, 28)
    assert math.isclose(sum(pmf), 1.0, rel_tol=1e-9)
    assert math.isclose(sum(x * p for x, p in enumerate(pmf)), 28 * 30 / 99, rel_tol=1e-9)


def test_ring_disconnection_bound_against_exhaustive_count() -> None:
    """Exact disconnection probability of a small relabelled Harary ring vs our union bound."""
    import itertools

    n, k, r = 12, 4, 5
    g = harary_graph(range(n), k, bytes(32), SESSION)
    bad = total = 0
    for removed in itertools.combinations(range(n), r):
        total += 1
        bad += not _connected(g.adjacency, set(range(n)) - set(removed))
    assert bad / total <= ring_disconnection_bound(n, r, k)
    assert bad > 0


@pytest.mark.parametrize(
    ("n", "delta", "gamma"),
    [(100, 0.3, 0.05), (1000, 0.3, 0.1), (1000, 0.1, 0.1), (10000, 0.1, 0.05)],
)
def test_derived_parameters_meet_their_targets(n: int, delta: float, gamma: float) -> None:
    p = secagg_plus_parameters(n, delta, gamma)
    assert p.kind == "harary" and p.degree % 2 == 0 and p.degree < n - 1
    sec, cor = evaluate_parameters(n, p.degree, p.threshold, delta, gamma, False)
    assert sec <= 2.0**-40 and cor <= 2.0**-30
    # k is minimal: the next smaller even degree has no feasible threshold
    smaller = p.degree - 2
    if smaller >= 2:
        assert not any(
            evaluate_parameters(n, smaller, t, delta, gamma, False)[0] <= 2.0**-40
            and evaluate_parameters(n, smaller, t, delta, gamma, False)[1] <= 2.0**-30
            for t in range(1, smaller + 2)
        )


def test_active_mode_needs_larger_threshold() -> None:
    semi = secagg_plus_parameters(1000, 0.1, 0.1)
    active = secagg_plus_parameters(1000, 0.1, 0.1, active=True)
    assert 2 * active.threshold - active.degree - 1 > 0
    assert active.degree >= semi.degree


def test_complete_graph_parameters() -> None:
    p = secagg_plus_parameters(100, 0.3, 0.1, graph="complete")
    assert (p.degree, p.threshold, p.kind) == (99, 51, "complete")
    with pytest.raises(ConfigError, match="no \\(degree, threshold\\)"):
        secagg_plus_parameters(10, 0.55, 0.44, graph="complete")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_clients": 1}, "num_clients"),
        ({"num_clients": 10, "graph": "ring"}, "graph"),
        ({"num_clients": 10, "mode": "malicious"}, "mode"),
        ({"num_clients": 10, "bits": 48}, "bits"),
        ({"num_clients": 10, "dropout_rate": 1.0}, "dropout_rate"),
        ({"num_clients": 10, "corruption_rate": -0.1}, "corruption_rate"),
        ({"num_clients": 10, "dropout_rate": 0.6, "corruption_rate": 0.5}, "dropout_rate \\+"),
        ({"num_clients": 10, "threshold": 11}, "threshold"),
        ({"num_clients": 10, "threshold": 0}, "threshold"),
        ({"num_clients": 10, "graph": "harary", "degree": 3}, "degree"),
        ({"num_clients": 10, "graph": "harary", "degree": 10}, "degree"),
        ({"num_clients": 10, "degree": 4}, "degree"),
        ({"num_clients": 10, "security_bits": 4}, "security_bits"),
        ({"num_clients": 10, "max_dim": 0}, "max_dim"),
        ({"num_clients": 10, "dim": 0}, "dim"),
        ({"num_clients": 10, "chunk_bytes": 1000}, "chunk_bytes"),
        ({"num_clients": 10, "clip": -1.0}, "clip"),
        ({"num_clients": 10, "scale": 0.0}, "scale"),
        ({"num_clients": 10, "scale": 2.0**40}, "overflow"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        SecAggConfig(**kwargs)


def test_config_resolves_k_t_and_scale() -> None:
    cfg = SecAggConfig(1000, graph="harary", dropout_rate=0.3, corruption_rate=0.1)
    assert (cfg.k, cfg.t) == (secagg_plus_parameters(1000, 0.3, 0.1).degree, cfg.t)
    sec, cor = cfg.failure_bounds()
    assert sec <= 2.0**-40 and cor <= 2.0**-30
    explicit = SecAggConfig(50, graph="harary", degree=8)
    assert (explicit.k, explicit.t) == (8, 5)
    assert SecAggConfig(10).encoding.scale == 2.0**27
