"""Save and restore a ``protocols.Client`` between Flower messages.

Why this exists: Flower's deployment runtime starts a fresh ClientApp process for every message, so
the client side of a secure-aggregation session (its channel key, this aggregation's mask key and
self-mask seed, the shares it holds for its neighbours, what it has already revealed) has to survive
from one message to the next in the node's ``Context.state``, which stays on the client's
SuperNode (it is never sent to the SuperLink). The simulation runtime keeps the live object in a
per-process cache and uses this only when the cache misses.

The format is JSON (bytes as base64, field elements as decimal strings), versioned, and covers
semi-honest mode (what securedream's config builds); active mode (signing keys) is refused. It reads
the client's private attributes, so ``tests/test_flower_units.py`` replays whole sessions with a
save/restore after every message to catch any drift from ``protocols/client.py``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from protocols import keys
from protocols.client import Client, _PeerMaterial, _StepSecrets
from protocols.messages import MessageType
from protocols.params import SecAggConfig
from protocols.state import State

FORMAT = 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _sk(sk: Any) -> str:
    return _b64(keys.private_bytes(sk))


def dump_client(client: Client) -> bytes:
    """Everything a semi-honest ``protocols.Client`` knows, as bytes."""
    if client.config.active:
        raise ValueError("secagg_state: active-mode clients (signing keys) are not persisted")
    c = client
    state = {
        "format": FORMAT,
        "id": c.id,
        "session": _b64(c.session),
        "state": c._state.value,
        "step": c._step,
        "handled": sorted([int(t), int(s)] for t, s in c._handled),
        "channel_sk": _sk(c._channel_sk) if c._channel_sk is not None else None,
        "members": list(c._members),
        "neighbours": sorted(c._neighbours),
        "channel_keys": {str(v): _b64(k) for v, k in c._channel_keys.items()},
        "declared_dropped": {str(v): s for v, s in c._declared_dropped.items()},
        "secrets": {
            str(step): {
                "mask_sk": _sk(s.mask_sk),
                "seed": _b64(s.seed),
                "own_self_share": str(s.own_self_share),
                "own_key_share": str(s.own_key_share),
                "recipients": sorted(s.recipients),
            }
            for step, s in c._secrets.items()
        },
        "peers": {
            str(step): {
                str(v): {
                    "shared": _b64(p.shared),
                    "self_share": str(p.self_share),
                    "key_share": str(p.key_share),
                }
                for v, p in peers.items()
            }
            for step, peers in c._peers.items()
        },
        "revealed": sorted([s, v, kind] for (s, v), kind in c._revealed.items()),
    }
    return json.dumps(state, sort_keys=True, separators=(",", ":")).encode()


def load_client(config: SecAggConfig, data: bytes) -> Client:
    """Rebuild the client saved by :func:`dump_client` (``config`` comes from the run config)."""
    state = json.loads(data.decode())
    if state.get("format") != FORMAT:
        raise ValueError(f"secagg_state: unknown format {state.get('format')!r}")
    client = Client(config, int(state["id"]), _unb64(state["session"]))
    client._state = State(state["state"])
    client._step = int(state["step"])
    client._handled = {(MessageType(t), int(s)) for t, s in state["handled"]}
    sk = state["channel_sk"]
    client._channel_sk = keys.x25519_from_private(_unb64(sk)) if sk is not None else None
    client._members = tuple(int(v) for v in state["members"])
    client._neighbours = frozenset(int(v) for v in state["neighbours"])
    client._channel_keys = {int(v): _unb64(k) for v, k in state["channel_keys"].items()}
    client._declared_dropped = {int(v): int(s) for v, s in state["declared_dropped"].items()}
    client._secrets = {
        int(step): _StepSecrets(
            keys.x25519_from_private(_unb64(s["mask_sk"])),
            _unb64(s["seed"]),
            int(s["own_self_share"]),
            int(s["own_key_share"]),
            frozenset(int(v) for v in s["recipients"]),
        )
        for step, s in state["secrets"].items()
    }
    client._peers = {
        int(step): {
            int(v): _PeerMaterial(_unb64(p["shared"]), int(p["self_share"]), int(p["key_share"]))
            for v, p in peers.items()
        }
        for step, peers in state["peers"].items()
    }
    client._revealed = {(int(s), int(v)): str(kind) for s, v, kind in state["revealed"]}
    return client
