"""Regressions of the independent adversarial suite (issue 10): configs that validate run, unsafe
thresholds are refused, small cohorts get safe defaults, errors are typed, a bad mask-key share
aborts, and the (k, t) derivation is fast and equal to the exhaustive search."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from secagg_support import Harness

from protocols import (
    ConfigError,
    EncodingError,
    InvalidShare,
    SecAggConfig,
    SecAggError,
    TooFewSurvivors,
    secagg_plus_parameters,
    simulate,
    wire,
)
from protocols.graph import (
    _counts,
    _upper_tail,
    hypergeom_pmf,
    min_default_threshold,
    ring_disconnection_bound,
)
from protocols.messages import UnmaskShares
from protocols.shamir import PRIME, share_from_bytes, share_to_bytes
from protocols.state import State

# --------------------------------------------------------------------------- 1. configs run


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(3, 14),
    dropout=st.sampled_from([0.0, 0.1, 0.3, 0.5]),
    active=st.booleans(),
    graph=st.sampled_from(["complete", "harary"]),
    degree=st.one_of(st.none(), st.integers(1, 13)),
    drop_one=st.booleans(),
)
def test_a_config_that_validates_runs(
    n: int, dropout: float, active: bool, graph: str, degree: int | None, drop_one: bool
) -> None:
    """Found by search: Harary degree n - 1 for even n validated, then failed in close_stage."""
    try:
        cfg = SecAggConfig(
            n,
            graph=graph,
            degree=degree,
            dropout_rate=dropout,
            mode="active" if active else "semi-honest",
        )
    except ConfigError:
        return
    inputs = {i: np.arange(4, dtype=np.int64) * (i + 1) for i in range(n)}
    res = simulate(inputs, cfg)  # no dropout: must never abort
    assert res.survivors == set(range(n))
    assert np.array_equal(res.sum, sum(inputs.values()))
    if drop_one:  # one dropout after sharing keys: exact or a clean, typed abort
        try:
            res = simulate(inputs, cfg, {n - 1: "masked_input"})
        except TooFewSurvivors:
            return
        assert np.array_equal(res.sum, sum(inputs[i] for i in range(n - 1)))


@pytest.mark.parametrize("n", [4, 6, 8, 10, 12, 14])
def test_even_n_harary_with_degree_n_minus_1_runs(n: int) -> None:
    for kw in ({"mode": "active"}, {"mode": "active", "dropout_rate": 0.3}, {"degree": n - 1}):
        if n == 4 and kw.get("dropout_rate"):  # 2 dropouts of 4 leave no safe active threshold
            with pytest.raises(ConfigError, match="no \\(degree, threshold\\)"):
                SecAggConfig(num_clients=n, graph="harary", **kw)
            continue
        cfg = SecAggConfig(num_clients=n, graph="harary", **kw)
        assert cfg.k == n - 1 or cfg.k % 2 == 0
        res = simulate({i: np.ones(3, dtype=np.int64) for i in range(n)}, cfg)
        assert res.sum.tolist() == [n] * 3


# --------------------------------------------------------------------------- 2. active thresholds


@pytest.mark.parametrize("n,t", [(6, 3), (9, 4), (10, 5)])
def test_active_mode_refuses_thresholds_an_equivocating_server_defeats(n: int, t: int) -> None:
    for gamma in (0.1, 0.0):  # even with no colluders: two disjoint groups of t honest clients
        with pytest.raises(ConfigError, match="unsafe in active mode"):
            SecAggConfig(num_clients=n, threshold=t, mode="active", corruption_rate=gamma)
    c = math.ceil(0.1 * n)
    ok = SecAggConfig(num_clients=n, threshold=(n + c) // 2 + 1, mode="active")
    assert 2 * ok.t > n + c
    with pytest.raises(ConfigError, match="unsafe in active mode"):
        SecAggConfig(num_clients=n, threshold=(n + c) // 2, mode="active")


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(3, 40),
    data=st.data(),
    active=st.booleans(),
    graph=st.sampled_from(["complete", "harary"]),
    gamma=st.sampled_from([0.0, 0.05, 0.1, 0.2]),
)
def test_no_validated_config_has_a_vacuous_security_bound(
    n: int, data: st.DataObject, active: bool, graph: str, gamma: float
) -> None:
    k = n - 1
    degree = None
    if graph == "harary" and data.draw(st.booleans()):
        degree = data.draw(st.sampled_from([d for d in range(2, n) if d % 2 == 0 or d == n - 1]))
        k = degree
    t = data.draw(st.one_of(st.none(), st.integers(1, k + 1)))
    try:
        cfg = SecAggConfig(
            n,
            graph=graph,
            degree=degree,
            threshold=t,
            corruption_rate=gamma,
            mode="active" if active else "semi-honest",
        )
    except ConfigError as exc:
        assert "threshold" in str(exc) or "degree" in str(exc) or "no (degree" in str(exc)
        return
    sec, _ = cfg.failure_bounds()
    assert sec < 1.0
    if active or (t is None and degree is None):
        assert sec <= 2.0**-cfg.security_bits
    c = math.ceil(gamma * n - 1e-12)
    if cfg.k == n - 1:  # complete graph: the exact conditions
        assert cfg.t > c
        if active:
            assert 2 * cfg.t > n + c


# --------------------------------------------------------------------------- 3. small cohorts


@pytest.mark.parametrize("n", range(3, 31))
def test_defaults_never_give_a_threshold_below_what_corruption_needs(n: int) -> None:
    c = math.ceil(0.1 * n)
    for graph in ("complete", "harary"):
        for mode in ("semi-honest", "active"):
            try:
                cfg = SecAggConfig(n, graph=graph, mode=mode)
            except ConfigError as exc:
                # only where no threshold is both safe and tolerant of ceil(0.1 n) dropouts
                assert mode == "active" and n <= 3, str(exc)
                continue
            assert cfg.t >= max(2, c + 1), (graph, mode, cfg.k, cfg.t)
            sec, cor = cfg.failure_bounds()
            assert sec <= 2.0**-40 and cor <= 2.0**-30
            if cfg.k < n - 1:  # sparse graph: t corrupted holders are out of reach w.h.p. only
                assert cfg.graph == "harary" and cfg.k % 2 == 0
            elif mode == "active":
                assert 2 * cfg.t > n + c
    assert min_default_threshold(n) == 2


def test_harary_defaults_for_tiny_cohorts_are_no_longer_t_1() -> None:
    for n in range(4, 10):
        assert SecAggConfig(n, graph="harary").t >= 2


# --------------------------------------------------------------------------- 4. typed errors


@pytest.mark.parametrize(
    "kw",
    [
        {"clip": 1e-300},
        {"clip": 1e-200, "max_weight": 1e-200},
        {"clip": 1e308, "max_weight": 10},
        {"clip": 1e300, "max_weight": 1e300},
        {"clip": float("nan")},
        {"max_weight": float("inf")},
        {"clip": True},
    ],
)
def test_extreme_clip_and_weight_are_config_errors(kw: dict) -> None:
    with pytest.raises(ConfigError, match=r"clip|max_weight"):
        SecAggConfig(5, **kw)


@settings(max_examples=50, deadline=None)
@given(
    clip=st.floats(min_value=1e-320, max_value=1e308, allow_nan=False),
    weight=st.floats(min_value=1e-320, max_value=1e308, allow_nan=False),
    n=st.integers(2, 5000),
    bits=st.sampled_from([32, 64]),
)
def test_any_positive_clip_and_weight_validate_or_raise_config_error(
    clip: float, weight: float, n: int, bits: int
) -> None:
    try:
        cfg = SecAggConfig(n, clip=clip, max_weight=weight, bits=bits, threshold=n, dropout_rate=0)
    except ConfigError:
        return
    enc = cfg.encoding
    assert math.isfinite(enc.scale) and enc.scale > 0 and math.isfinite(enc.delta)
    assert n * enc.per_client_bound <= (1 << (bits - 1)) - 1


@pytest.mark.parametrize("weights", ["abc", np.ones(4), [1.0, 1.0, 1.0, 1.0], 3])
def test_wrong_typed_weights_are_config_errors(weights: object) -> None:
    inputs = {i: np.arange(3.0) for i in range(4)}
    with pytest.raises(ConfigError, match="weights must be a mapping"):
        simulate(inputs, SecAggConfig(4), weights=weights)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["0.5", None, float("nan"), True])
def test_non_numeric_weight_values_are_encoding_errors(bad: object) -> None:
    inputs = {i: np.arange(3.0) for i in range(4)}
    with pytest.raises(EncodingError, match="weight of client 0"):
        simulate(inputs, SecAggConfig(4), weights={0: bad})  # type: ignore[dict-item]


@pytest.mark.parametrize("stage", ["advertise", "share", "masked_input"])
def test_weighted_float_inputs_with_every_client_dropping_is_too_few_survivors(stage: str) -> None:
    inputs = {i: np.arange(3.0) for i in range(4)}
    with pytest.raises(TooFewSurvivors):
        simulate(inputs, SecAggConfig(4), dict.fromkeys(range(4), stage), weights={0: 0.5})


# --------------------------------------------------------------------------- 5. bad share aborts


def test_a_bad_mask_key_share_aborts_the_aggregation() -> None:
    cfg = SecAggConfig(5, threshold=3)
    h = Harness(cfg)
    h.setup()
    h.inputs({i: np.arange(4) for i in range(4)})  # client 4 drops after sharing keys
    requests = h.server.close_stage().messages
    for u, data in sorted(requests.items()):
        (reply,) = h.clients[u].receive(data)
        if u == 0:  # a holder lies about its share of client 4's mask key
            msg = wire.decode(reply, h.server._limits)
            (owner, blob), *rest = msg.key_shares
            lie = share_to_bytes((share_from_bytes(blob) + 1) % PRIME)
            reply = wire.encode(dataclasses.replace(msg, key_shares=((owner, lie), *rest)))
            assert isinstance(msg, UnmaskShares) and owner == 4
        h.server.receive(reply)
    with pytest.raises(InvalidShare, match="does not match its public key") as exc:
        h.server.close_stage()
    assert h.server.state is State.ABORTED
    assert sorted(exc.value.notifications) == [0, 1, 2, 3]
    for u, data in exc.value.notifications.items():
        assert h.clients[u].receive(data) == []
        assert h.clients[u].state is State.ABORTED
    with pytest.raises(SecAggError):
        h.server.close_stage()


# --------------------------------------------------------------------------- 6. derivation


def _exhaustive(n: int, delta: float, gamma: float, active: bool, graph: str):
    """The definition: smallest k with a feasible t, scanning every (k, t) with direct formulas."""
    dropped, corrupted = _counts(n, delta, gamma)
    sec_t, cor_t = 2.0**-40, 2.0**-30
    candidates = ([*range(2, n - 1, 2)] if graph == "harary" else []) + [n - 1]
    for k in candidates:
        feasible = []
        drop = hypergeom_pmf(n - 1, dropped, k)
        corrupt = hypergeom_pmf(n - 1, corrupted, k)
        disc = ring_disconnection_bound(n, dropped + corrupted, k)
        for t in range(1, k + 2):
            if k >= n - 1:
                limit = 2 * t - n if active else t
                sec = 1.0 if corrupted >= limit else 0.0
                cor = 0.0 if n - dropped >= t else 1.0
            else:
                cor = min(1.0, n * _upper_tail(drop, k - t + 1))
                limit = 2 * t - k - 1 if active else t
                tail = _upper_tail(corrupt, limit) if limit >= 0 else 1.0
                sec = min(1.0, n * tail + disc)
            if sec <= sec_t and cor <= cor_t and t >= min_default_threshold(n):
                feasible.append(t)
        if feasible:
            return k, min(max((k + 1) // 2 + 1, feasible[0]), feasible[-1])
    return None


@pytest.mark.parametrize("n", [3, 5, 8, 13, 21, 34, 55, 89])
def test_derivation_equals_the_exhaustive_search(n: int) -> None:
    for delta in (0.0, 0.1, 0.3):
        for gamma in (0.0, 0.1, 0.2):
            for active in (False, True):
                for graph in ("complete", "harary"):
                    want = _exhaustive(n, delta, gamma, active, graph)
                    try:
                        p = secagg_plus_parameters(n, delta, gamma, active=active, graph=graph)
                        got = (p.degree, p.threshold)
                    except ConfigError:
                        got = None
                    assert got == want, (n, delta, gamma, active, graph)


#: (n, dropout, corruption, active) -> (k, t) for the Harary graph (values also in docs/protocol.md
#: section 7; computed by the exhaustive search before the fast derivation replaced it).
TABLE = [
    (100, 0.1, 0.05, False, 16, 6),
    (100, 0.3, 0.1, False, 36, 11),
    (100, 0.1, 0.05, True, 28, 18),
    (100, 0.3, 0.1, True, 72, 42),
    (1000, 0.1, 0.1, False, 52, 28),
    (1000, 0.3, 0.1, False, 100, 38),
    (1000, 0.3, 0.2, False, 158, 72),
    (1000, 0.6, 0.1, False, 282, 65),
    (1000, 0.1, 0.1, True, 114, 78),
    (1000, 0.3, 0.1, True, 468, 277),
    (1000, 0.3, 0.2, True, 684, 433),
    (10000, 0.1, 0.05, False, 46, 22),
    (10000, 0.3, 0.1, False, 124, 47),
    (10000, 0.1, 0.05, True, 114, 74),
]


@pytest.mark.parametrize("n,delta,gamma,active,k,t", TABLE)
def test_derived_parameters_table(
    n: int, delta: float, gamma: float, active: bool, k: int, t: int
) -> None:
    p = secagg_plus_parameters(n, delta, gamma, active=active)
    assert (p.degree, p.threshold) == (k, t)
    assert p.log2_security_failure <= -40 and p.log2_correctness_failure <= -30


def test_active_n1000_dropout_06_has_no_parameters_and_says_so() -> None:
    with pytest.raises(ConfigError, match="no \\(degree, threshold\\)"):
        secagg_plus_parameters(1000, 0.6, 0.1, active=True)
