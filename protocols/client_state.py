"""Versioned byte encoding of a :class:`protocols.Client` (``Client.to_bytes`` / ``from_bytes``).

Why: a transport whose client process does not live across messages (Flower's deployment runtime
starts one per message) must persist the client between messages. The encoding belongs next to the
state machine it serialises, so that a new attribute cannot be forgotten by a copy elsewhere
(``tests/protocols/test_client_state.py`` round-trips clients after every message of whole
sessions, in both modes).

Format: canonical JSON (sorted keys, no spaces), UTF-8; bytes as lowercase hex, field elements as
integers. It holds secrets (channel, mask and, in active mode, signing keys): store it like a
private key. ``from_bytes`` never evaluates code (no pickle), validates every field and raises
:class:`InvalidState` for anything that does not decode, and refuses a state saved under another
configuration.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocols import keys, shamir
from protocols.errors import InvalidState, SecAggError
from protocols.messages import MessageType
from protocols.state import State

if TYPE_CHECKING:
    from protocols.client import Client
    from protocols.params import SecAggConfig

FORMAT = "securedream/secagg/v1/client-state"
VERSION = 1
_CLIENT_STATES = frozenset(
    {
        State.IDLE,
        State.AWAIT_ROSTER,
        State.AWAIT_FORWARD,
        State.AWAIT_INPUT,
        State.AWAIT_CONSISTENCY,
        State.AWAIT_UNMASK,
        State.DROPPED,
        State.FINISHED,
        State.ABORTED,
    }
)
_KINDS = frozenset({"self-mask", "mask-key"})


def config_fingerprint(config: SecAggConfig) -> dict[str, Any]:
    """The configuration values a client's behaviour depends on."""
    enc = config.encoding
    return {
        "num_clients": config.num_clients,
        "graph": config.graph,
        "k": config.k,
        "t": config.t,
        "mode": config.mode,
        "bits": config.bits,
        "dim": config.dim,
        "max_dim": config.max_dim,
        "chunk_bytes": config.chunk_bytes,
        "clip": enc.clip,
        "max_weight": enc.max_weight,
        "scale": enc.scale,
    }


def _hex(data: bytes) -> str:
    return data.hex()


def encode_client(client: Client) -> bytes:
    """Everything ``client`` holds, as canonical JSON bytes."""
    c = client
    signing = None
    if c._signing_key is not None:
        signing = c._signing_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        ).hex()
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "config": config_fingerprint(c.config),
        "id": c.id,
        "session": _hex(c.session),
        "state": c._state.value,
        "step": c._step,
        "handled": sorted([int(t), s] for t, s in c._handled),
        "channel_sk": None if c._channel_sk is None else _hex(keys.private_bytes(c._channel_sk)),
        "members": list(c._members),
        "neighbours": sorted(c._neighbours),
        "channel_keys": {str(v): _hex(k) for v, k in c._channel_keys.items()},
        "declared_dropped": {str(v): s for v, s in c._declared_dropped.items()},
        "secrets": {
            str(step): [
                _hex(keys.private_bytes(s.mask_sk)),
                _hex(s.seed),
                s.own_self_share,
                s.own_key_share,
                sorted(s.recipients),
            ]
            for step, s in c._secrets.items()
        },
        "peers": {
            str(step): {str(v): [_hex(p.shared), p.self_share, p.key_share] for v, p in m.items()}
            for step, m in c._peers.items()
        },
        "revealed": sorted([s, v, kind] for (s, v), kind in c._revealed.items()),
        "signed": {str(step): list(ids) for step, ids in c._signed.items()},
        "signing_key": signing,
        "verify_keys": {str(i): _hex(k) for i, k in c._verify_keys.items()} or None,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- validated reading


