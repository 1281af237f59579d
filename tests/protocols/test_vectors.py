"""The committed interoperability vectors (tests/vectors/*.json), checked three ways.

1. ``test_vectors_follow_from_the_specification``: an independent re-derivation written from
   docs/protocol.md sections 6 and 7 only -- ``cryptography`` and numpy, nothing from
   ``protocols`` -- of the channel keys, share ciphertexts, Shamir shares, graph relabelling, mask
   keys, masked vectors and the unmasked sums. If the spec missed a byte, this fails.
2. ``test_transcripts_replay_into_a_fresh_server``: the recorded client messages, fed to a new
   ``protocols.Server`` with the recorded graph seed, give byte-identical server messages and sums.
3. ``test_committed_vectors_regenerate_bit_for_bit``: ``python -m protocols.vectors check``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
FILES = sorted(VECTORS.glob("*.json"))
NAMES = [p.stem for p in FILES]

# ---------------------------------------------------------------- the spec, re-implemented

LABEL = b"securedream/secagg/v1"
CHANNEL, SELF_MASK, PAIR_MASK, GRAPH, SHARES = 1, 2, 3, 4, 5
PRIME = (1 << 256) + 297


def hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    # salt absent: RFC 5869 uses HashLen zero bytes
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


def info(purpose: int, session: bytes, step: int, sender: int, recipient: int, extra: bytes = b""):
    head = struct.pack(">B16sQII", purpose, session, step, sender, recipient)
    return LABEL + head + struct.pack(">I", len(extra)) + extra


def x25519(private: bytes, public: bytes) -> bytes:
    sk = X25519PrivateKey.from_private_bytes(private)
    return sk.exchange(X25519PublicKey.from_public_bytes(public))


def x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def keystream(key: bytes, nbytes: int) -> bytes:
    return Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(nbytes))


def mask(key: bytes, dim: int, bits: int) -> np.ndarray:
    return np.frombuffer(keystream(key, dim * bits // 8), dtype=f"<u{bits // 8}")


def mask_extra(dim: int, bits: int) -> bytes:
    return struct.pack(">QB", dim, bits)


def lagrange_secret(points: dict[int, int], t: int) -> bytes:
    chosen = sorted(points)[:t]
    total = 0
    for i in chosen:
        num, den = 1, 1
        for j in chosen:
            if j != i:
                num = num * j % PRIME
                den = den * (j - i) % PRIME
        total += points[i] * num * pow(den, -1, PRIME)
    return (total % PRIME).to_bytes(32, "big")


def ring_order(members: list[int], seed: bytes, session: bytes) -> list[int]:
    """Fisher-Yates from the top, each draw by rejection on little-endian 64-bit words of the
    AES-128-CTR stream keyed with HKDF(seed, GRAPH, session, 0, 0, 0)."""
    stream = keystream(hkdf(seed, info(GRAPH, session, 0, 0, 0), 16), 8 * 4 * len(members) + 64)
    words = iter(int.from_bytes(stream[i : i + 8], "little") for i in range(0, len(stream) - 7, 8))
    order = sorted(members)
    for i in range(len(order) - 1, 0, -1):
        bound = i + 1
        limit = (1 << 64) - (1 << 64) % bound
        word = next(words)
        while word >= limit:
            word = next(words)
        r = word % bound
        order[i], order[r] = order[r], order[i]
    return order


def load(name: str) -> dict:
    return json.loads((VECTORS / f"{name}.json").read_text())


def test_every_documented_case_is_committed() -> None:
    from protocols.vectors import CASES

    assert sorted(c.name for c in CASES) == sorted(NAMES)
    kinds = {(load(n)["config"]["graph"], load(n)["config"]["mode"]) for n in NAMES}
    assert kinds == {(g, m) for g in ("complete", "harary") for m in ("semi-honest", "active")}
    assert all(any(s["dropped"] for s in load(n)["steps"]) for n in NAMES), "dropouts in each"


@pytest.mark.parametrize("name", NAMES)
def test_vectors_follow_from_the_specification(name: str) -> None:
    v = load(name)
    cfg = v["config"]
    bits, dim, t = cfg["bits"], cfg["dim"], cfg["threshold"]
    session = bytes.fromhex(v["session_id"])
    modulus = 1 << bits
    clients = {c["id"]: c for c in v["clients"]}
    # graph: ring from the seed, k/2 on either side (or everyone)
    graph = v["graph"]
    members = graph["members"]
    neighbours = {int(u): set(vs) for u, vs in graph["neighbours"].items()}
    if graph["kind"] == "harary":
        ring = ring_order(members, bytes.fromhex(v["graph_seed"]), session)
        assert ring == graph["ring"]
        half, m = cfg["degree"] // 2, len(ring)
        for pos, u in enumerate(ring):
            near = {ring[(pos + d) % m] for d in range(1, half + 1)}
            near |= {ring[(pos - d) % m] for d in range(1, half + 1)}
            assert neighbours[u] == near
    else:
        assert all(neighbours[u] == set(members) - {u} for u in members)
    # channel keys: X25519 + HKDF(CHANNEL, step 0, (min, max)), 32 bytes
    for pair, key in v["channel_keys"].items():
        a, b = map(int, pair.split("-"))
        shared = x25519(bytes.fromhex(clients[a]["channel_private_key"]),
                        bytes.fromhex(clients[b]["channel_public_key"]))  # fmt: skip
        assert hkdf(shared, info(CHANNEL, session, 0, a, b), 32).hex() == key
    # share ciphertexts in the transcript decrypt (AES-256-GCM, spec nonce and AD) to the shares
    shares = {(s["step"], e["owner"], e["holder"]): e for s in v["steps"] for e in s["shares"]}
    opened = 0
    steps = {s["step"]: s for s in v["steps"]}
    for ev in v["transcript"]:
        if ev["direction"] != "up" or ev["type"] not in ("SHARE_KEYS", "MASKED_INPUT"):
            continue
        data = bytes.fromhex(ev["hex"])
        owner = ev["client"]
        # frame: "SD", version u8 = 1, type u8, body length u32 (big-endian), body
        assert data[:4] == b"SD" + bytes([1, 2 if ev["type"] == "SHARE_KEYS" else 3])
        assert int.from_bytes(data[4:8], "big") == len(data) - 8
        pos = 8 + 16  # session id
        if ev["type"] == "MASKED_INPUT":
            step_j, sender, width, length = struct.unpack(">IIBI", data[pos : pos + 13])
            assert (sender, width, length) == (owner, bits, dim)
            vector = data[pos + 13 : pos + 13 + dim * bits // 8]
            entry = next(c for c in steps[step_j]["clients"] if c["id"] == owner)
            assert vector.hex() == entry["masked_input"]
            pos += 13 + len(vector)
        else:
            assert struct.unpack(">I", data[pos : pos + 4])[0] == owner
            pos += 4
        # bundle: step u32, mask_pk 32 B, signature (len u8: 0 or 64, bytes), count u32,
        # then (recipient u32, ciphertext 86 B) in increasing recipient order
        bstep = struct.unpack(">I", data[pos : pos + 4])[0]
        sig_len = data[pos + 36]
        pos += 37 + sig_len
        count = struct.unpack(">I", data[pos : pos + 4])[0]
        pos += 4
        assert pos + count * 90 == len(data)
        for _ in range(count):
            holder = struct.unpack(">I", data[pos : pos + 4])[0]
            ct = data[pos + 4 : pos + 90]
            pos += 90
            a, b = sorted((owner, holder))
            key = bytes.fromhex(v["channel_keys"][f"{a}-{b}"])
            nonce = struct.pack(">QBBH", bstep, 0 if owner < holder else 1, SHARES, 0)
            ad = LABEL + b"/shares" + struct.pack(">16sQII", session, bstep, owner, holder)
            pt = AESGCM(key).decrypt(nonce, ct, ad)
            if bstep not in steps:  # the last upload pipelines keys for an unrecorded step
                assert bstep == max(steps) + 1
                continue
            entry = shares[(bstep, owner, holder)]
            assert pt[:4] == struct.pack(">I", holder + 1) and entry["index"] == holder + 1
            assert pt[4:37].hex() == entry["self_mask_share"]
            assert pt[37:].hex() == entry["mask_key_share"]
            opened += 1
    assert opened > 0
    for step in v["steps"]:
        j = step["step"]
        by_owner: dict[int, dict[str, dict[int, int]]] = {}
        for e in step["shares"]:
            d = by_owner.setdefault(e["owner"], {"self": {}, "key": {}})
            d["self"][e["index"]] = int(e["self_mask_share"], 16)
            d["key"][e["index"]] = int(e["mask_key_share"], 16)
        secrets = {c["id"]: c for c in step["clients"]}
        for u, c in secrets.items():
            # Shamir over p = 2^256 + 297, index = holder + 1, t shares reconstruct the secrets
            assert lagrange_secret(by_owner[u]["self"], t).hex() == c["self_mask_seed"]
            assert lagrange_secret(by_owner[u]["key"], t).hex() == c["mask_private_key"]
            assert x25519_public(bytes.fromhex(c["mask_private_key"])).hex() == c["mask_public_key"]
        total = np.zeros(dim, dtype=object)
        masked_sum = np.zeros(dim, dtype=object)
        for u, c in secrets.items():
            if "masked_input" not in c:
                continue
            x = np.array(c["input"], dtype=object) % modulus
            extra = mask_extra(dim, bits)
            seed = bytes.fromhex(c["self_mask_seed"])
            self_key = hkdf(seed, info(SELF_MASK, session, j, u, u, extra), 16)
            assert self_key.hex() == c["self_mask_key"]
            y = x + mask(self_key, dim, bits).astype(object)
            for v_id in c["pair_peers"]:
                shared = x25519(bytes.fromhex(c["mask_private_key"]),
                                bytes.fromhex(secrets[v_id]["mask_public_key"]))  # fmt: skip
                lo, hi = min(u, v_id), max(u, v_id)
                key = hkdf(shared, info(PAIR_MASK, session, j, lo, hi, mask_extra(dim, bits)), 16)
                assert key.hex() == c["pair_mask_keys"][str(v_id)]
                sign = 1 if u < v_id else -1
                y = y + sign * mask(key, dim, bits).astype(object)
            y %= modulus
            got = np.frombuffer(bytes.fromhex(c["masked_input"]), dtype=f"<u{bits // 8}")
            assert np.array_equal(got.astype(object), y), (name, j, u)
            if u in step["survivors"]:
                masked_sum = masked_sum + y
                total = total + np.array(c["input"], dtype=object)
        # the server's unmasking: remove survivors' self masks (seeds from t shares) and the
        # masks the survivors share with dropped clients (mask keys from t shares)
        unmasked = masked_sum
        for u in step["survivors"]:
            seed = lagrange_secret(by_owner[u]["self"], t)
            key = hkdf(seed, info(SELF_MASK, session, j, u, u, mask_extra(dim, bits)), 16)
            unmasked = unmasked - mask(key, dim, bits).astype(object)
        for d in step["dropped"]:
            sk = lagrange_secret(by_owner[d]["key"], t)
            for w in step["survivors"]:
                if d in secrets[w].get("pair_peers", []):
                    shared = x25519(sk, bytes.fromhex(secrets[w]["mask_public_key"]))
                    lo, hi = min(d, w), max(d, w)
                    k = hkdf(shared, info(PAIR_MASK, session, j, lo, hi, mask_extra(dim, bits)), 16)
                    unmasked = unmasked - (1 if w < d else -1) * mask(k, dim, bits).astype(object)
        unmasked %= modulus
        signed = [int(a) - modulus if a >= modulus // 2 else int(a) for a in unmasked]
        assert signed == step["sum"] == [int(a) for a in total]


@pytest.mark.parametrize("name", NAMES)
def test_transcripts_replay_into_a_fresh_server(name: str) -> None:
    from protocols import SecAggConfig, Server, decode_integer_sum

    v = load(name)
    c = v["config"]
    config = SecAggConfig(
        c["num_clients"],
        graph=c["graph"],
        degree=c["degree"] if c["graph"] == "harary" else None,
        threshold=c["threshold"],
        mode=c["mode"],
        bits=c["bits"],
        dim=c["dim"],
        dropout_rate=c["dropout_rate"],
        corruption_rate=c["corruption_rate"],
    )
    verify = None
    if config.active:
        verify = {e["id"]: bytes.fromhex(e["verify_key"]) for e in v["clients"]}
    server = Server(
        config,
        bytes.fromhex(v["session_id"]),
        verify_keys=verify,
        graph_seed=bytes.fromhex(v["graph_seed"]),
    )
    sums = iter(s["sum"] for s in v["steps"])
    events = v["transcript"]
    i = 0
    while i < len(events):
        ev = events[i]
        i += 1
        if ev["direction"] == "up":
            server.receive(bytes.fromhex(ev["hex"]), sender=ev["client"])
        elif ev["direction"] == "close":
            out = server.close_stage()
            expected = {}
            while i < len(events) and events[i]["direction"] == "down":
                expected.setdefault(events[i]["client"], events[i]["hex"])
                i += 1
            assert {u: m.hex() for u, m in out.messages.items() if u in expected} == expected
            if out.result is not None:
                assert decode_integer_sum(out.result.total, config.bits).tolist() == next(sums)
    assert next(sums, None) is None


def test_committed_vectors_regenerate_bit_for_bit() -> None:
    from protocols.vectors import check

    assert check(VECTORS) == []


def test_deterministic_seam_is_scoped_and_off_by_default() -> None:
    from protocols import keys
    from protocols.vectors import insecure_deterministic_randomness

    assert keys.deterministic_source() is None
    with insecure_deterministic_randomness(bytes(32)):
        a = keys.random_bytes(32)
    with insecure_deterministic_randomness(bytes(32)):
        assert keys.random_bytes(32) == a
    assert keys.deterministic_source() is None
    assert keys.random_bytes(32) != a  # back to the OS CSPRNG
    with pytest.raises(ValueError), insecure_deterministic_randomness(b"short"):
        pass
