"""Wire format: round trips, and every malformed input raises a ProtocolError subclass."""

from __future__ import annotations

import struct
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import messages as m
from protocols import wire
from protocols.errors import MalformedMessage, OversizeMessage, ProtocolError

LIMITS = wire.WireLimits.for_config(num_clients=64, max_dim=256, bits=64)
CT = wire.SHARE_CIPHERTEXT_BYTES

sessions = st.binary(min_size=16, max_size=16)
steps = st.integers(0, 2**32 - 1)
cids = st.integers(0, 63)
pks = st.binary(min_size=32, max_size=32)
sigs = st.sampled_from([b"", bytes(64)]) | st.binary(min_size=64, max_size=64)
idlists = st.lists(cids, unique=True, max_size=10).map(lambda xs: tuple(sorted(xs)))


def keyed(size: int):
    return st.dictionaries(cids, st.binary(min_size=size, max_size=size), max_size=6).map(
        lambda d: tuple(sorted(d.items()))
    )


bundles = st.builds(m.KeyBundle, steps, pks, sigs, keyed(CT))
forwarded = st.dictionaries(
    cids, st.tuples(pks, sigs, st.binary(min_size=CT, max_size=CT)), max_size=6
).map(lambda d: tuple(m.ForwardedBundle(k, *v) for k, v in sorted(d.items())))
peers = st.dictionaries(cids, st.tuples(pks, sigs), max_size=6).map(
    lambda d: tuple(m.PeerKey(k, *v) for k, v in sorted(d.items()))
)


@st.composite
def masked_inputs(draw: st.DrawFn) -> m.MaskedInput:
    bits = draw(st.sampled_from([32, 64]))
    dim = draw(st.integers(0, 40))
    vec = draw(st.binary(min_size=dim * bits // 8, max_size=dim * bits // 8))
    return m.MaskedInput(draw(sessions), draw(steps), draw(cids), bits, vec, draw(bundles))


any_message = st.one_of(
    st.builds(m.AdvertiseKeys, sessions, cids, pks, sigs),
    st.builds(m.ShareKeys, sessions, cids, bundles),
    masked_inputs(),
    st.builds(m.ConsistencySignature, sessions, steps, cids, sigs),
    st.builds(m.UnmaskShares, sessions, steps, cids, keyed(33), keyed(33)),
    st.builds(m.Roster, sessions, idlists, st.binary(min_size=32, max_size=32), peers),
    st.builds(m.ForwardShares, sessions, steps, forwarded),
    st.builds(m.ConsistencyRequest, sessions, steps, idlists),
    st.builds(m.UnmaskRequest, sessions, steps, idlists, idlists, keyed(64), forwarded),
    st.builds(m.Abort, sessions, steps, st.text(max_size=50)),
)


@given(any_message)
def test_every_message_round_trips(msg: m.Message) -> None:
    data = wire.encode(msg)
    assert data[:2] == b"SD" and data[2] == wire.VERSION and data[3] == msg.TYPE
    assert wire.decode(data, LIMITS) == msg


@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    try:
        msg = wire.decode(data, LIMITS)
    except ProtocolError:
        return
    assert wire.encode(msg) == data  # the rare bytes that decode are a canonical frame


@given(st.binary(max_size=300), st.sampled_from(list(m.MessageType)))
def test_arbitrary_bodies_behind_a_valid_header_raise_only_protocol_errors(
    body: bytes, mtype: m.MessageType
) -> None:
    frame = struct.pack(">2sBBI", b"SD", 1, mtype, len(body)) + body
    try:
        msg = wire.decode(frame, LIMITS)
    except ProtocolError:
        return
    assert wire.encode(msg) == frame  # anything that decodes is canonical


@given(any_message, st.data())
def test_every_truncation_is_rejected(msg: m.Message, data: st.DataObject) -> None:
    frame = wire.encode(msg)
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(MalformedMessage):
        wire.decode(frame[:cut], LIMITS)


@given(any_message, st.data())
def test_mutations_decode_or_raise_protocol_error(msg: m.Message, data: st.DataObject) -> None:
    frame = bytearray(wire.encode(msg))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(frame) - 1))
        frame[pos] = data.draw(st.integers(0, 255))
    try:
        decoded = wire.decode(bytes(frame), LIMITS)
    except ProtocolError:
        return
    assert wire.encode(decoded) == bytes(frame)  # a mutation that decodes is still canonical


