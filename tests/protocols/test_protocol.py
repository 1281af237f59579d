"""End-to-end protocol behaviour: exact sums under dropouts, aborts, hostile messages."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from secagg_support import MECHANICS, Harness, snapshot

from protocols import (
    SecAggConfig,
    Stage,
    TooFewSurvivors,
    simulate,
    wire,
)
from protocols.errors import (
    AuthenticationError,
    ClientDropped,
    DoubleRevealRefused,
    InconsistentMessage,
    LocalProtocolError,
    MalformedMessage,
    ProtocolError,
    ReplayedMessage,
    UnexpectedMessage,
    WrongSession,
)
from protocols.messages import ConsistencySignature, UnmaskRequest
from protocols.state import State

STAGES = [s.value for s in Stage]


def _int_inputs(n: int, d: int, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.integers(-(2**20), 2**20, d) for i in range(n)}


def _complete_outcome_ok(n: int, t: int, schedule: dict[int, str], active: bool) -> bool:
    """Complete graph: the aggregation succeeds iff at least t clients send each message."""
    order = STAGES if active else [s for s in STAGES if s != "consistency"]
    for stage in order:
        rank = order.index(stage)
        alive = sum(
            1
            for i in range(n)
            if i not in schedule or order.index(_norm(schedule[i], active)) > rank
        )
        if alive < t:
            return False
    return True


def _norm(stage: str, active: bool) -> str:
    return "unmask" if stage == "consistency" and not active else stage


@given(
    n=st.integers(2, 8),
    data=st.data(),
    active=st.booleans(),
    bits=st.sampled_from([32, 64]),
)
def test_complete_graph_exact_sum_for_any_dropout_schedule(
    n: int, data: st.DataObject, active: bool, bits: int
) -> None:
    # active mode refuses 2t <= n (an equivocating server could collect both share kinds)
    t = data.draw(st.integers(n // 2 + 1 if active else 1, n), label="t")
    schedule = data.draw(
        st.dictionaries(st.integers(0, n - 1), st.sampled_from(STAGES), max_size=n), label="drops"
    )
    cfg = SecAggConfig(
        n, threshold=t, mode="active" if active else "semi-honest", bits=bits, **MECHANICS
    )
    inputs = _int_inputs(n, 5, data.draw(st.integers(0, 2**32)))
    expected_ok = _complete_outcome_ok(n, t, schedule, active)
    try:
        res = simulate(inputs, cfg, schedule)
    except TooFewSurvivors as exc:
        assert not expected_ok, str(exc)
        assert "threshold is" in str(exc)
        return
    assert expected_ok
    survivors = {
        i
        for i in range(n)
        if i not in schedule or _norm(schedule[i], active) in ("consistency", "unmask")
    }
    assert res.survivors == survivors
    assert np.array_equal(res.sum, sum(inputs[i] for i in survivors))


@given(n=st.integers(6, 16), data=st.data())
def test_harary_graph_sum_is_exact_or_aborts_cleanly(n: int, data: st.DataObject) -> None:
    k = data.draw(st.sampled_from([d for d in (2, 4, 6) if d < n - 1]))
    t = data.draw(st.integers(1, k + 1))
    schedule = data.draw(
        st.dictionaries(st.integers(0, n - 1), st.sampled_from(STAGES), max_size=n // 2)
    )
    cfg = SecAggConfig(n, graph="harary", degree=k, threshold=t, **MECHANICS)
    inputs = _int_inputs(n, 4, data.draw(st.integers(0, 2**32)))
    try:
        res = simulate(inputs, cfg, schedule)
    except TooFewSurvivors as exc:
        assert "threshold is" in str(exc)
        assert schedule or t > 1, "no dropout must never abort"
        return
    assert np.array_equal(res.sum, sum(inputs[i] for i in res.survivors))
    assert all(i not in schedule or schedule[i] in ("consistency", "unmask") for i in res.survivors)


@pytest.mark.parametrize("graph", ["complete", "harary"])
def test_masks_cancel_without_dropouts(graph: str) -> None:
    """With zero inputs the masked vectors look random, yet their sum is exactly zero."""
    n = 12
    cfg = SecAggConfig(n, graph=graph, degree=4 if graph == "harary" else None, threshold=3)
    h = Harness(cfg)
    h.setup()
    sent = h.inputs({i: np.zeros(1000, dtype=np.int64) for i in range(n)})
    arrays = [wire.decode(b, h.server._limits).array for b in sent.values()]
    assert all(np.count_nonzero(a) > 990 for a in arrays)
    res = h.unmask()
    assert res.survivors == set(range(n))
    assert not np.any(res.total)


def test_float_sum_within_bound_and_session_api() -> None:
    rng = np.random.default_rng(3)
    n, d = 10, 300
    cfg = SecAggConfig(n, clip=2.0, threshold=6)
    xs = {i: rng.normal(0, 1.5, d) for i in range(n)}
    res = simulate(xs, cfg, {0: "masked_input"})
    exact = sum(np.clip(xs[i], -2, 2) for i in res.survivors)
    assert np.max(np.abs(res.sum - exact)) <= res.steps[0].error_bound
    assert res.steps[0].error_bound == 9 * cfg.encoding.delta


def test_fewer_than_t_aborts_with_clear_error() -> None:
    cfg = SecAggConfig(5, threshold=4)
    with pytest.raises(TooFewSurvivors, match="3 clients left after masked input, threshold is 4"):
        simulate(_int_inputs(5, 3, 0), cfg, {0: "masked_input", 1: "masked_input"})
    with pytest.raises(TooFewSurvivors, match="threshold is 4"):
        simulate(_int_inputs(5, 3, 0), cfg, {0: "unmask", 1: "unmask"})
    with pytest.raises(TooFewSurvivors, match="advertised keys"):
        simulate(_int_inputs(5, 3, 0), cfg, {0: "advertise", 1: "advertise"})


def test_abort_reaches_clients() -> None:
    cfg = SecAggConfig(4, threshold=4)
    h = Harness(cfg)
    h.setup()
    h.inputs({i: np.arange(3) for i in range(3)})
    with pytest.raises(TooFewSurvivors) as exc:
        h.server.close_stage()
    assert h.server.state is State.ABORTED
    for u, data in exc.value.notifications.items():
        assert h.clients[u].receive(data) == []
        assert h.clients[u].state is State.ABORTED


# --------------------------------------------------------------------------- hostile messages


def _ready(n: int = 5, t: int = 3, **kw) -> Harness:
    h = Harness(SecAggConfig(n, threshold=t, **kw))
    h.setup()
    return h


def test_client_rejects_tampered_share_ciphertext_and_keeps_state() -> None:
    h = _ready()
    h.inputs({i: np.arange(4) for i in range(5)})
    out = h.server.close_stage()
    data = out.messages[0]
    msg = wire.decode(data, h.server._limits)
    fb = msg.next_bundles[0]
    bad_ct = bytes([fb.ciphertext[0] ^ 0x80]) + fb.ciphertext[1:]
    tampered = dataclasses.replace(
        msg, next_bundles=(dataclasses.replace(fb, ciphertext=bad_ct), *msg.next_bundles[1:])
    )
    before = snapshot(h.clients[0])
    with pytest.raises(AuthenticationError, match=f"from client {fb.sender} to client 0"):
        h.clients[0].receive(wire.encode(tampered))
    assert snapshot(h.clients[0]) == before
    # a ciphertext addressed to another client, replayed to client 0, fails too
    other = wire.decode(out.messages[1], h.server._limits).next_bundles
    stolen = next(b for b in other if b.sender != 0)
    swapped = dataclasses.replace(
        msg,
        next_bundles=tuple(
            dataclasses.replace(b, ciphertext=stolen.ciphertext) if b.sender == stolen.sender else b
            for b in msg.next_bundles
        ),
    )
    with pytest.raises(AuthenticationError):
        h.clients[0].receive(wire.encode(swapped))
    assert snapshot(h.clients[0]) == before
    assert h.clients[0].receive(data)  # the genuine message still works


def test_client_rejects_replayed_wrong_session_and_out_of_order() -> None:
    h = _ready()
    c = h.clients[0]
    before = snapshot(c)
    unmask = UnmaskRequest(h.session, 0, (0, 1, 2, 3, 4), (), (), ())
    with pytest.raises(
        UnexpectedMessage, match=r"UNMASK_REQUEST .* not allowed in state await-input"
    ):
        c.receive(wire.encode(unmask))
    with pytest.raises(WrongSession):
        c.receive(wire.encode(dataclasses.replace(unmask, session=b"\x01" * 16)))
    with pytest.raises(MalformedMessage):
        c.receive(b"\x00" * 20)
    with pytest.raises(UnexpectedMessage, match="client message"):
        c.receive(wire.encode(ConsistencySignature(h.session, 0, 1, b"")))
    assert snapshot(c) == before
    # run a step; then the old unmask request is a replay
    h.inputs({i: np.arange(4) for i in range(5)})
    out = h.server.close_stage()
    c.receive(out.messages[0])
    with pytest.raises(ReplayedMessage, match="already handled"):
        c.receive(out.messages[0])


def test_server_rejects_replays_strangers_and_dropped_clients() -> None:
    h = _ready()
    sent = h.inputs({i: np.arange(4) for i in range(4)})  # client 4 is silent
    before = snapshot(h.server)
    with pytest.raises(ReplayedMessage, match="already sent"):
        h.server.receive(sent[1])
    with pytest.raises(InconsistentMessage, match="arrived from 2"):
        h.server.receive(sent[1], sender=2)
    assert snapshot(h.server) == before
    h.unmask()
    # client 4 was dropped at step 0; its late input for step 0 is a replay of a closed stage,
    # its input for step 1 is refused because it stays out
    late = h.clients[4].submit_input(np.arange(4))
    with pytest.raises(ReplayedMessage, match="closed"):
        h.server.receive(late)
    with pytest.raises(ReplayedMessage):
        h.server.receive(sent[0])


def test_server_refuses_dropped_client_in_later_step() -> None:
    h = _ready()
    h.inputs({i: np.arange(4) for i in range(5)})
    h.unmask(responders={0, 1, 2, 3})  # client 4 drops at unmask: input counted, then out
    assert h.server.out[4] == (0, "unmask")
    assert h.clients[4].state is State.AWAIT_UNMASK
    for u in range(4):
        h.server.receive(h.clients[u].submit_input(np.arange(4)))
    # client 4 never processed the unmask request, so it cannot produce a step-1 input
    with pytest.raises(LocalProtocolError):
        h.clients[4].submit_input(np.arange(4))
    res = h.unmask()
    assert res.survivors == {0, 1, 2, 3} and res.dropped == {4}


def test_server_rejects_inconsistent_masked_inputs() -> None:
    h = _ready(dim=4)
    good = h.clients[0].submit_input(np.arange(4))
    msg = wire.decode(good, h.server._limits)
    before = snapshot(h.server)
    for bad, match in [
        (dataclasses.replace(msg, bits=64, vector=msg.vector + bytes(16)), "bits"),
        (dataclasses.replace(msg, vector=msg.vector[:8]), "vector length"),
        (
            dataclasses.replace(msg, next_bundle=dataclasses.replace(msg.next_bundle, step=5)),
            "step 5",
        ),
        (dataclasses.replace(msg, step=3), "not allowed|step 3"),
    ]:
        with pytest.raises(ProtocolError, match=match):
            h.server.receive(wire.encode(bad))
        assert snapshot(h.server) == before
    h.server.receive(good)


def test_client_refuses_double_reveal() -> None:
    h = _ready()
    h.inputs({i: np.arange(4) for i in range(5)})
    out = h.server.close_stage()
    genuine = wire.decode(out.messages[0], h.server._limits)
    c = h.clients[0]
    before = snapshot(c)
    # a request listing client 2 both as survivor and dropped would reveal both of its shares
    both = dataclasses.replace(genuine, dropped=(2,))
    with pytest.raises(DoubleRevealRefused, match="both as survivors and as dropped"):
        c.receive(wire.encode(both))
    assert snapshot(c) == before
    # a request that silently omits a neighbour is inconsistent
    missing = dataclasses.replace(genuine, survivors=(0, 1, 3, 4))
    with pytest.raises(InconsistentMessage, match="neighbour 2 is neither"):
        c.receive(wire.encode(missing))
    assert snapshot(c) == before
    c.receive(out.messages[0])
    assert c.revealed[(0, 2)] == "self-mask"


def test_client_refuses_reviving_a_dropped_peer() -> None:
    h = _ready()
    h.inputs({i: np.arange(4) for i in range(4)})  # 4 drops at masked input, step 0
    out = h.server.close_stage()
    for u, data in out.messages.items():
        for r in h.clients[u].receive(data):
            h.server.receive(r)
    res = h.server.close_stage().result
    assert res.dropped == {4}
    assert h.clients[0].declared_dropped == {4: 0}
    h.inputs({i: np.arange(4) for i in range(4)})
    out = h.server.close_stage()
    genuine = wire.decode(out.messages[0], h.server._limits)
    revived = dataclasses.replace(genuine, survivors=(0, 1, 2, 3, 4))
    before = snapshot(h.clients[0])
    with pytest.raises(DoubleRevealRefused, match="declared dropped earlier"):
        h.clients[0].receive(wire.encode(revived))
    assert snapshot(h.clients[0]) == before


def test_client_told_it_dropped_stays_out() -> None:
    h = _ready()
    h.inputs({i: np.arange(4) for i in range(5)})
    out = h.server.close_stage()
    genuine = wire.decode(out.messages[0], h.server._limits)
    excluded = dataclasses.replace(genuine, survivors=(1, 2, 3, 4), dropped=(0,))
    assert h.clients[0].receive(wire.encode(excluded)) == []
    assert h.clients[0].state is State.DROPPED
    with pytest.raises(ClientDropped):
        h.clients[0].submit_input(np.arange(4))


def test_active_mode_rejects_bad_signatures() -> None:
    h = Harness(SecAggConfig(5, threshold=4, mode="active"))
    h.setup()
    h.inputs({i: np.arange(4) for i in range(5)})
    req = h.server.close_stage()
    for u, data in req.messages.items():
        for r in h.clients[u].receive(data):
            h.server.receive(r)
    out = h.server.close_stage()
    genuine = wire.decode(out.messages[0], h.server._limits)
    forged_sig = bytes(64)
    forged = dataclasses.replace(
        genuine, signatures=((genuine.signatures[0][0], forged_sig), *genuine.signatures[1:])
    )
    before = snapshot(h.clients[0])
    with pytest.raises(AuthenticationError, match="consistency"):
        h.clients[0].receive(wire.encode(forged))
    other_set = dataclasses.replace(genuine, survivors=(0, 1, 2, 3), dropped=(4,))
    with pytest.raises(InconsistentMessage, match="differs from the one this client signed"):
        h.clients[0].receive(wire.encode(other_set))
    assert snapshot(h.clients[0]) == before
    assert h.clients[0].receive(out.messages[0])


def test_active_mode_rejects_unsigned_or_forged_keys() -> None:
    cfg = SecAggConfig(4, threshold=3, mode="active", **MECHANICS)
    h = Harness(cfg)
    adv = wire.decode(h.clients[0].start(), h.server._limits)
    with pytest.raises(AuthenticationError, match="channel key of client 0"):
        h.server.receive(wire.encode(dataclasses.replace(adv, channel_pk=bytes(32))))
    with pytest.raises(AuthenticationError):
        h.server.receive(wire.encode(dataclasses.replace(adv, signature=b"")))
    h.server.receive(wire.encode(adv))


def _mutate(data: st.DataObject, frame: bytes) -> bytes:
    out = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        pos = data.draw(
            st.integers(8, len(out) - 1), label="pos"
        )  # keep the header: reach the body
        out[pos] = data.draw(st.integers(0, 255), label="byte")
    return bytes(out)


@given(data=st.data(), active=st.booleans())
def test_mutated_messages_raise_only_protocol_errors_and_leave_state(
    data: st.DataObject, active: bool
) -> None:
    """Tamper with genuine in-flight messages at every stage: each is accepted or raises a
    ProtocolError subclass, and a rejected one leaves the receiving state machine unchanged."""
    h = Harness(
        SecAggConfig(4, threshold=3, mode="active" if active else "semi-honest", **MECHANICS)
    )
    server, clients = h.server, h.clients

    def attack_server(frame: bytes, sender: int) -> None:
        before = snapshot(server)
        try:
            server.receive(_mutate(data, frame), sender=sender)
        except ProtocolError:
            assert snapshot(server) == before
        else:
            raise _Accepted

    def attack_client(u: int, frame: bytes) -> None:
        before = snapshot(clients[u])
        try:
            clients[u].receive(_mutate(data, frame))
        except ProtocolError:
            assert snapshot(clients[u]) == before
        else:
            raise _Accepted

    stage = data.draw(
        st.sampled_from(["advertise", "roster", "share", "forward", "input", "unmask"])
    )
    try:
        adverts = {u: c.start() for u, c in clients.items()}
        if stage == "advertise":
            attack_server(adverts[0], 0)
        for a in adverts.values():
            server.receive(a)
        rosters = server.close_stage().messages
        if stage == "roster":
            attack_client(0, rosters[0])
        shares = {u: clients[u].receive(r)[0] for u, r in rosters.items()}
        if stage == "share":
            attack_server(shares[0], 0)
        for s in shares.values():
            server.receive(s)
        forwards = server.close_stage().messages
        if stage == "forward":
            attack_client(0, forwards[0])
        for u, f in forwards.items():
            clients[u].receive(f)
        inputs = {u: c.submit_input(np.arange(3)) for u, c in clients.items()}
        if stage == "input":
            attack_server(inputs[0], 0)
        for m in inputs.values():
            server.receive(m)
        out = server.close_stage().messages
        if active:
            sigs = {u: clients[u].receive(m)[0] for u, m in out.items()}
            for s in sigs.values():
                server.receive(s)
            out = server.close_stage().messages
        if stage == "unmask":
            attack_client(0, out[0])
            replies = {u: clients[u].receive(m)[0] for u, m in out.items()}
            attack_server(replies[1], 1)
    except _Accepted:
        pass


class _Accepted(Exception):
    """A mutation that still decoded and validated (e.g. a changed masked-vector byte)."""
