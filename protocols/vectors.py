"""Interoperability test vectors (in the style of pyca/cryptography's ``vectors/``).

Why: docs/protocol.md specifies every derivation (section 6) so that another implementation can
reproduce a sum bit for bit; these files let it check that claim against ours. Each JSON file under
``tests/vectors/`` is one recorded session: configuration, session id, graph seed and ring, every
client's channel, mask and signing keys, self-mask seeds, the Shamir shares each holder received,
the derived AES keys, the inputs, the masked vectors, the full wire transcript (with the points
where the server closed a stage) and the sums. ``tests/protocols/test_vectors.py`` re-derives them
from the specification alone (``cryptography`` + numpy, none of :mod:`protocols`) and replays the
transcripts into a fresh :class:`protocols.Server`.

Regenerate (the files are committed; the tests check the committed files)::

    python -m protocols.vectors generate [DIR]   # default DIR: tests/vectors
    python -m protocols.vectors check [DIR]      # regenerate in memory and compare

How they are deterministic: every secret of the protocol comes from :func:`protocols.keys.
random_bytes` / ``generate_x25519`` / ``generate_signing_key`` and Shamir's coefficients, which all
read the OS CSPRNG -- unless :func:`insecure_deterministic_randomness` is in force, a context
manager that only this module uses: it installs, for the ``with`` block and the current context
only, an AES-256-CTR stream keyed from a public per-vector seed. Nothing else in the package sets
it, so production secrets cannot come from it by accident; never use it outside test vectors.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocols import keys, shamir, wire
from protocols.errors import ConfigError
from protocols.graph import relabelling
from protocols.messages import ForwardShares, MaskedInput, ShareKeys, UnmaskRequest
from protocols.params import SecAggConfig
from protocols.session import InProcessSession

FORMAT = 1
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "tests" / "vectors"
_DRBG_LABEL = b"securedream/secagg/v1/test-vectors/INSECURE-DETERMINISTIC-DRBG"


class _Drbg:
    """AES-256-CTR keystream keyed by SHA-256(label || seed): public, reproducible, NOT secret."""

    def __init__(self, seed: bytes) -> None:
        key = hashlib.sha256(_DRBG_LABEL + seed).digest()
        self._enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def __call__(self, n: int) -> bytes:
        return self._enc.update(bytes(n))


@contextmanager
def insecure_deterministic_randomness(seed: bytes) -> Iterator[None]:
    """Make every protocol secret a function of the public ``seed`` -- test vectors only.

    Scoped to the ``with`` block and the current context (thread / asyncio task); the previous
    source (normally: the OS CSPRNG) is restored on exit, also on error.
    """
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise ConfigError("test-vector seed must be 32 bytes")
    token = keys._TEST_ENTROPY.set(_Drbg(seed))
    try:
        yield
    finally:
        keys._TEST_ENTROPY.reset(token)


@dataclass(frozen=True)
class VectorCase:
    """One recorded session: configuration, length, dropout schedule {client: (step, stage)}."""

    name: str
    description: str
    num_clients: int
    graph: str = "complete"
    mode: str = "semi-honest"
    degree: int | None = None
    threshold: int | None = None
    steps: int = 2
    dim: int = 8
    bits: int = 32
    drops: Mapping[int, tuple[int, str]] = field(default_factory=dict)

    def config(self) -> SecAggConfig:
        return SecAggConfig(
            self.num_clients,
            graph=self.graph,
            degree=self.degree,
            threshold=self.threshold,
            mode=self.mode,
            bits=self.bits,
            dim=self.dim,
        )

    def seed(self) -> bytes:
        return hashlib.sha256(b"securedream secagg test vector " + self.name.encode()).digest()

    def inputs(self, step: int) -> dict[int, list[int]]:
        """Small signed integers (already encoded contributions), distinct per client and step."""
        return {
            u: [(-1) ** i * ((u + 1) * 1000 + step * 100 + i) for i in range(self.dim)]
            for u in range(self.num_clients)
        }


CASES: tuple[VectorCase, ...] = (
    VectorCase(
        "complete-semi-honest",
        "complete graph, semi-honest, n=5 (t derived = 3), 3 steps: client 4 drops after sharing "
        "keys (its pairwise masks are removed with its reconstructed mask key), client 1 drops "
        "after sending its step-1 masked input (in the step-1 sum; its seed is reconstructed)",
        5,
        steps=3,
        drops={4: (0, "masked_input"), 1: (1, "unmask")},
    ),
    VectorCase(
        "complete-semi-honest-64",
        "complete graph, semi-honest, 64-bit ring, n=4, t=3, 2 steps, client 0 drops at step 1",
        4,
        threshold=3,
        bits=64,
        drops={0: (1, "masked_input")},
    ),
    VectorCase(
        "harary-semi-honest",
        "Harary graph k=4, semi-honest, n=8 (t derived), 2 steps: client 2 never shares keys, "
        "client 5 drops before its step-1 masked input",
        8,
        graph="harary",
        degree=4,
        drops={2: (0, "share"), 5: (1, "masked_input")},
    ),
    VectorCase(
        "complete-active",
        "complete graph, active mode (Ed25519 signatures, consistency round), n=5, t=4, 2 steps: "
        "client 3 drops after sharing keys",
        5,
        mode="active",
        threshold=4,
        drops={3: (0, "masked_input")},
    ),
    VectorCase(
        "harary-active",
        "Harary graph k=6, active mode, n=9 (t derived), 2 steps: client 7 drops after sharing "
        "keys, client 0 drops at the step-1 consistency round (in the survivor set, unsigned)",
        9,
        graph="harary",
        mode="active",
        degree=6,
        drops={7: (0, "masked_input"), 0: (1, "consistency")},
    ),
)


def _hex(data: bytes) -> str:
    return data.hex()


def _raw_private(sk: Any) -> bytes:
    return sk.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def generate_case(case: VectorCase) -> dict[str, Any]:
    """Run the case's session under the deterministic seam and record everything (a JSON dict)."""
    config = case.config()
    made: dict[tuple[int, int], Any] = {}
    results = []
    with insecure_deterministic_randomness(case.seed()):
        session = InProcessSession(config, record=True)
        for client in session._clients.values():
            original = client._make_bundle

            def recording(step, recipients, channel_keys, _orig=original, _u=client.id):
                bundle, secrets = _orig(step, recipients, channel_keys)
                made[(_u, step)] = secrets
                return bundle, secrets

            client._make_bundle = recording  # type: ignore[method-assign]
        server = session._server
        close = server.close_stage

        def closing():
            assert session.transcript is not None
            session.transcript.append((server.step, "close", -1, b""))
            return close()

        server.close_stage = closing  # type: ignore[method-assign]
        for step in range(case.steps):
            drop = {u: stage for u, (j, stage) in case.drops.items() if j == step}
            live = {u: x for u, x in case.inputs(step).items() if u in session.active_clients}
            vectors = {u: np.array(x, dtype=np.int64) for u, x in live.items()}
            results.append(session.aggregate(vectors, drop=drop))
        channel_sk = {u: c._channel_sk for u, c in session._clients.items()}
        signing = {u: c._signing_key for u, c in session._clients.items()}
        verify = dict(server._verify_keys)
        graph = server.graph
        graph_seed = server._graph_seed
        transcript = list(session.transcript or [])
        session.close()
    assert graph is not None
    sid = session.session_id
    limits = wire.WireLimits.for_config(config.num_clients, config.max_dim, config.bits)
    channel_pk = {u: keys.public_bytes(sk) for u, sk in channel_sk.items() if sk is not None}

    def channel_key(a: int, b: int) -> bytes:
        sk = channel_sk[a]
        assert sk is not None
        return keys.channel_key(sk, channel_pk[b], sid, a, b)

    shares: dict[int, list[dict[str, Any]]] = {}
    masked: dict[tuple[int, int], bytes] = {}
    peers: dict[tuple[int, int], list[int]] = {}
    declared: dict[int, list[int]] = {}  # step -> dropped clients named in the unmask request
    uploaded: set[tuple[int, int]] = set()  # (owner, step) whose key bundle reached the server
    out_events = []
    for step, direction, u, data in transcript:
        if direction == "close":
            out_events.append({"step": step, "direction": "close"})
            continue
        msg = wire.decode(data, limits)
        out_events.append(
            {
                "step": step,
                "direction": direction,
                "client": u,
                "type": msg.TYPE.name,
                "hex": _hex(data),
            }
        )
        if direction == "up" and isinstance(msg, (ShareKeys, MaskedInput)):
            bundle = msg.bundle if isinstance(msg, ShareKeys) else msg.next_bundle
            uploaded.add((u, bundle.step))
            for v, ct in bundle.ciphertexts:
                pt = keys.open_shares(channel_key(v, u), sid, bundle.step, u, v, ct)
                shares.setdefault(bundle.step, []).append(
                    {
                        "owner": u,
                        "holder": v,
                        "index": int.from_bytes(pt[:4], "big"),
                        "self_mask_share": _hex(pt[4 : 4 + shamir.SHARE_BYTES]),
                        "mask_key_share": _hex(pt[4 + shamir.SHARE_BYTES :]),
                    }
                )
            if isinstance(msg, MaskedInput):
                masked[(u, msg.step)] = msg.vector
        if direction == "down" and isinstance(msg, ForwardShares):
            peers[(u, 0)] = sorted(fb.sender for fb in msg.bundles)
        if direction == "down" and isinstance(msg, UnmaskRequest):
            peers[(u, msg.step + 1)] = sorted(fb.sender for fb in msg.next_bundles)
            declared[msg.step] = list(msg.dropped)
    made = {key: value for key, value in made.items() if key in uploaded}
    for (u, step), secrets in made.items():
        shares.setdefault(step, []).append(
            {
                "owner": u,
                "holder": u,
                "index": u + 1,
                "self_mask_share": _hex(shamir.share_to_bytes(secrets.own_self_share)),
                "mask_key_share": _hex(shamir.share_to_bytes(secrets.own_key_share)),
            }
        )
    steps_out = []
    for res in results:
        j = res.step
        clients_out = []
        for u in range(config.num_clients):
            secrets = made.get((u, j))
            if secrets is None:
                continue
            mask_sk = keys.private_bytes(secrets.mask_sk)
            entry: dict[str, Any] = {
                "id": u,
                "mask_private_key": _hex(mask_sk),
                "mask_public_key": _hex(keys.public_bytes(secrets.mask_sk)),
                "self_mask_seed": _hex(secrets.seed),
                "share_recipients": sorted(secrets.recipients),
            }
            if (u, j) in masked:
                entry["input"] = case.inputs(j)[u]
                entry["self_mask_key"] = _hex(
                    keys.self_mask_key(secrets.seed, sid, j, u, case.dim, case.bits)
                )
                pair_keys = {}
                for v in peers.get((u, j), []):
                    other = made[(v, j)]
                    shared = keys.x25519_shared(secrets.mask_sk, keys.public_bytes(other.mask_sk))
                    pair_keys[str(v)] = _hex(
                        keys.pair_mask_key(shared, sid, j, u, v, case.dim, case.bits)
                    )
                entry["pair_peers"] = peers.get((u, j), [])
                entry["pair_mask_keys"] = pair_keys
                entry["masked_input"] = _hex(masked[(u, j)])
            clients_out.append(entry)
        steps_out.append(
            {
                "step": j,
                "dropouts": {str(u): s for u, (jj, s) in sorted(case.drops.items()) if jj == j},
                "clients": clients_out,
                "shares": sorted(shares.get(j, []), key=lambda e: (e["owner"], e["holder"])),
                "survivors": sorted(res.survivors),
                "dropped": declared.get(j, []),
                "sum": [int(v) for v in res.integer_sum],
            }
        )
    ring = None
    if graph.kind == "harary":
        ring = list(relabelling(graph.members, graph_seed, sid))
    pair_channel = {}
    members = list(graph.members)
    for a in members:
        for b in sorted(graph.neighbours(a)):
            if a < b:
                pair_channel[f"{a}-{b}"] = _hex(channel_key(a, b))
    clients_static = []
    for u in range(config.num_clients):
        item: dict[str, Any] = {"id": u}
        if channel_sk[u] is not None:
            item["channel_private_key"] = _hex(keys.private_bytes(channel_sk[u]))
            item["channel_public_key"] = _hex(channel_pk[u])
        if config.active:
            item["signing_private_key"] = _hex(_raw_private(signing[u]))
            item["verify_key"] = _hex(verify[u])
        clients_static.append(item)
    return {
        "format": FORMAT,
        "name": case.name,
        "description": case.description,
        "spec": "docs/protocol.md sections 3, 6, 8 (securedream/secagg/v1)",
        "config": {
            "num_clients": config.num_clients,
            "graph": config.graph,
            "degree": config.k,
            "threshold": config.t,
            "mode": config.mode,
            "bits": config.bits,
            "dim": case.dim,
            "dropout_rate": config.dropout_rate,
            "corruption_rate": config.corruption_rate,
        },
        "session_id": _hex(sid),
        "graph_seed": _hex(graph_seed),
        "graph": {
            "members": members,
            "kind": graph.kind,
            "ring": ring,
            "neighbours": {str(u): sorted(graph.neighbours(u)) for u in members},
        },
        "clients": clients_static,
        "channel_keys": pair_channel,
        "steps": steps_out,
        "transcript": out_events,
    }


def _dump(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def generate(directory: Path = DEFAULT_DIR) -> list[Path]:
    """Write every case to ``directory/<name>.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for case in CASES:
        path = directory / f"{case.name}.json"
        path.write_text(_dump(generate_case(case)))
        paths.append(path)
    return paths


def check(directory: Path = DEFAULT_DIR) -> list[str]:
    """Cases whose committed file differs from a fresh generation (empty: all equal)."""
    bad = []
    for case in CASES:
        path = directory / f"{case.name}.json"
        if not path.exists() or path.read_text() != _dump(generate_case(case)):
            bad.append(case.name)
    return bad


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("generate", "check") or len(args) > 2:
        print("usage: python -m protocols.vectors generate|check [DIR]", file=sys.stderr)
        return 2
    directory = Path(args[1]) if len(args) == 2 else DEFAULT_DIR
    if args[0] == "generate":
        for path in generate(directory):
            print(path)
        return 0
    bad = check(directory)
    for name in bad:
        print(f"{name}: differs from a fresh generation", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = [
    "CASES",
    "VectorCase",
    "check",
    "generate",
    "generate_case",
    "insecure_deterministic_randomness",
]
