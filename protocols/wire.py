"""Versioned, length-checked binary wire format (never pickle).

Frame::

    magic "SD" | version u8 (=1) | type u8 | body length u32 (big endian) | body

Body fields are fixed-width big-endian integers, fixed-size byte strings (keys, seeds, shares,
ciphertexts), length-prefixed byte strings and count-prefixed lists. Lists of ids are strictly
increasing (canonical, so duplicates are impossible). Every count and length is checked against the
configured limits and against the bytes actually left *before* anything is allocated; trailing bytes
are an error. Any input either decodes to a message or raises a :class:`ProtocolError` subclass
naming the problem.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocols.errors import LocalProtocolError, MalformedMessage, OversizeMessage
from protocols.keys import AEAD_TAG_BYTES, PUBLIC_KEY_BYTES, SESSION_ID_BYTES, SIGNATURE_BYTES
from protocols.messages import (
    Abort,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    ForwardedBundle,
    ForwardShares,
    KeyBundle,
    MaskedInput,
    Message,
    MessageType,
    PeerKey,
    Roster,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
)
from protocols.shamir import SHARE_BYTES

MAGIC = b"SD"
VERSION = 1
HEADER = struct.Struct(">2sBBI")
HEADER_BYTES = HEADER.size
#: Plaintext of a share bundle: recipient index u32 + self-mask share + mask-key share.
SHARE_PLAINTEXT_BYTES = 4 + 2 * SHARE_BYTES
SHARE_CIPHERTEXT_BYTES = SHARE_PLAINTEXT_BYTES + AEAD_TAG_BYTES
SEED_BYTES = 32
MAX_REASON_BYTES = 1024
MAX_STEP = (1 << 32) - 1


@dataclass(frozen=True)
class WireLimits:
    """Upper bounds enforced by the decoder (derive them with :meth:`for_config`)."""

    max_clients: int
    max_dim: int
    max_message_bytes: int

    @classmethod
    def for_config(cls, num_clients: int, max_dim: int, bits: int = 64) -> WireLimits:
        """Limits that admit every honest message of a session with these parameters."""
        per_peer = 4 + PUBLIC_KEY_BYTES + 1 + SIGNATURE_BYTES + SHARE_CIPHERTEXT_BYTES
        body = max_dim * (bits // 8) + 4 * per_peer * num_clients + 4096
        return cls(num_clients, max_dim, HEADER_BYTES + body)


# --------------------------------------------------------------------------- writer


class _Writer:
    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u8(self, v: int) -> None:
        self.parts.append(struct.pack(">B", v))

    def u32(self, v: int) -> None:
        if not 0 <= v < 1 << 32:
            raise LocalProtocolError(f"value {v} does not fit in u32")
        self.parts.append(struct.pack(">I", v))

    def fixed(self, v: bytes, n: int, name: str) -> None:
        if len(v) != n:
            raise LocalProtocolError(f"field {name!r} must be {n} bytes, got {len(v)}")
        self.parts.append(bytes(v))

    def sig(self, v: bytes) -> None:
        if len(v) not in (0, SIGNATURE_BYTES):
            raise LocalProtocolError(f"signature must be 0 or 64 bytes, got {len(v)}")
        self.u8(len(v))
        self.parts.append(bytes(v))

    def ids(self, ids: tuple[int, ...], name: str) -> None:
        _check_sorted(ids, name, LocalProtocolError)
        self.parts.append(struct.pack(f">I{len(ids)}I", len(ids), *ids))

    def keyed(self, items: tuple[tuple[int, bytes], ...], size: int, name: str) -> None:
        _check_sorted(tuple(i for i, _ in items), name, LocalProtocolError)
        self.u32(len(items))
        for i, blob in items:
            if len(blob) != size:
                raise LocalProtocolError(f"field {name!r} must be {size} bytes, got {len(blob)}")
            if not 0 <= i < 1 << 32:
                raise LocalProtocolError(f"value {i} does not fit in u32")
            self.parts.append(i.to_bytes(4, "big") + blob)


def _check_sorted(ids: tuple[int, ...], name: str, exc: type[Exception]) -> None:
    prev = -1
    for i in ids:
        if i <= prev:
            raise exc(
                f"field {name!r}: ids must be strictly increasing (duplicate or unsorted {i})"
            )
        prev = i


# --------------------------------------------------------------------------- reader


class _Reader:
    __slots__ = ("data", "limits", "pos")

    def __init__(self, data: bytes, pos: int, limits: WireLimits) -> None:
        self.data, self.pos, self.limits = data, pos, limits

    def _take(self, n: int, name: str) -> bytes:
        left = len(self.data) - self.pos
        if n > left:
            raise MalformedMessage(f"truncated: field {name!r} needs {n} bytes, {left} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, name: str) -> int:
        return self._take(1, name)[0]

    def u32(self, name: str) -> int:
        return int.from_bytes(self._take(4, name), "big")

    def client(self, name: str) -> int:
        v = self.u32(name)
        if v >= self.limits.max_clients:
            raise MalformedMessage(
                f"field {name!r}: client id {v} >= max_clients {self.limits.max_clients}"
            )
        return v

    def fixed(self, n: int, name: str) -> bytes:
        return bytes(self._take(n, name))

    def count(self, name: str, entry_bytes: int) -> int:
        n = self.u32(name + " count")
        if n > self.limits.max_clients:
            raise OversizeMessage(
                f"field {name!r}: {n} entries exceeds max_clients {self.limits.max_clients}"
            )
        left = len(self.data) - self.pos
        if n * entry_bytes > left:
            raise MalformedMessage(
                f"truncated: field {name!r} declares {n} entries ({n * entry_bytes} bytes), "
                f"{left} left"
            )
        return n

    def sig(self, name: str) -> bytes:
        n = self.u8(name + " length")
        if n not in (0, SIGNATURE_BYTES):
            raise MalformedMessage(f"field {name!r}: signature length {n} is not 0 or 64")
        return self.fixed(n, name)

    def ids(self, name: str) -> tuple[int, ...]:
        n = self.count(name, 4)
        ids = struct.unpack_from(f">{n}I", self.data, self.pos)
        self.pos += 4 * n
        _check_sorted(ids, name, MalformedMessage)
        if n and ids[-1] >= self.limits.max_clients:
            raise MalformedMessage(f"field {name!r}: client id {ids[-1]} >= max_clients")
        return tuple(ids)

    def keyed(self, name: str, size: int) -> tuple[tuple[int, bytes], ...]:
        n = self.count(name, 4 + size)
        data, pos, limit = self.data, self.pos, self.limits.max_clients
        out = []
        for _ in range(n):
            i = int.from_bytes(data[pos : pos + 4], "big")
            if i >= limit:
                raise MalformedMessage(f"field {name!r}: client id {i} >= max_clients {limit}")
            out.append((i, data[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        self.pos = pos
        _check_sorted(tuple(i for i, _ in out), name, MalformedMessage)
        return tuple(out)

    def text(self, name: str) -> str:
        n = int.from_bytes(self._take(2, name + " length"), "big")
        if n > MAX_REASON_BYTES:
            raise OversizeMessage(f"field {name!r}: {n} bytes exceeds {MAX_REASON_BYTES}")
        try:
            return self._take(n, name).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedMessage(f"field {name!r} is not valid UTF-8") from None

    def step(self) -> int:
        return self.u32("step")

    def session(self) -> bytes:
        return self.fixed(SESSION_ID_BYTES, "session")

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise MalformedMessage(f"{len(self.data) - self.pos} trailing bytes after the message")


# --------------------------------------------------------------------------- per-type codecs


def _w_bundle(w: _Writer, b: KeyBundle) -> None:
    w.u32(b.step)
    w.fixed(b.mask_pk, PUBLIC_KEY_BYTES, "mask_pk")
    w.sig(b.signature)
    w.keyed(b.ciphertexts, SHARE_CIPHERTEXT_BYTES, "ciphertexts")


def _r_bundle(r: _Reader) -> KeyBundle:
    step = r.step()
    pk = r.fixed(PUBLIC_KEY_BYTES, "mask_pk")
    sig = r.sig("signature")
    cts = r.keyed("ciphertexts", SHARE_CIPHERTEXT_BYTES)
    return KeyBundle(step, pk, sig, cts)


def _w_forwarded(w: _Writer, items: tuple[ForwardedBundle, ...], name: str) -> None:
    _check_sorted(tuple(b.sender for b in items), name, LocalProtocolError)
    w.u32(len(items))
    pack = struct.Struct(">I32sB").pack
    for b in items:
        if len(b.mask_pk) != PUBLIC_KEY_BYTES or len(b.ciphertext) != SHARE_CIPHERTEXT_BYTES:
            raise LocalProtocolError(f"field {name!r}: bad key or ciphertext length")
        if len(b.signature) not in (0, SIGNATURE_BYTES):
            raise LocalProtocolError(f"signature must be 0 or 64 bytes, got {len(b.signature)}")
        if not 0 <= b.sender < 1 << 32:
            raise LocalProtocolError(f"value {b.sender} does not fit in u32")
        w.parts.append(pack(b.sender, b.mask_pk, len(b.signature)) + b.signature + b.ciphertext)


def _r_forwarded(r: _Reader, name: str) -> tuple[ForwardedBundle, ...]:
    n = r.count(name, 4 + PUBLIC_KEY_BYTES + 1 + SHARE_CIPHERTEXT_BYTES)
    out = []
    for _ in range(n):
        sender = r.client(name)
        pk = r.fixed(PUBLIC_KEY_BYTES, "mask_pk")
        sig = r.sig("signature")
        ct = r.fixed(SHARE_CIPHERTEXT_BYTES, "ciphertext")
        out.append(ForwardedBundle(sender, pk, sig, ct))
    _check_sorted(tuple(b.sender for b in out), name, MalformedMessage)
    return tuple(out)


def _enc_advertise(w: _Writer, m: AdvertiseKeys) -> None:
    w.fixed(m.session, SESSION_ID_BYTES, "session")
    w.u32(m.sender)
    w.fixed(m.channel_pk, PUBLIC_KEY_BYTES, "channel_pk")
    w.sig(m.signature)


def _dec_advertise(r: _Reader) -> AdvertiseKeys:
    return AdvertiseKeys(
        r.session(), r.client("sender"), r.fixed(PUBLIC_KEY_BYTES, "channel_pk"), r.sig("signature")
    )


def _enc_share_keys(w: _Writer, m: ShareKeys) -> None:
    w.fixed(m.session, SESSION_ID_BYTES, "session")
    w.u32(m.sender)
    _w_bundle(w, m.bundle)


def _dec_share_keys(r: _Reader) -> ShareKeys:
    return ShareKeys(r.session(), r.client("sender"), _r_bundle(r))


def _enc_masked(w: _Writer, m: MaskedInput) -> None:
    w.fixed(m.session, SESSION_ID_BYTES, "session")
    w.u32(m.step)
    w.u32(m.sender)
    if m.bits not in (32, 64):
        raise LocalProtocolError(f"bits must be 32 or 64, got {m.bits}")
    w.u8(m.bits)
    if len(m.vector) % (m.bits // 8):
        raise LocalProtocolError("vector length is not a multiple of the element size")
    w.u32(len(m.vector) // (m.bits // 8))
    w.parts.append(bytes(m.vector) if not isinstance(m.vector, bytes) else m.vector)
    _w_bundle(w, m.next_bundle)


def _dec_masked(r: _Reader) -> MaskedInput:
    session, step, sender = r.session(), r.step(), r.client("sender")
    bits = r.u8("bits")
    if bits not in (32, 64):
        raise MalformedMessage(f"field 'bits': {bits} is not 32 or 64")
    dim = r.u32("dim")
    if dim > r.limits.max_dim:
        raise OversizeMessage(f"field 'vector': dim {dim} exceeds max_dim {r.limits.max_dim}")
    vector = r.fixed(dim * (bits // 8), "vector")
    return MaskedInput(session, step, sender, bits, vector, _r_bundle(r))


def _enc_consistency_sig(w: _Writer, m: ConsistencySignature) -> None:
    w.fixed(m.session, SESSION_ID_BYTES, "session")
    w.u32(m.step)
    w.u32(m.sender)
    w.sig(m.signature)


def _dec_consistency_sig(r: _Reader) -> ConsistencySignature:
    return ConsistencySignature(r.session(), r.step(), r.client("sender"), r.sig("signature"))


def _enc_unmask_shares(w: _Writer, m: UnmaskShares) -> None:
    w.fixed(m.session, SESSION_ID_BYTES, "session")
    w.u32(m.step)
    w.u32(m.sender)
    w.keyed(m.self_shares, SHARE_BYTES, "self_shares")
    w.keyed(m.key_shares, SHARE_BYTES, "key_shares")


def _dec_unmask_shares(r: _Reader) -> UnmaskShares:
    return UnmaskShares(
        r.session(),
        r.step(),
        r.client("sender"),
        r.keyed("self_shares", SHARE_BYTES),
        r.keyed("key_shares", SHARE_BYTES),
    )


def _enc_roster(w: _Writer, m: Roster) -> None:
    w.fixed(m.session, SESSION_ID_BYTES, "session")
    w.ids(m.members, "members")
    w.fixed(m.graph_seed, SEED_BYTES, "graph_seed")
    _check_sorted(tuple(p.client for p in m.peers), "peers", LocalProtocolError)
    w.u32(len(m.peers))
    for p in m.peers:
        w.u32(p.client)
        w.fixed(p.channel_pk, PUBLIC_KEY_BYTES, "channel_pk")
        w.sig(p.signature)


def _dec_roster(r: _Reader) -> Roster:
    session = r.session()
    members = r.ids("members")
    seed = r.fixed(SEED_BYTES, "graph_seed")
    n = r.count("peers", 4 + PUBLIC_KEY_BYTES + 1)
    peers = []
    for _ in range(n):
        peers.append(
            PeerKey(r.client("peers"), r.fixed(PUBLIC_KEY_BYTES, "channel_pk"), r.sig("signature"))
        )
    _check_sorted(tuple(p.client for p in peers), "peers", MalformedMessage)
    return Roster(session, members, seed, tuple(peers))


def _enc_forward(w: _Writer, m: ForwardShares) -> None:
    w.fixed(m.session, SESSION_ID_BYTES, "session")
    w.u32(m.step)
    _w_forwarded(w, m.bundles, "bundles")


def _dec_forward(r: _Reader) -> ForwardShares:
    return ForwardShares(r.session(), r.step(), _r_forwarded(r, "bundles"))


def _enc_consistency_req(w: _Writer, m: ConsistencyRequest) -> None:
    w.fixed(m.session, SESSION_ID_BYTES, "session")
    w.u32(m.step)
    w.ids(m.survivors, "survivors")


def _dec_consistency_req(r: _Reader) -> ConsistencyRequest:
    return ConsistencyRequest(r.session(), r.step(), r.ids("survivors"))


def _enc_unmask_req(w: _Writer, m: UnmaskRequest) -> None:
    w.fixed(m.session, SESSION_ID_BYTES, "session")
    w.u32(m.step)
    w.ids(m.survivors, "survivors")
    w.ids(m.dropped, "dropped")
    w.keyed(m.signatures, SIGNATURE_BYTES, "signatures")
    _w_forwarded(w, m.next_bundles, "next_bundles")


def _dec_unmask_req(r: _Reader) -> UnmaskRequest:
    return UnmaskRequest(
        r.session(),
        r.step(),
        r.ids("survivors"),
        r.ids("dropped"),
        r.keyed("signatures", SIGNATURE_BYTES),
        _r_forwarded(r, "next_bundles"),
    )


def _enc_abort(w: _Writer, m: Abort) -> None:
    w.fixed(m.session, SESSION_ID_BYTES, "session")
    w.u32(m.step)
    # truncate on a character boundary, so that what is sent decodes
    raw = m.reason.encode("utf-8")[:MAX_REASON_BYTES].decode("utf-8", "ignore").encode("utf-8")
    w.parts.append(struct.pack(">H", len(raw)) + raw)


def _dec_abort(r: _Reader) -> Abort:
    return Abort(r.session(), r.step(), r.text("reason"))


_CODECS: dict[
    MessageType, tuple[type, Callable[[_Writer, Any], None], Callable[[_Reader], Any]]
] = {
    MessageType.ADVERTISE_KEYS: (AdvertiseKeys, _enc_advertise, _dec_advertise),
    MessageType.SHARE_KEYS: (ShareKeys, _enc_share_keys, _dec_share_keys),
    MessageType.MASKED_INPUT: (MaskedInput, _enc_masked, _dec_masked),
    MessageType.CONSISTENCY_SIGNATURE: (
        ConsistencySignature,
        _enc_consistency_sig,
        _dec_consistency_sig,
    ),
    MessageType.UNMASK_SHARES: (UnmaskShares, _enc_unmask_shares, _dec_unmask_shares),
    MessageType.ROSTER: (Roster, _enc_roster, _dec_roster),
    MessageType.FORWARD_SHARES: (ForwardShares, _enc_forward, _dec_forward),
    MessageType.CONSISTENCY_REQUEST: (
        ConsistencyRequest,
        _enc_consistency_req,
        _dec_consistency_req,
    ),
    MessageType.UNMASK_REQUEST: (UnmaskRequest, _enc_unmask_req, _dec_unmask_req),
    MessageType.ABORT: (Abort, _enc_abort, _dec_abort),
}


def encode(msg: Message) -> bytes:
    """Serialise a message (raises LocalProtocolError for a structurally invalid one)."""
    mtype = getattr(type(msg), "TYPE", None)
    if mtype not in _CODECS:
        raise LocalProtocolError(f"not a protocol message: {type(msg).__name__}")
    w = _Writer()
    _CODECS[mtype][1](w, msg)
    body_len = sum(len(p) for p in w.parts)
    return HEADER.pack(MAGIC, VERSION, int(mtype), body_len) + b"".join(w.parts)


def peek_type(data: bytes) -> MessageType:
    """Type tag of a frame (validated header only)."""
    if len(data) < HEADER_BYTES:
        raise MalformedMessage(f"truncated: {len(data)} bytes is shorter than the 8-byte header")
    magic, version, tag, _ = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise MalformedMessage(f"bad magic {magic!r} (expected {MAGIC!r})")
    if version != VERSION:
        raise MalformedMessage(f"unsupported wire version {version} (supported: {VERSION})")
    try:
        return MessageType(tag)
    except ValueError:
        raise MalformedMessage(f"unknown message type {tag}") from None


def decode(data: bytes, limits: WireLimits) -> Message:
    """Parse one frame. Raises only ProtocolError subclasses."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedMessage(f"expected bytes, got {type(data).__name__}")
    if len(data) > limits.max_message_bytes:
        raise OversizeMessage(
            f"message of {len(data)} bytes exceeds the limit of {limits.max_message_bytes}"
        )
    data = bytes(data) if not isinstance(data, bytes) else data
    mtype = peek_type(data)
    body_len = HEADER.unpack_from(data, 0)[3]
    if body_len != len(data) - HEADER_BYTES:
        raise MalformedMessage(
            f"length mismatch: header says {body_len} body bytes, "
            f"frame has {len(data) - HEADER_BYTES}"
        )
    reader = _Reader(data, HEADER_BYTES, limits)
    msg = _CODECS[mtype][2](reader)
    reader.finish()
    return msg
