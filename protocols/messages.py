"""Typed, immutable protocol messages (frozen dataclasses).

Why immutable: a message is a value that crosses a trust boundary; nothing may change it after it
was validated. Collections are sorted tuples (canonical, hashable); vectors are raw little-endian
bytes with their bit width, exposed as a read-only numpy view by :attr:`MaskedInput.array`.

Client -> server: AdvertiseKeys, ShareKeys, MaskedInput, ConsistencySignature, UnmaskShares.
Server -> client: Roster, ForwardShares, ConsistencyRequest, UnmaskRequest, Abort.

A :class:`KeyBundle` is what a client contributes to one aggregation's key set-up: a *fresh* mask
public key (signed in active mode) and its Shamir shares of the fresh mask private key and
self-mask seed, encrypted to each neighbour. The bundle for step 0 travels in ShareKeys; the bundle
for step j + 1 rides along with the masked input of step j (pipelining).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


class MessageType(enum.IntEnum):
    """Wire tags; the state machine's events carry the same names."""

    ADVERTISE_KEYS = 1
    SHARE_KEYS = 2
    MASKED_INPUT = 3
    CONSISTENCY_SIGNATURE = 4
    UNMASK_SHARES = 5
    ROSTER = 17
    FORWARD_SHARES = 18
    CONSISTENCY_REQUEST = 19
    UNMASK_REQUEST = 20
    ABORT = 21


@dataclass(frozen=True)
class PeerKey:
    """A neighbour's advertised session channel key (and its signature in active mode)."""

    client: int
    channel_pk: bytes
    signature: bytes


@dataclass(frozen=True)
class KeyBundle:
    """Fresh per-aggregation mask key and encrypted shares, from one client."""

    step: int
    mask_pk: bytes
    signature: bytes
    ciphertexts: tuple[tuple[int, bytes], ...]  # (recipient, AES-GCM ciphertext), sorted


@dataclass(frozen=True)
class ForwardedBundle:
    """The part of a sender's KeyBundle that the server forwards to one recipient."""

    sender: int
    mask_pk: bytes
    signature: bytes
    ciphertext: bytes


# ----------------------------------------------------------------- client -> server


@dataclass(frozen=True)
class AdvertiseKeys:
    """Round 0: the client's session channel public key (X25519)."""

    session: bytes
    sender: int
    channel_pk: bytes
    signature: bytes

    TYPE = MessageType.ADVERTISE_KEYS


@dataclass(frozen=True)
class ShareKeys:
    """Round 1 of the first aggregation: mask key and encrypted shares for step 0."""

    session: bytes
    sender: int
    bundle: KeyBundle

    TYPE = MessageType.SHARE_KEYS


@dataclass(frozen=True)
class MaskedInput:
    """Round 2: y_u = x_u + PRG(b_u) + sum_v +-PRG(s_uv), plus the key bundle of step + 1."""

    session: bytes
    step: int
    sender: int
    bits: int
    vector: bytes
    next_bundle: KeyBundle

    TYPE = MessageType.MASKED_INPUT

    @property
    def array(self) -> np.ndarray:
        """Zero-copy, read-only view of the masked vector."""
        return np.frombuffer(self.vector, dtype="<u4" if self.bits == 32 else "<u8")

    @property
    def dim(self) -> int:
        """Vector length."""
        return len(self.vector) // (self.bits // 8)


@dataclass(frozen=True)
class ConsistencySignature:
    """Round 3 (active mode): the client's signature over the survivor set."""

    session: bytes
    step: int
    sender: int
    signature: bytes

    TYPE = MessageType.CONSISTENCY_SIGNATURE


@dataclass(frozen=True)
class UnmaskShares:
    """Round 4: shares of survivors' self-mask seeds and of dropped clients' mask keys."""

    session: bytes
    step: int
    sender: int
    self_shares: tuple[tuple[int, bytes], ...]  # (owner, 33-byte share), sorted
    key_shares: tuple[tuple[int, bytes], ...]

    TYPE = MessageType.UNMASK_SHARES


# ----------------------------------------------------------------- server -> client


@dataclass(frozen=True)
class Roster:
    """End of round 0: who takes part, the graph seed, and the neighbours' channel keys."""

    session: bytes
    members: tuple[int, ...]
    graph_seed: bytes
    peers: tuple[PeerKey, ...]

    TYPE = MessageType.ROSTER


@dataclass(frozen=True)
class ForwardShares:
    """End of round 1 (step 0): the neighbours' bundles addressed to this client."""

    session: bytes
    step: int
    bundles: tuple[ForwardedBundle, ...]

    TYPE = MessageType.FORWARD_SHARES


@dataclass(frozen=True)
class ConsistencyRequest:
    """End of round 2 (active mode): the survivor set to be signed."""

    session: bytes
    step: int
    survivors: tuple[int, ...]

    TYPE = MessageType.CONSISTENCY_REQUEST


@dataclass(frozen=True)
class UnmaskRequest:
    """Start of round 4: who survived and who dropped, the consistency signatures (active mode)
    and the neighbours' key bundles for the next aggregation (pipelining)."""

    session: bytes
    step: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...]
    next_bundles: tuple[ForwardedBundle, ...]

    TYPE = MessageType.UNMASK_REQUEST


@dataclass(frozen=True)
class Abort:
    """The server gives up on the session (e.g. fewer than t survivors)."""

    session: bytes
    step: int
    reason: str

    TYPE = MessageType.ABORT


ClientMessage = AdvertiseKeys | ShareKeys | MaskedInput | ConsistencySignature | UnmaskShares
ServerMessage = Roster | ForwardShares | ConsistencyRequest | UnmaskRequest | Abort
Message = ClientMessage | ServerMessage