def _int(v: object, lo: int, hi: int, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise InvalidState(f"client state: {what} must be an integer in [{lo}, {hi}]")
    return v


def _bytes(v: object, size: int, what: str) -> bytes:
    if not isinstance(v, str) or len(v) != 2 * size or v != v.lower():
        raise InvalidState(f"client state: {what} must be {size} bytes of lowercase hex")
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise InvalidState(f"client state: {what} is not hex") from None


def _mapping(v: object, what: str) -> Mapping[str, Any]:
    if not isinstance(v, dict):
        raise InvalidState(f"client state: {what} must be an object")
    return v


def _list(v: object, what: str) -> list[Any]:
    if not isinstance(v, list):
        raise InvalidState(f"client state: {what} must be a list")
    return v


def _keyed(v: object, what: str, n: int, read: Callable[[Any], Any]) -> dict[int, Any]:
    out = {}
    for key, item in _mapping(v, what).items():
        if not key.isdigit() or str(int(key)) != key:
            raise InvalidState(f"client state: {what} key {key!r} is not a canonical integer")
        out[_int(int(key), 0, n, what)] = read(item)
    return out


def decode_client(config: SecAggConfig, data: bytes) -> Client:
    """Rebuild a client from :func:`encode_client` bytes, validating every field."""
    from protocols.client import Client, _PeerMaterial, _StepSecrets

    if not isinstance(data, (bytes, bytearray)):
        raise InvalidState("client state must be bytes")
    try:
        doc = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidState("client state is not UTF-8 JSON") from None
    doc = _mapping(doc, "document")
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise InvalidState(
            f"client state: format {doc.get('format')!r} version {doc.get('version')!r}, "
            f"expected {FORMAT!r} version {VERSION}"
        )
    if doc.get("config") != config_fingerprint(config):
        raise InvalidState("client state was saved under another configuration")
    n = config.num_clients
    big = 1 << 62
    try:
        signing = verify = None
        if config.active:
            raw = _bytes(doc.get("signing_key"), 32, "signing_key")
            signing = Ed25519PrivateKey.from_private_bytes(raw)
            verify = _keyed(
                doc.get("verify_keys"), "verify_keys", n - 1, lambda v: _bytes(v, 32, "verify key")
            )
        elif doc.get("signing_key") is not None or doc.get("verify_keys") is not None:
            raise InvalidState("client state: signing keys in a semi-honest state")
        client = Client(
            config,
            _int(doc.get("id"), 0, n - 1, "id"),
            _bytes(doc.get("session"), keys.SESSION_ID_BYTES, "session"),
            signing_key=signing,
            verify_keys=verify,
        )
        state = State(doc.get("state"))
        if state not in _CLIENT_STATES:
            raise InvalidState(f"client state: {state.value} is a server state")
        handled = set()
        for item in _list(doc.get("handled"), "handled"):
            pair = _list(item, "handled entry")
            if len(pair) != 2:
                raise InvalidState("client state: handled entries are [type, step]")
            handled.add((MessageType(_int(pair[0], 0, 255, "type")), _int(pair[1], 0, big, "step")))
        sk = doc.get("channel_sk")
        channel_sk = None if sk is None else keys.x25519_from_private(_bytes(sk, 32, "channel_sk"))

        def field_element(v: object) -> int:
            return _int(v, 0, shamir.PRIME - 1, "share")

        def step_secrets(v: object) -> Any:
            mask_sk, seed, own_self, own_key, recipients = _list(v, "secrets entry")
            return _StepSecrets(
                keys.x25519_from_private(_bytes(mask_sk, 32, "mask_sk")),
                _bytes(seed, keys.SEED_BYTES, "seed"),
                field_element(own_self),
                field_element(own_key),
                frozenset(_int(u, 0, n - 1, "recipient") for u in _list(recipients, "recipients")),
            )

        def peer(v: object) -> Any:
            shared, self_share, key_share = _list(v, "peer entry")
            return _PeerMaterial(
                _bytes(shared, 32, "shared"), field_element(self_share), field_element(key_share)
            )

        revealed = {}
        for item in _list(doc.get("revealed"), "revealed"):
            step, owner, kind = _list(item, "revealed entry")
            if kind not in _KINDS:
                raise InvalidState(f"client state: revealed kind {kind!r}")
            revealed[(_int(step, 0, big, "step"), _int(owner, 0, n - 1, "owner"))] = kind
        client._state = state
        client._step = _int(doc.get("step"), 0, big, "step")
        client._handled = handled
        client._channel_sk = channel_sk
        client._members = tuple(
            _int(u, 0, n - 1, "member") for u in _list(doc.get("members"), "members")
        )
        client._neighbours = frozenset(
            _int(u, 0, n - 1, "neighbour") for u in _list(doc.get("neighbours"), "neighbours")
        )
        client._channel_keys = _keyed(
            doc.get("channel_keys"), "channel_keys", n - 1, lambda v: _bytes(v, 32, "channel key")
        )
        client._declared_dropped = _keyed(
            doc.get("declared_dropped"),
            "declared_dropped",
            n - 1,
            lambda v: _int(v, 0, big, "step"),
        )
        client._secrets = _keyed(doc.get("secrets"), "secrets", big, step_secrets)
        client._peers = _keyed(
            doc.get("peers"), "peers", big, lambda v: _keyed(v, "peers", n - 1, peer)
        )
        client._revealed = revealed
        client._signed = _keyed(
            doc.get("signed"),
            "signed",
            big,
            lambda v: tuple(_int(u, 0, n - 1, "survivor") for u in _list(v, "survivors")),
        )
    except InvalidState:
        raise
    except (SecAggError, KeyError, TypeError, ValueError) as exc:
        raise InvalidState(f"client state does not decode: {exc}") from None
    return client
