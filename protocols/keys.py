"""Key agreement, key derivation, authenticated encryption and signatures.

Why one small module: every secret in the protocol comes from here, so the domain separation rules
can be read (and audited) in one place. All primitives are pyca/cryptography's; randomness is
``os.urandom`` only.

Domain separation: every HKDF call binds, in its ``info``, a fixed protocol label, the *purpose*
(channel key, self mask, pair mask, graph), the 16-byte session id, the aggregation index, the
sender and the recipient, and purpose-specific extra bytes (vector length and bit width for
masks). Fields are fixed-width or length-prefixed, so two different tuples never give the same
``info``.
"""

from __future__ import annotations

import enum
import hmac
import os
import struct
from collections.abc import Callable
from contextvars import ContextVar

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocols.errors import AuthenticationError, ConfigError, InconsistentMessage

PROTOCOL_LABEL = b"securedream/secagg/v1"
SESSION_ID_BYTES = 16
PUBLIC_KEY_BYTES = 32
PRIVATE_KEY_BYTES = 32
SEED_BYTES = 32
SIGNATURE_BYTES = 64
AEAD_TAG_BYTES = 16
MASK_KEY_BYTES = 16  # AES-128-CTR


class Purpose(enum.IntEnum):
    """What a derived key is for; part of every HKDF ``info`` and AEAD nonce."""

    CHANNEL = 1
    SELF_MASK = 2
    PAIR_MASK = 3
    GRAPH = 4
    SHARES = 5


#: The deterministic-test seam. ``None`` (always, in production) means ``os.urandom``. Only
#: :func:`protocols.vectors.insecure_deterministic_randomness` sets it, for the extent of a ``with``
#: block in the current context (thread / task), to regenerate the published test vectors.
_TEST_ENTROPY: ContextVar[Callable[[int], bytes] | None] = ContextVar(
    "protocols_test_entropy", default=None
)


def deterministic_source() -> Callable[[int], bytes] | None:
    """The deterministic source in force (test vectors only), or None: the OS CSPRNG."""
    return _TEST_ENTROPY.get()


def random_bytes(n: int) -> bytes:
    """Secret randomness: ``os.urandom`` (the OS CSPRNG), never a userspace generator."""
    source = _TEST_ENTROPY.get()
    return os.urandom(n) if source is None else source(n)


def hkdf_sha256(ikm: bytes, *, salt: bytes | None, info: bytes, length: int) -> bytes:
    """Plain HKDF-SHA256 (RFC 5869); tested against the RFC's vectors."""
    if not 1 <= length <= 255 * 32:
        raise ConfigError(f"HKDF length must be in [1, 8160], got {length}")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def kdf_info(
    purpose: Purpose, session: bytes, step: int, sender: int, recipient: int, extra: bytes = b""
) -> bytes:
    """Injective encoding of the derivation context (fixed widths plus a length-prefixed tail)."""
    if len(session) != SESSION_ID_BYTES:
        raise ConfigError(f"session id must be {SESSION_ID_BYTES} bytes, got {len(session)}")
    if not 0 <= step < 1 << 64:
        raise ConfigError(f"step must be in [0, 2^64), got {step}")
    for name, value in (("sender", sender), ("recipient", recipient)):
        if not 0 <= value < 1 << 32:
            raise ConfigError(f"{name} must be in [0, 2^32), got {value}")
    return (
        PROTOCOL_LABEL
        + struct.pack(">B16sQII", int(purpose), session, step, sender, recipient)
        + struct.pack(">I", len(extra))
        + extra
    )


def derive_key(
    ikm: bytes,
    purpose: Purpose,
    session: bytes,
    step: int,
    sender: int,
    recipient: int,
    *,
    length: int = MASK_KEY_BYTES,
    extra: bytes = b"",
) -> bytes:
    """HKDF-SHA256 of ``ikm`` bound to (purpose, session, step, sender, recipient, extra)."""
    return hkdf_sha256(
        ikm,
        salt=None,
        info=kdf_info(purpose, session, step, sender, recipient, extra),
        length=length,
    )


def mask_extra(length: int, bits: int) -> bytes:
    """Extra derivation context for mask streams: vector length and element width."""
    return struct.pack(">QB", length, bits)


def self_mask_key(
    seed: bytes, session: bytes, step: int, owner: int, length: int, bits: int
) -> bytes:
    """AES key of the self mask PRG(b_u) for one aggregation."""
    return derive_key(
        seed, Purpose.SELF_MASK, session, step, owner, owner, extra=mask_extra(length, bits)
    )


def pair_mask_key(
    shared: bytes, session: bytes, step: int, a: int, b: int, length: int, bits: int
) -> bytes:
    """AES key of the pairwise mask between ``a`` and ``b`` (order-independent)."""
    lo, hi = (a, b) if a < b else (b, a)
    return derive_key(
        shared, Purpose.PAIR_MASK, session, step, lo, hi, extra=mask_extra(length, bits)
    )


# --------------------------------------------------------------------------- X25519


def generate_x25519() -> tuple[X25519PrivateKey, bytes]:
    """Fresh X25519 key pair (private key object, raw 32-byte public key)."""
    source = _TEST_ENTROPY.get()
    if source is None:
        sk = X25519PrivateKey.generate()
    else:
        sk = X25519PrivateKey.from_private_bytes(source(PRIVATE_KEY_BYTES))
    return sk, public_bytes(sk)


