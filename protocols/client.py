"""Sans-IO client state machine: takes wire bytes, returns wire bytes. No sockets, threads, clocks.

Why sans-IO: the same object runs under the in-process simulator, a Flower ClientApp or a test that
replays hostile messages; the transport only moves bytes.

Rules the client enforces (they are what makes it *honest*):

* every received message is fully validated -- session, transition table, step, sender set,
  signatures, AEAD -- before any attribute changes; a rejected message leaves the client as it was;
* fresh mask key pair and self-mask seed per aggregation (see docs/protocol.md, "Sessions");
* it never reveals, for one aggregation and one peer, both the self-mask share and the mask-key
  share, and it refuses to treat a peer that was declared dropped as a survivor later;
* fewer than t holders where t are needed makes it abort (:class:`TooFewSurvivors`).

Masks do not depend on the data: once a client holds an aggregation's pairwise material (after the
share stage for the first one, after the previous unmask for the others) it can expand the whole
mask -- self mask plus every pairwise mask -- and draw the next aggregation's key bundle before its
input exists. :meth:`Client.prepare_input` does that work (a transport may run it in a worker
thread, overlapped with the computation of the input); :meth:`Client.submit_input` then only
encodes and adds. The prepared mask is bound to (step, length, bits), used at most once and
forgotten with every other secret.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocols import keys, shamir, wire
from protocols.encoding import encode, encode_integers, uint_dtype
from protocols.errors import (
    ClientDropped,
    ConfigError,
    DoubleRevealRefused,
    EncodingError,
    InconsistentMessage,
    LocalProtocolError,
    MalformedMessage,
    ReplayedMessage,
    TooFewSurvivors,
    UnexpectedMessage,
    WrongSession,
)
from protocols.graph import build_graph
from protocols.messages import (
    Abort,
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    ForwardedBundle,
    ForwardShares,
    KeyBundle,
    MaskedInput,
    MessageType,
    Roster,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
)
from protocols.params import SecAggConfig
from protocols.prg import expand_into
from protocols.state import Local, Mode, Role, State, allowed_events, next_state

SELF = "self-mask"
KEY = "mask-key"
_SERVER_TYPES = frozenset(
    {
        MessageType.ROSTER,
        MessageType.FORWARD_SHARES,
        MessageType.CONSISTENCY_REQUEST,
        MessageType.UNMASK_REQUEST,
        MessageType.ABORT,
    }
)


@dataclass(frozen=True)
class _StepSecrets:
    """What this client generated for one aggregation."""

    mask_sk: X25519PrivateKey
    seed: bytes
    own_self_share: int
    own_key_share: int
    recipients: frozenset[int]


@dataclass(frozen=True)
class _Prepared:
    """Work done ahead of :meth:`Client.submit_input` for one aggregation (see prepare_input)."""

    step: int
    dim: int
    mask: np.ndarray | None  # self mask + signed pairwise masks in Z_{2^b}, length dim
    peers: frozenset[int]  # the pairwise material the mask was built from
    bundle: KeyBundle | None  # the next aggregation's key bundle, and its secrets
    next_secrets: _StepSecrets | None
    recipients: tuple[int, ...]


@dataclass(frozen=True)
class _PeerMaterial:
    """What a neighbour sent this client for one aggregation (decrypted)."""

    shared: bytes  # X25519(own mask sk, peer mask pk)
    self_share: int
    key_share: int


class Client:
    """One party of a secure-aggregation session.

    ``verify_keys`` (active mode) are the Ed25519 verification keys of all clients, obtained out of
    band (PKI); ``signing_key`` is this client's.
    """

    def __init__(
        self,
        config: SecAggConfig,
        client_id: int,
        session_id: bytes,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        verify_keys: Mapping[int, bytes] | None = None,
    ) -> None:
        if not isinstance(client_id, int) or not 0 <= client_id < config.num_clients:
            raise ConfigError(
                f"client_id must be an integer in [0, {config.num_clients - 1}], got {client_id!r}"
            )
        if not isinstance(session_id, bytes) or len(session_id) != keys.SESSION_ID_BYTES:
            raise ConfigError(f"session_id must be {keys.SESSION_ID_BYTES} bytes")
        if config.active:
            if signing_key is None or verify_keys is None:
                raise ConfigError("active mode needs signing_key and verify_keys")
            missing = [i for i in range(config.num_clients) if len(verify_keys.get(i, b"")) != 32]
            if missing:
                raise ConfigError(
                    f"verify_keys must hold a 32-byte key per client; bad: {missing[:5]}"
                )
        self.config = config
        self.id = client_id
        self.session = session_id
        self._mode = Mode.ACTIVE if config.active else Mode.SEMI_HONEST
        self._signing_key = signing_key
        self._verify_keys = dict(verify_keys or {})
        self._limits = wire.WireLimits.for_config(config.num_clients, config.max_dim, config.bits)
        self._state = State.IDLE
        self._step = 0
        self._handled: set[tuple[MessageType, int]] = set()
        self._channel_sk: X25519PrivateKey | None = None
        self._members: tuple[int, ...] = ()
        self._neighbours: frozenset[int] = frozenset()
        self._channel_keys: dict[int, bytes] = {}
        self._declared_dropped: dict[int, int] = {}
        self._secrets: dict[int, _StepSecrets] = {}
        self._peers: dict[int, dict[int, _PeerMaterial]] = {}
        self._revealed: dict[tuple[int, int], str] = {}
        self._signed: dict[int, tuple[int, ...]] = {}
        self._prepared: _Prepared | None = None

    # ------------------------------------------------------------------ introspection

    @property
    def state(self) -> State:
        """Current state (see :mod:`protocols.state`)."""
        return self._state

    @property
    def step(self) -> int:
        """Index of the aggregation in progress."""
        return self._step

    @property
    def neighbours(self) -> frozenset[int]:
        """Neighbours in the sharing graph (known after the roster)."""
        return self._neighbours

    @property
    def declared_dropped(self) -> Mapping[int, int]:
        """Peers the server declared dropped, with the step at which it did."""
        return dict(self._declared_dropped)

    @property
    def revealed(self) -> Mapping[tuple[int, int], str]:
        """(step, owner) -> kind of share this client revealed (audit trail)."""
        return dict(self._revealed)

    # ------------------------------------------------------------------ persistence

    def to_bytes(self) -> bytes:
        """Everything this client holds (secrets included: store it like a private key), as
        versioned canonical bytes (:mod:`protocols.client_state`); both modes."""
        from protocols.client_state import encode_client

        return encode_client(self)

    @classmethod
    def from_bytes(cls, config: SecAggConfig, data: bytes) -> Client:
        """Rebuild a client saved with :meth:`to_bytes` under the same ``config``; anything else
        raises :class:`protocols.InvalidState` (never unpickles, never evaluates)."""
        from protocols.client_state import decode_client

        return decode_client(config, data)

    # ------------------------------------------------------------------ transitions

    def _target(self, event: MessageType | Local) -> State | None:
        return next_state(Role.CLIENT, self._mode, self._state, event)

    def _local_target(self, event: MessageType | Local, what: str) -> State:
        target = self._target(event)
        if target is None:
            if self._state is State.DROPPED:
                raise ClientDropped(f"client {self.id} was declared dropped; cannot {what}")
            raise LocalProtocolError(f"cannot {what} in state {self._state.value}")
        return target

    def _abort(self, message: str) -> TooFewSurvivors:
        self._state = State.ABORTED
        self._wipe()
        return TooFewSurvivors(f"client {self.id}: {message}")

    def _wipe(self) -> None:
        self._secrets.clear()
        self._peers.clear()
        self._prepared = None

    def close(self) -> None:
        """Leave the session and forget every secret."""
        if self._state not in (State.FINISHED, State.DROPPED, State.ABORTED):
            self._state = self._local_target(Local.CLOSE, "close")
        self._wipe()
        self._channel_keys.clear()
        self._channel_sk = None

    def start(self) -> bytes:
        """Round 0: advertise the session channel key."""
        target = self._local_target(MessageType.ADVERTISE_KEYS, "advertise keys")
        sk, pk = keys.generate_x25519()
        signature = b""
        if self._signing_key is not None and self.config.active:
            signature = keys.sign(
                self._signing_key, keys.advertise_payload(self.session, self.id, pk)
            )
        out = wire.encode(AdvertiseKeys(self.session, self.id, pk, signature))
        self._channel_sk = sk
        self._state = target
        return out

    def receive(self, data: bytes) -> list[bytes]:
        """Handle one server message; returns the replies to send (possibly none)."""
        msg = wire.decode(data, self._limits)
        if msg.TYPE not in _SERVER_TYPES:
            raise UnexpectedMessage(f"client received a client message ({msg.TYPE.name})")
        if msg.session != self.session:
            raise WrongSession(f"{msg.TYPE.name} belongs to another session")
        if isinstance(msg, Abort):
            if self._target(MessageType.ABORT) is None:
                raise UnexpectedMessage(f"Abort in terminal state {self._state.value}")
            self._state = State.ABORTED
            self._wipe()
            return []
        target = self._target(msg.TYPE)
        step = getattr(msg, "step", 0)
        if target is None:
            raise self._out_of_order(msg.TYPE, step)
        if step != self._step:
            raise self._out_of_order(msg.TYPE, step)
        handler = {
            MessageType.ROSTER: self._on_roster,
            MessageType.FORWARD_SHARES: self._on_forward,
            MessageType.CONSISTENCY_REQUEST: self._on_consistency,
            MessageType.UNMASK_REQUEST: self._on_unmask,
        }[msg.TYPE]
        replies = handler(msg, target)
        self._handled.add((msg.TYPE, step))
        return replies

    def _out_of_order(self, mtype: MessageType, step: int) -> Exception:
        if step < self._step or (mtype, step) in self._handled:
            return ReplayedMessage(
                f"{mtype.name} for step {step} was already handled (current step {self._step})"
            )
        expected = ", ".join(e.name for e in allowed_events(Role.CLIENT, self._mode, self._state))
        return UnexpectedMessage(
            f"{mtype.name} for step {step} not allowed in state {self._state.value} at step "
            f"{self._step} (allowed: {expected or 'nothing'})"
        )

    # ------------------------------------------------------------------ helpers

    def _make_bundle(
        self, step: int, recipients: list[int], channel_keys: Mapping[int, bytes]
    ) -> tuple[KeyBundle, _StepSecrets]:
        t = self.config.t
        if len(recipients) + 1 < t:
            raise self._abort(
                f"only {len(recipients) + 1} share holders for step {step}, threshold is {t}"
            )
        mask_sk, mask_pk = keys.generate_x25519()
        seed = keys.random_bytes(keys.SEED_BYTES)
        indices = sorted([v + 1 for v in recipients] + [self.id + 1])
        self_shares = shamir.split(seed, t, indices)
        key_shares = shamir.split(keys.private_bytes(mask_sk), t, indices)
        cts = []
        for v in sorted(recipients):
            pt = (
                struct.pack(">I", v + 1)
                + shamir.share_to_bytes(self_shares[v + 1])
                + shamir.share_to_bytes(key_shares[v + 1])
            )
            cts.append((v, keys.seal_shares(channel_keys[v], self.session, step, self.id, v, pt)))
        signature = b""
        if self.config.active and self._signing_key is not None:
            signature = keys.sign(
                self._signing_key, keys.mask_key_payload(self.session, step, self.id, mask_pk)
            )
        secrets = _StepSecrets(
            mask_sk,
            seed,
            self_shares[self.id + 1],
            key_shares[self.id + 1],
            frozenset(recipients),
        )
        return KeyBundle(step, mask_pk, signature, tuple(cts)), secrets

    def _check_signature(self, signer: int, signature: bytes, payload: bytes, what: str) -> None:
        if self.config.active:
            keys.verify(self._verify_keys[signer], signature, payload, what=what)
        elif signature:
            raise InconsistentMessage(f"{what}: unexpected signature in semi-honest mode")

    def _open_bundles(
        self,
        step: int,
        bundles: tuple[ForwardedBundle, ...],
        secrets: _StepSecrets,
        allowed: frozenset[int] | None = None,
    ) -> dict[int, _PeerMaterial]:
        out: dict[int, _PeerMaterial] = {}
        for fb in bundles:
            v = fb.sender
            if v not in self._neighbours:
                raise InconsistentMessage(f"step {step}: bundle from client {v}, not a neighbour")
            if v in self._declared_dropped:
                raise InconsistentMessage(
                    f"step {step}: bundle from client {v}, declared dropped at step "
                    f"{self._declared_dropped[v]}"
                )
            if allowed is not None and v not in allowed:
                raise InconsistentMessage(f"step {step}: bundle from client {v}, not a survivor")
            if v not in secrets.recipients:
                raise InconsistentMessage(
                    f"step {step}: bundle from client {v}, which did not receive this client's "
                    "shares (pairwise masks would not cancel)"
                )
            self._check_signature(
                v,
                fb.signature,
                keys.mask_key_payload(self.session, step, v, fb.mask_pk),
                f"mask key of client {v} for step {step}",
            )
            pt = keys.open_shares(
                self._channel_keys[v], self.session, step, v, self.id, fb.ciphertext
            )
            if len(pt) != wire.SHARE_PLAINTEXT_BYTES:
                raise MalformedMessage(f"step {step}: share plaintext from {v} has bad length")
            if int.from_bytes(pt[:4], "big") != self.id + 1:
                raise InconsistentMessage(f"step {step}: shares from {v} carry another index")
            self_share = shamir.share_from_bytes(pt[4 : 4 + shamir.SHARE_BYTES])
            key_share = shamir.share_from_bytes(pt[4 + shamir.SHARE_BYTES :])
            shared = keys.x25519_shared(secrets.mask_sk, fb.mask_pk)
            out[v] = _PeerMaterial(shared, self_share, key_share)
        return out

    def _check_survivors(self, step: int, survivors: tuple[int, ...]) -> bool:
        """Validate a survivor list; False means this client itself was declared dropped."""
        members = set(self._members)
        stray = [v for v in survivors if v not in members]
        if stray:
            raise InconsistentMessage(f"step {step}: survivors {stray[:5]} are not session members")
        back = [v for v in survivors if v in self._declared_dropped]
        if back:
            raise DoubleRevealRefused(
                f"step {step}: clients {back[:5]} were declared dropped earlier (client "
                f"{back[0]} at step {self._declared_dropped[back[0]]}) and cannot survive now"
            )
        return self.id in survivors

    def _check_enough(self, step: int, survivors: tuple[int, ...]) -> None:
        t = self.config.t
        if len(survivors) < t:
            raise self._abort(f"step {step}: {len(survivors)} survivors, threshold is {t}")
        near = len((self._neighbours | {self.id}) & set(survivors))
        if near < t:
            raise self._abort(
                f"step {step}: {near} survivors in this client's neighbourhood, threshold is {t}"
            )

    # ------------------------------------------------------------------ handlers

    def _on_roster(self, m: Roster, target: State) -> list[bytes]:
        if self.id not in m.members:
            raise InconsistentMessage("roster does not include this client")
        graph = build_graph(self.config.graph, m.members, self.config.k, m.graph_seed, self.session)
        neighbours = graph.neighbours(self.id)
        got = tuple(p.client for p in m.peers)
        if got != tuple(sorted(neighbours)):
            raise InconsistentMessage(
                f"roster peers {list(got)[:8]} differ from this client's neighbours "
                f"{sorted(neighbours)[:8]}"
            )
        assert self._channel_sk is not None
        channel_keys = {}
        for p in m.peers:
            self._check_signature(
                p.client,
                p.signature,
                keys.advertise_payload(self.session, p.client, p.channel_pk),
                f"channel key of client {p.client}",
            )
            channel_keys[p.client] = keys.channel_key(
                self._channel_sk, p.channel_pk, self.session, self.id, p.client
            )
        t = self.config.t
        if len(m.members) < t or len(neighbours) + 1 < t:
            raise self._abort(
                f"roster has {len(m.members)} members and {len(neighbours) + 1} holders for this "
                f"client, threshold is {t}"
            )
        self._members, self._neighbours, self._channel_keys = m.members, neighbours, channel_keys
        bundle, secrets = self._make_bundle(0, sorted(neighbours), channel_keys)
        self._secrets[0] = secrets
        self._state = target
        return [wire.encode(ShareKeys(self.session, self.id, bundle))]

    def _on_forward(self, m: ForwardShares, target: State) -> list[bytes]:
        peers = self._open_bundles(0, m.bundles, self._secrets[0])
        if len(peers) + 1 < self.config.t:
            raise self._abort(
                f"step 0: shares from {len(peers)} neighbours, threshold is {self.config.t}"
            )
        self._peers[0] = peers
        self._state = target
        return []

    def _add_mask(self, y: np.ndarray, step: int) -> None:
        """Add this client's mask for ``step`` into ``y`` (uint vector of the session's bits)."""
        dim, bits, chunk = y.shape[0], self.config.bits, self.config.chunk_bytes
        seed = self._secrets[step].seed
        expand_into(y, keys.self_mask_key(seed, self.session, step, self.id, dim, bits), 1, chunk)
        for v, pm in self._peers[step].items():
            key = keys.pair_mask_key(pm.shared, self.session, step, self.id, v, dim, bits)
            expand_into(y, key, 1 if self.id < v else -1, chunk)

    def mask_vector(self, dim: int) -> np.ndarray:
        """The mask this client adds to a length-``dim`` input of the current aggregation.

        Computed on demand (never cached): the reference :meth:`prepare_input` is tested against.
        Like every secret it must not leave the client.
        """
        self._check_prepare(dim)
        mask = np.zeros(dim, dtype=uint_dtype(self.config.bits))
        self._add_mask(mask, self._step)
        return mask

    def _check_prepare(self, dim: int) -> None:
        if self._target(MessageType.MASKED_INPUT) is None:
            raise LocalProtocolError(f"cannot prepare an input in state {self._state.value}")
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= self.config.max_dim:
            raise EncodingError(f"input length must be in [1, {self.config.max_dim}], got {dim!r}")
        if self.config.dim is not None and dim != self.config.dim:
            raise EncodingError(f"input length must be dim={self.config.dim}, got {dim}")
        if self._step not in self._peers:
            raise LocalProtocolError(f"no pairwise material for step {self._step} yet")

    def prepare_input(self, dim: int) -> None:
        """Do the data-independent work of the next :meth:`submit_input` ahead of time.

        Expands the current aggregation's mask for a length-``dim`` input (self mask and every
        pairwise mask) and draws the next aggregation's key bundle (fresh X25519 key and self-mask
        seed, Shamir shares, sealed for each neighbour). ``submit_input`` uses them when the step,
        the length and the pairwise material still match, and computes on demand otherwise, so the
        wire bytes are the ones an unprepared client would send. Preparing again replaces the
        earlier work; nothing prepared outlives the step it was made for.

        Thread use: a transport may call this in a worker thread while it computes the input, as
        long as it does not drive this client concurrently (no ``receive``/``submit_input`` until
        the call returns). It changes no protocol state: a failure here (too few holders) is left
        for ``submit_input`` to raise.
        """
        self._check_prepare(dim)
        step = self._step
        peers = self._peers[step]
        mask: np.ndarray | None = None
        if len(peers) + 1 >= self.config.t:
            mask = np.zeros(dim, dtype=uint_dtype(self.config.bits))
            self._add_mask(mask, step)
        recipients = tuple(sorted(self._neighbours - self._declared_dropped.keys()))
        bundle, next_secrets = None, None
        if len(recipients) + 1 >= self.config.t:
            bundle, next_secrets = self._make_bundle(step + 1, list(recipients), self._channel_keys)
        self._prepared = _Prepared(
            step, dim, mask, frozenset(peers), bundle, next_secrets, recipients
        )

    @property
    def prepared(self) -> tuple[int, int] | None:
        """(step, length) of the work :meth:`prepare_input` holds for the next submission."""
        p = self._prepared
        return None if p is None or p.step != self._step else (p.step, p.dim)

    def submit_input(self, vector: object, weight: float = 1.0) -> bytes:
        """Round 2: mask this client's contribution for the current aggregation.

        Float vectors are clipped, weighted and stochastically rounded; integer vectors are taken
        as already encoded (``weight`` must then be 1). Returns the MaskedInput wire bytes, which
        also carry this client's key bundle for the next aggregation.
        """
        target = self._local_target(MessageType.MASKED_INPUT, "submit an input")
        arr = np.asarray(vector)
        params = self.config.encoding
        if arr.dtype.kind == "f":
            y = encode(arr, params, weight)
        elif arr.dtype.kind in "iu":
            if weight != 1.0:
                raise EncodingError("weight must be 1 for pre-encoded integer inputs")
            y = encode_integers(arr, params)
        else:
            raise EncodingError(f"input must be a float or integer vector, got dtype {arr.dtype}")
        dim = y.shape[0]
        if dim < 1 or dim > self.config.max_dim:
            raise EncodingError(f"input length must be in [1, {self.config.max_dim}], got {dim}")
        if self.config.dim is not None and dim != self.config.dim:
            raise EncodingError(f"input length must be dim={self.config.dim}, got {dim}")
        step, bits = self._step, self.config.bits
        peers = self._peers[step]
        if len(peers) + 1 < self.config.t:
            raise self._abort(
                f"step {step}: shares from {len(peers)} neighbours, threshold is {self.config.t}"
            )
        y = np.ascontiguousarray(y, dtype=uint_dtype(bits))
        if not y.flags.writeable:
            y = y.copy()
        prepared, self._prepared = self._prepared, None  # a prepared mask is used at most once
        if prepared is not None and prepared.step != step:
            prepared = None
        if prepared is not None and prepared.mask is not None and prepared.dim == dim:
            if prepared.peers != frozenset(peers):
                raise LocalProtocolError(f"step {step}: prepared mask built from other peers")
            np.add(y, prepared.mask, out=y)
        else:
            self._add_mask(y, step)
        recipients = sorted(self._neighbours - self._declared_dropped.keys())
        if (
            prepared is not None
            and prepared.bundle is not None
            and prepared.next_secrets is not None
            and prepared.recipients == tuple(recipients)
        ):
            bundle, next_secrets = prepared.bundle, prepared.next_secrets
        else:
            bundle, next_secrets = self._make_bundle(step + 1, recipients, self._channel_keys)
        vector_bytes = y.astype(y.dtype.newbyteorder("<"), copy=False).tobytes()
        out = wire.encode(MaskedInput(self.session, step, self.id, bits, vector_bytes, bundle))
        self._secrets[step + 1] = next_secrets
        self._state = target
        return out

    def _on_consistency(self, m: ConsistencyRequest, target: State) -> list[bytes]:
        if not self._check_survivors(m.step, m.survivors):
            self._declare_self_dropped(m.step)
            return []
        self._check_enough(m.step, m.survivors)
        assert self._signing_key is not None
        sig = keys.sign(
            self._signing_key, keys.consistency_payload(self.session, m.step, m.survivors)
        )
        self._signed[m.step] = m.survivors
        self._state = target
        return [wire.encode(ConsistencySignature(self.session, m.step, self.id, sig))]

    def _declare_self_dropped(self, step: int) -> None:
        self._state = next_state(Role.CLIENT, self._mode, self._state, Local.DECLARED_DROPPED) or (
            State.DROPPED
        )
        self._declared_dropped[self.id] = step
        self._wipe()

    def _on_unmask(self, m: UnmaskRequest, target: State) -> list[bytes]:
        step = m.step
        survivors, dropped = set(m.survivors), set(m.dropped)
        both = sorted(survivors & dropped)
        if both:
            raise DoubleRevealRefused(
                f"step {step}: clients {both[:5]} listed both as survivors and as dropped"
            )
        if self.config.active:
            if self._signed.get(step) != m.survivors:
                raise InconsistentMessage(
                    f"step {step}: survivor set differs from the one this client signed"
                )
            signers = [i for i, _ in m.signatures]
            if len(signers) < self.config.t or not set(signers) <= survivors:
                raise InconsistentMessage(
                    f"step {step}: need >= {self.config.t} consistency signatures from survivors, "
                    f"got {len(signers)}"
                )
            payload = keys.consistency_payload(self.session, step, m.survivors)
            for i, sig in m.signatures:
                keys.verify(self._verify_keys[i], sig, payload, what=f"consistency of client {i}")
        elif m.signatures:
            raise InconsistentMessage("consistency signatures in semi-honest mode")
        if not self._check_survivors(step, m.survivors):
            self._declare_self_dropped(step)
            return []
        strays = [v for v in m.dropped if v not in set(self._members)]
        if strays:
            raise InconsistentMessage(f"step {step}: dropped {strays[:5]} are not session members")
        peers = self._peers[step]
        kinds: dict[int, str] = {}
        for v in peers:
            if v in survivors:
                kinds[v] = SELF
            elif v in dropped:
                kinds[v] = KEY
            else:
                raise InconsistentMessage(
                    f"step {step}: neighbour {v} is neither a survivor nor dropped"
                )
            previous = self._revealed.get((step, v))
            if previous is not None and previous != kinds[v]:
                raise DoubleRevealRefused(
                    f"step {step}: already revealed the {previous} share of client {v}; refusing "
                    f"to reveal its {kinds[v]} share"
                )
        if self._revealed.get((step, self.id), SELF) != SELF:
            raise DoubleRevealRefused(f"step {step}: this client's key share was revealed")
        next_peers = self._open_bundles(
            step + 1, m.next_bundles, self._secrets[step + 1], frozenset(survivors - {self.id})
        )
        self._check_enough(step, m.survivors)
        secrets = self._secrets[step]
        self_shares = sorted(
            [(v, shamir.share_to_bytes(peers[v].self_share)) for v, k in kinds.items() if k == SELF]
            + [(self.id, shamir.share_to_bytes(secrets.own_self_share))]
        )
        key_shares = sorted(
            (v, shamir.share_to_bytes(peers[v].key_share)) for v, k in kinds.items() if k == KEY
        )
        reply = wire.encode(
            UnmaskShares(self.session, step, self.id, tuple(self_shares), tuple(key_shares))
        )
        # ---- commit ----
        for v, k in kinds.items():
            self._revealed[(step, v)] = k
        self._revealed[(step, self.id)] = SELF
        for v in m.dropped:
            self._declared_dropped.setdefault(v, step)
        del self._secrets[step]
        del self._peers[step]
        self._signed.pop(step, None)
        self._peers[step + 1] = next_peers
        self._step = step + 1
        self._state = target
        return [reply]
