"""Work ahead of the input: prepared masks, pipelined key bundles and the session's early set-up.

What must hold (docs/protocol.md, "Off the critical path"): a prepared mask is the mask an
unprepared client adds (bit for bit), it is used for one aggregation at most, the sums are exact
with and without preparation and with dropouts, and the session keys stay fresh per session.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import (
    ConfigError,
    EncodingError,
    InProcessSession,
    LocalProtocolError,
    SecAggConfig,
    wire,
)
from protocols.messages import MaskedInput
from tests.protocols.secagg_support import Harness


def _masked(data: bytes) -> np.ndarray:
    msg = wire.decode(data, wire.WireLimits.for_config(8, 10_000, 32))
    assert isinstance(msg, MaskedInput)
    return msg.array.copy()


def test_prepared_mask_is_the_on_demand_mask_and_is_used_once() -> None:
    cfg = SecAggConfig(4, threshold=3)
    h = Harness(cfg)
    h.setup()
    dim = 300
    zero = np.zeros(dim, dtype=np.int64)
    reference = {i: c.mask_vector(dim) for i, c in h.clients.items()}
    # a zero input masked is the mask itself: prepared (clients 0, 1) or not (2, 3)
    for i in (0, 1):
        h.clients[i].prepare_input(dim)
        assert h.clients[i].prepared == (0, dim)
    sent = {}
    for i, c in h.clients.items():
        sent[i] = _masked(c.submit_input(zero))
        assert c.prepared is None  # consumed (or never made): nothing carries to the next step
        assert np.array_equal(sent[i], reference[i])
    for data in sent.values():
        assert np.any(data != 0)
    with pytest.raises(LocalProtocolError):
        h.clients[0].prepare_input(dim)  # masked input sent: nothing to prepare until unmask


def test_prepared_work_never_outlives_its_step() -> None:
    cfg = SecAggConfig(3, threshold=2)
    with InProcessSession(cfg) as session:
        session.setup()
        dim = 64
        masks = []
        for _step in range(3):
            client = session.client(0)
            masks.append(client.mask_vector(dim))
            session.prepare(dim)
            result = session.aggregate({i: np.full(dim, i + 1, dtype=np.int64) for i in range(3)})
            assert np.array_equal(result.integer_sum, np.full(dim, 6))
            assert client.prepared is None
            assert set(result.prepared_seconds) == {0, 1, 2}
        # fresh masks every aggregation
        assert not np.array_equal(masks[0], masks[1])
        assert not np.array_equal(masks[1], masks[2])


def test_wrong_length_falls_back_to_on_demand() -> None:
    cfg = SecAggConfig(3, threshold=2)
    with InProcessSession(cfg) as session:
        session.setup()
        session.prepare(100)
        inputs = {i: np.arange(40, dtype=np.int64) * (i + 1) for i in range(3)}
        result = session.aggregate(inputs)  # 40, not 100: masks computed when submitting
        assert np.array_equal(result.integer_sum, np.arange(40) * 6)


def test_setup_and_prepare_refuse_misuse() -> None:
    cfg = SecAggConfig(3, threshold=2)
    with InProcessSession(cfg) as session:
        with pytest.raises(LocalProtocolError, match="setup"):
            session.prepare(10)
        with pytest.raises(ConfigError, match="advertise or share"):
            session.setup(drop={1: "unmask"})
        session.setup()
        with pytest.raises(LocalProtocolError, match="once"):
            session.setup()
    h = Harness(cfg)
    with pytest.raises(LocalProtocolError, match="state"):
        h.clients[0].prepare_input(10)  # no keys yet
    h.setup()
    with pytest.raises(EncodingError, match="length"):
        h.clients[0].prepare_input(0)


def test_early_setup_reports_like_a_first_aggregation() -> None:
    cfg = SecAggConfig(4, threshold=3)
    inputs = {i: np.ones(50, dtype=np.int64) for i in range(4)}
    with InProcessSession(cfg) as plain, InProcessSession(cfg) as early:
        a = plain.aggregate(inputs)
        early.setup()
        assert early.started and early.step == 0
        early.prepare(50)
        b = early.aggregate(inputs)
    assert dict(a.bytes_up) == dict(b.bytes_up)
    assert dict(a.bytes_down) == dict(b.bytes_down)
    assert np.array_equal(a.integer_sum, b.integer_sum)
    assert early.session_id != plain.session_id


def test_setup_drops_advertise_and_share() -> None:
    cfg = SecAggConfig(5, threshold=3)
    with InProcessSession(cfg) as session:
        session.setup(drop={0: "advertise", 1: "share"})
        assert session.dropped_clients == {0, 1}
        session.prepare(20)
        result = session.aggregate({i: np.full(20, i, dtype=np.int64) for i in range(2, 5)})
        assert result.survivors == {2, 3, 4}
        assert np.array_equal(result.integer_sum, np.full(20, 9))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(3, 6),
    dim=st.integers(1, 200),
    steps=st.integers(1, 3),
    prepare=st.lists(st.booleans(), min_size=3, max_size=3),
    drop_step=st.integers(0, 2),
    drop_stage=st.sampled_from(["masked_input", "unmask"]),
    bits=st.sampled_from([32, 64]),
    data=st.data(),
)
def test_sums_exact_with_prepared_masks_and_dropouts(
    n: int,
    dim: int,
    steps: int,
    prepare: list[bool],
    drop_step: int,
    drop_stage: str,
    bits: int,
    data: st.DataObject,
) -> None:
    cfg = SecAggConfig(n, threshold=2, bits=bits, dropout_rate=0.0, corruption_rate=0.0)
    dropper = data.draw(st.integers(0, n - 1))
    rng = np.random.default_rng(n * 1000 + dim)
    with InProcessSession(cfg) as session:
        if prepare[0]:
            session.setup()
        for step in range(steps):
            if prepare[step] and session.started:
                session.prepare(dim)
            alive = sorted(session.active_clients)
            inputs = {i: rng.integers(-1000, 1000, dim) for i in alive}
            drop = {dropper: drop_stage} if step == drop_step and dropper in alive else {}
            result = session.aggregate(inputs, drop=drop)
            expected = sum(inputs[i] for i in result.survivors)
            assert np.array_equal(result.integer_sum, expected)
            if drop:
                assert dropper in result.dropped