def public_bytes(sk: X25519PrivateKey) -> bytes:
    """Raw 32-byte encoding of the public key of ``sk``."""
    return sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(sk: X25519PrivateKey) -> bytes:
    """Raw 32-byte encoding of ``sk`` (what gets Shamir-shared)."""
    return sk.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def x25519_from_private(raw: bytes) -> X25519PrivateKey:
    """Rebuild an X25519 private key from its raw bytes (after Shamir reconstruction)."""
    if len(raw) != PRIVATE_KEY_BYTES:
        raise InconsistentMessage(f"X25519 private key must be 32 bytes, got {len(raw)}")
    return X25519PrivateKey.from_private_bytes(raw)


def x25519_shared(sk: X25519PrivateKey, peer_public: bytes) -> bytes:
    """Raw X25519 shared secret; rejects malformed and low-order peer keys."""
    if len(peer_public) != PUBLIC_KEY_BYTES:
        raise InconsistentMessage(
            f"X25519 public key must be {PUBLIC_KEY_BYTES} bytes, got {len(peer_public)}"
        )
    try:
        return sk.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # all-zero shared secret: low-order point
        raise InconsistentMessage(f"peer public key is invalid ({exc})") from None


def channel_key(sk: X25519PrivateKey, peer_public: bytes, session: bytes, a: int, b: int) -> bytes:
    """AES-256-GCM key shared by clients ``a`` and ``b`` for the whole session."""
    lo, hi = (a, b) if a < b else (b, a)
    shared = x25519_shared(sk, peer_public)
    return derive_key(shared, Purpose.CHANNEL, session, 0, lo, hi, length=32)


# --------------------------------------------------------------------------- AEAD


def share_nonce(step: int, sender: int, recipient: int) -> bytes:
    """96-bit nonce, unique per (channel key, step, direction): one ciphertext per step and way."""
    direction = 0 if sender < recipient else 1
    return struct.pack(">QBBH", step, direction, int(Purpose.SHARES), 0)


def share_ad(session: bytes, step: int, sender: int, recipient: int) -> bytes:
    """Associated data binding a share ciphertext to its session, step, sender and recipient."""
    return PROTOCOL_LABEL + b"/shares" + struct.pack(">16sQII", session, step, sender, recipient)


def seal_shares(
    key: bytes, session: bytes, step: int, sender: int, recipient: int, plaintext: bytes
) -> bytes:
    """Encrypt a share bundle from ``sender`` to ``recipient`` for aggregation ``step``."""
    return AESGCM(key).encrypt(
        share_nonce(step, sender, recipient), plaintext, share_ad(session, step, sender, recipient)
    )


def open_shares(
    key: bytes, session: bytes, step: int, sender: int, recipient: int, ciphertext: bytes
) -> bytes:
    """Decrypt a share bundle; any tampering, replay or misaddressing raises AuthenticationError."""
    try:
        return AESGCM(key).decrypt(
            share_nonce(step, sender, recipient),
            ciphertext,
            share_ad(session, step, sender, recipient),
        )
    except InvalidTag:
        raise AuthenticationError(
            f"share ciphertext from client {sender} to client {recipient} for step {step} "
            "failed authentication (tampered, replayed or misaddressed)"
        ) from None


# --------------------------------------------------------------------------- Ed25519


def generate_signing_key() -> tuple[Ed25519PrivateKey, bytes]:
    """Fresh Ed25519 signing key and its raw 32-byte verification key."""
    source = _TEST_ENTROPY.get()
    if source is None:
        sk = Ed25519PrivateKey.generate()
    else:
        sk = Ed25519PrivateKey.from_private_bytes(source(32))
    vk = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sk, vk


def sign(sk: Ed25519PrivateKey, payload: bytes) -> bytes:
    """Ed25519 signature (64 bytes)."""
    return sk.sign(payload)


def verify(verify_key: bytes, signature: bytes, payload: bytes, *, what: str) -> None:
    """Verify an Ed25519 signature; ``what`` names the signed object in the error."""
    if len(signature) != SIGNATURE_BYTES:
        raise AuthenticationError(f"{what}: signature must be 64 bytes, got {len(signature)}")
    try:
        Ed25519PublicKey.from_public_bytes(verify_key).verify(signature, payload)
    except (InvalidSignature, ValueError):
        raise AuthenticationError(f"{what}: signature does not verify") from None


def advertise_payload(session: bytes, sender: int, channel_pk: bytes) -> bytes:
    """Bytes signed by a client when it advertises its session channel key."""
    return PROTOCOL_LABEL + b"/advertise" + struct.pack(">16sI", session, sender) + channel_pk


def mask_key_payload(session: bytes, step: int, sender: int, mask_pk: bytes) -> bytes:
    """Bytes signed by a client for its fresh per-aggregation mask public key."""
    return PROTOCOL_LABEL + b"/mask-key" + struct.pack(">16sQI", session, step, sender) + mask_pk


def consistency_payload(session: bytes, step: int, survivors: tuple[int, ...]) -> bytes:
    """Bytes signed in the consistency check: the survivor set of one aggregation."""
    return (
        PROTOCOL_LABEL
        + b"/consistency"
        + struct.pack(f">16sQI{len(survivors)}I", session, step, len(survivors), *survivors)
    )


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare secrets without timing leaks."""
    return hmac.compare_digest(a, b)