def test_trailing_bytes_bad_magic_version_type_and_length() -> None:
    frame = wire.encode(m.Abort(bytes(16), 0, "x"))
    with pytest.raises(MalformedMessage, match="length mismatch"):
        wire.decode(frame + b"\x00", LIMITS)
    fixed = frame[:4] + struct.pack(">I", len(frame) - 8 + 1) + frame[8:] + b"\x00"
    with pytest.raises(MalformedMessage, match="trailing"):
        wire.decode(fixed, LIMITS)
    with pytest.raises(MalformedMessage, match="magic"):
        wire.decode(b"XX" + frame[2:], LIMITS)
    with pytest.raises(MalformedMessage, match="version 2"):
        wire.decode(frame[:2] + b"\x02" + frame[3:], LIMITS)
    with pytest.raises(MalformedMessage, match="unknown message type 99"):
        wire.decode(frame[:3] + b"\x63" + frame[4:], LIMITS)
    with pytest.raises(MalformedMessage, match="header"):
        wire.decode(b"SD", LIMITS)
    with pytest.raises(MalformedMessage, match="expected bytes"):
        wire.decode("SD", LIMITS)  # type: ignore[arg-type]


def test_oversize_refused_before_allocation() -> None:
    # a tiny frame that *declares* a 2^31-element vector must fail fast, without allocating
    body = bytes(16) + struct.pack(">IIBI", 0, 0, 32, 2**31 - 1)
    frame = struct.pack(">2sBBI", b"SD", 1, m.MessageType.MASKED_INPUT, len(body)) + body
    t0 = time.perf_counter()
    with pytest.raises(OversizeMessage, match="max_dim"):
        wire.decode(frame, LIMITS)
    assert time.perf_counter() - t0 < 0.05
    huge_count = bytes(16) + struct.pack(">II", 0, 2**32 - 1)
    frame = struct.pack(">2sBBI", b"SD", 1, m.MessageType.CONSISTENCY_REQUEST, len(huge_count))
    with pytest.raises(OversizeMessage, match="max_clients"):
        wire.decode(frame + huge_count, LIMITS)
    with pytest.raises(OversizeMessage, match="exceeds the limit"):
        wire.decode(b"SD" + bytes(LIMITS.max_message_bytes), LIMITS)


def test_count_larger_than_remaining_bytes_is_truncation() -> None:
    body = bytes(16) + struct.pack(">II", 0, 50)  # 50 survivors declared, none present
    frame = struct.pack(">2sBBI", b"SD", 1, m.MessageType.CONSISTENCY_REQUEST, len(body)) + body
    with pytest.raises(MalformedMessage, match="declares 50 entries"):
        wire.decode(frame, LIMITS)


def test_unsorted_or_duplicate_ids_rejected() -> None:
    frame = wire.encode(m.ConsistencyRequest(bytes(16), 0, (1, 2, 3)))
    dup = frame[:-4] + struct.pack(">I", 2)
    with pytest.raises(MalformedMessage, match="strictly increasing"):
        wire.decode(dup, LIMITS)
    with pytest.raises(ProtocolError, match="strictly increasing"):
        wire.encode(m.ConsistencyRequest(bytes(16), 0, (2, 1)))


def test_client_ids_beyond_limits_rejected() -> None:
    frame = wire.encode(m.ConsistencySignature(bytes(16), 0, 63, b""))
    bad = frame[:-5] + struct.pack(">I", 64) + frame[-1:]
    with pytest.raises(MalformedMessage, match="max_clients"):
        wire.decode(bad, LIMITS)


def test_encoder_refuses_invalid_fields() -> None:
    with pytest.raises(ProtocolError, match="channel_pk"):
        wire.encode(m.AdvertiseKeys(bytes(16), 0, bytes(31), b""))
    with pytest.raises(ProtocolError, match="signature"):
        wire.encode(m.AdvertiseKeys(bytes(16), 0, bytes(32), bytes(10)))
    with pytest.raises(ProtocolError, match="not a protocol message"):
        wire.encode("hello")  # type: ignore[arg-type]


def test_masked_input_array_view_is_read_only() -> None:
    msg = m.MaskedInput(
        bytes(16), 0, 0, 32, struct.pack("<2I", 1, 2**32 - 1), m.KeyBundle(1, bytes(32), b"", ())
    )
    arr = msg.array
    assert arr.tolist() == [1, 2**32 - 1] and msg.dim == 2
    with pytest.raises(ValueError):
        arr[0] = 5


def test_long_abort_reason_is_truncated_on_a_character_boundary() -> None:
    msg = m.Abort(bytes(16), 3, "é" * 2000)
    out = wire.decode(wire.encode(msg), LIMITS)
    assert out.reason == "é" * 512 and out.step == 3
