"""Sans-IO server state machine: buffers validated client messages, closes stages on request.

Why "close_stage" is a call: a sans-IO server cannot know when to stop waiting (that needs a
clock); the transport calls :meth:`Server.close_stage` when everyone answered or its timeout
fired, and every client that has not answered by then is dropped -- for the rest of the session.

The server accumulates masked inputs into one uint32/uint64 vector as they arrive (after full
validation), so memory is O(d), not O(n d). At the end of an aggregation it reconstructs the
self-mask seeds of the survivors and the mask keys of clients that dropped after sharing keys,
subtracts their streams, and returns the sum over the survivors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from protocols import keys, shamir, wire
from protocols.encoding import uint_dtype
from protocols.errors import (
    ConfigError,
    InconsistentMessage,
    InvalidShare,
    LocalProtocolError,
    ReplayedMessage,
    TooFewSurvivors,
    UnexpectedMessage,
    WrongSession,
)
from protocols.graph import Graph, build_graph
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
    PeerKey,
    Roster,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
)
from protocols.params import SecAggConfig
from protocols.prg import expand_into
from protocols.state import Local, Mode, Role, State, allowed_events, next_state

_CLIENT_TYPES = frozenset(
    {
        MessageType.ADVERTISE_KEYS,
        MessageType.SHARE_KEYS,
        MessageType.MASKED_INPUT,
        MessageType.CONSISTENCY_SIGNATURE,
        MessageType.UNMASK_SHARES,
    }
)


@dataclass(frozen=True)
class ServerResult:
    """Outcome of one aggregation, as the server sees it.

    ``total`` is the sum in Z_{2^b} (uint32/uint64) of the inputs of ``survivors``; ``dropped`` are
    the clients declared dropped during this aggregation.
    """

    step: int
    total: np.ndarray
    survivors: frozenset[int]
    dropped: frozenset[int]


@dataclass(frozen=True)
class StageOutput:
    """What closing a stage produced: wire messages per client, and the result if one completed."""

    messages: dict[int, bytes]
    result: ServerResult | None = None


class Server:
    """The aggregation server of one session."""

    def __init__(
        self,
        config: SecAggConfig,
        session_id: bytes,
        *,
        verify_keys: Mapping[int, bytes] | None = None,
        graph_seed: bytes | None = None,
    ) -> None:
        if not isinstance(session_id, bytes) or len(session_id) != keys.SESSION_ID_BYTES:
            raise ConfigError(f"session_id must be {keys.SESSION_ID_BYTES} bytes")
        if config.active and verify_keys is None:
            raise ConfigError("active mode needs verify_keys")
        if graph_seed is not None and len(graph_seed) != 32:
            raise ConfigError("graph_seed must be 32 bytes")
        self.config = config
        self.session = session_id
        self._mode = Mode.ACTIVE if config.active else Mode.SEMI_HONEST
        self._verify_keys = dict(verify_keys or {})
        self._graph_seed = graph_seed if graph_seed is not None else keys.random_bytes(32)
        self._limits = wire.WireLimits.for_config(config.num_clients, config.max_dim, config.bits)
        self._state = State.COLLECT_KEYS
        self._step = 0
        self._closed_steps: set[tuple[MessageType, int]] = set()
        self._advertised: dict[int, AdvertiseKeys] = {}
        self._graph: Graph | None = None
        self._out: dict[int, tuple[int, str]] = {}  # client -> (step, stage) it was dropped at
        # per aggregation
        self._participants: frozenset[int] = frozenset()  # P^j: hold/handed out step-j shares
        self._forwarded: dict[int, frozenset[int]] = {}  # sender -> recipients (step j)
        self._holdings: dict[int, frozenset[int]] = {}  # holder -> owners whose shares it holds
        self._bundles: dict[int, KeyBundle] = {}  # bundles being collected (for step j or j+1)
        self._mask_pks: dict[int, bytes] = {}  # step-j mask public keys
        self._inputs: set[int] = set()
        self._acc: np.ndarray | None = None
        self._dim: int | None = None
        self._survivors: tuple[int, ...] = ()
        self._dropped_now: tuple[int, ...] = ()
        self._survivor_set: frozenset[int] = frozenset()
        self._dropped_set: frozenset[int] = frozenset()
        self._signatures: dict[int, bytes] = {}
        self._unmask_recipients: frozenset[int] = frozenset()
        self._unmask: dict[int, UnmaskShares] = {}
        self._next_forwarded: dict[int, frozenset[int]] = {}
        self._next_holdings: dict[int, frozenset[int]] = {}
        self._next_pks: dict[int, bytes] = {}

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
    def graph(self) -> Graph | None:
        """The sharing graph (after the key-advertisement stage)."""
        return self._graph

    @property
    def out(self) -> Mapping[int, tuple[int, str]]:
        """Clients out of the session: id -> (step, stage) at which they were dropped."""
        return dict(self._out)

    @property
    def participants(self) -> frozenset[int]:
        """Clients taking part in the current aggregation."""
        return self._participants

    # ------------------------------------------------------------------ receiving

    def receive(self, data: bytes, sender: int | None = None) -> None:
        """Validate and record one client message. ``sender`` is the transport-authenticated id,
        if the transport has one; it must match the message."""
        msg = wire.decode(data, self._limits)
        if msg.TYPE not in _CLIENT_TYPES:
            raise UnexpectedMessage(f"server received a server message ({msg.TYPE.name})")
        if msg.session != self.session:
            raise WrongSession(f"{msg.TYPE.name} belongs to another session")
        if sender is not None and sender != msg.sender:
            raise InconsistentMessage(
                f"{msg.TYPE.name} claims sender {msg.sender} but arrived from {sender}"
            )
        step = getattr(msg, "step", 0)
        target = next_state(Role.SERVER, self._mode, self._state, msg.TYPE)
        if target is None or step != self._step:
            raise self._out_of_order(msg.TYPE, step)
        if msg.sender in self._out:
            at, stage = self._out[msg.sender]
            raise UnexpectedMessage(
                f"client {msg.sender} was dropped at step {at} ({stage}) and stays out"
            )
        handler = {
            MessageType.ADVERTISE_KEYS: self._on_advertise,
            MessageType.SHARE_KEYS: self._on_share_keys,
            MessageType.MASKED_INPUT: self._on_masked_input,
            MessageType.CONSISTENCY_SIGNATURE: self._on_signature,
            MessageType.UNMASK_SHARES: self._on_unmask_shares,
        }[msg.TYPE]
        handler(msg)
        self._state = target

    def _out_of_order(self, mtype: MessageType, step: int) -> Exception:
        if step < self._step or (mtype, step) in self._closed_steps:
            return ReplayedMessage(
                f"{mtype.name} for step {step} arrived after that stage closed "
                f"(current step {self._step}, state {self._state.value})"
            )
        expected = ", ".join(e.name for e in allowed_events(Role.SERVER, self._mode, self._state))
        return UnexpectedMessage(
            f"{mtype.name} for step {step} not allowed in state {self._state.value} at step "
            f"{self._step} (allowed: {expected or 'nothing'})"
        )

    def _check_signature(self, signer: int, signature: bytes, payload: bytes, what: str) -> None:
        if self.config.active:
            keys.verify(self._verify_keys[signer], signature, payload, what=what)
        elif signature:
            raise InconsistentMessage(f"{what}: unexpected signature in semi-honest mode")

    def _on_advertise(self, m: AdvertiseKeys) -> None:
        if m.sender in self._advertised:
            raise ReplayedMessage(f"client {m.sender} already advertised its keys")
        self._check_signature(
            m.sender,
            m.signature,
            keys.advertise_payload(self.session, m.sender, m.channel_pk),
            f"channel key of client {m.sender}",
        )
        self._advertised[m.sender] = m

    def _check_bundle(self, sender: int, bundle: KeyBundle, step: int) -> None:
        assert self._graph is not None
        if bundle.step != step:
            raise InconsistentMessage(
                f"client {sender}: key bundle for step {bundle.step}, expected step {step}"
            )
        neighbours = self._graph.neighbours(sender)
        strays = [v for v, _ in bundle.ciphertexts if v not in neighbours]
        if strays:
            raise InconsistentMessage(
                f"client {sender}: shares addressed to non-neighbours {strays[:5]}"
            )
        if len(bundle.ciphertexts) + 1 < self.config.t:
            raise InconsistentMessage(
                f"client {sender}: {len(bundle.ciphertexts) + 1} share holders < threshold "
                f"{self.config.t}"
            )
        self._check_signature(
            sender,
            bundle.signature,
            keys.mask_key_payload(self.session, step, sender, bundle.mask_pk),
            f"mask key of client {sender} for step {step}",
        )

    def _on_share_keys(self, m: ShareKeys) -> None:
        if m.sender not in self._participants:
            raise InconsistentMessage(f"client {m.sender} is not in the roster")
        if m.sender in self._bundles:
            raise ReplayedMessage(f"client {m.sender} already shared its keys for step 0")
        self._check_bundle(m.sender, m.bundle, 0)
        self._bundles[m.sender] = m.bundle

    def _on_masked_input(self, m: MaskedInput) -> None:
        if m.sender not in self._participants:
            raise InconsistentMessage(
                f"client {m.sender} holds no shares for step {self._step} and cannot contribute"
            )
        if m.sender in self._inputs:
            raise ReplayedMessage(f"client {m.sender} already sent its masked input")
        if m.bits != self.config.bits:
            raise InconsistentMessage(
                f"masked input has {m.bits} bits, session uses {self.config.bits}"
            )
        dim = m.dim
        expected = self.config.dim if self.config.dim is not None else self._dim
        if dim < 1 or (expected is not None and dim != expected):
            raise InconsistentMessage(
                f"client {m.sender}: vector length {dim}, "
                f"expected {expected if expected else '>= 1'}"
            )
        self._check_bundle(m.sender, m.next_bundle, self._step + 1)
        # ---- commit ----
        if self._acc is None:
            self._acc = np.zeros(dim, dtype=uint_dtype(self.config.bits))
            self._dim = dim
        vec = m.array
        np.add(self._acc, vec, out=self._acc, casting="unsafe")
        self._inputs.add(m.sender)
        self._bundles[m.sender] = m.next_bundle

    def _on_signature(self, m: ConsistencySignature) -> None:
        if m.sender not in self._survivors:
            raise InconsistentMessage(f"client {m.sender} is not a survivor of step {self._step}")
        if m.sender in self._signatures:
            raise ReplayedMessage(f"client {m.sender} already signed step {self._step}")
        self._check_signature(
            m.sender,
            m.signature,
            keys.consistency_payload(self.session, self._step, self._survivors),
            f"consistency of client {m.sender}",
        )
        self._signatures[m.sender] = m.signature

    def _on_unmask_shares(self, m: UnmaskShares) -> None:
        u = m.sender
        if u not in self._unmask_recipients:
            raise InconsistentMessage(f"client {u} was not asked to unmask step {self._step}")
        if u in self._unmask:
            raise ReplayedMessage(f"client {u} already sent its unmask shares")
        held = self._holdings.get(u, frozenset())
        want_self = held & self._survivor_set
        want_key = held & self._dropped_set
        got_self = {v for v, _ in m.self_shares}
        got_key = {v for v, _ in m.key_shares}
        if got_self != want_self or got_key != want_key:
            raise InconsistentMessage(
                f"client {u}: unmask shares for {sorted(got_self)[:5]}/{sorted(got_key)[:5]}, "
                f"expected self-mask shares of {sorted(want_self)[:5]} and mask-key shares of "
                f"{sorted(want_key)[:5]}"
            )
        for _, blob in m.self_shares + m.key_shares:
            shamir.share_from_bytes(blob)
        self._unmask[u] = m

    # ------------------------------------------------------------------ closing stages

    def _transition(self, event: Local) -> State:
        target = next_state(Role.SERVER, self._mode, self._state, event)
        if target is None:
            raise LocalProtocolError(f"cannot {event.value} in state {self._state.value}")
        return target

    def _abort_notifications(self, message: str) -> dict[int, bytes]:
        """Enter ``aborted``; every live client gets an Abort message."""
        live = (set(self._participants) | set(self._advertised)) - set(self._out)
        abort = wire.encode(Abort(self.session, self._step, message[:1000]))
        self._state = State.ABORTED
        self._acc = None
        return {u: abort for u in sorted(live)}

    def _fail(self, message: str) -> TooFewSurvivors:
        """Abort the session because too few clients remain."""
        return TooFewSurvivors(message, self._abort_notifications(message))

    def _drop(self, clients: set[int] | frozenset[int], stage: str) -> None:
        for u in clients:
            self._out.setdefault(u, (self._step, stage))

    def close_stage(self) -> StageOutput:
        """End the current stage: missing clients are dropped; returns what to send next."""
        target = self._transition(Local.CLOSE_STAGE)
        handler = {
            State.COLLECT_KEYS: self._close_keys,
            State.COLLECT_SHARES: self._close_shares,
            State.COLLECT_INPUTS: self._close_inputs,
            State.COLLECT_SIGNATURES: self._close_signatures,
            State.COLLECT_UNMASK: self._close_unmask,
        }[self._state]
        out = handler()
        self._state = target
        return out

    def close(self) -> None:
        """End the session; pending aggregation state is discarded."""
        if self._state not in (State.FINISHED, State.ABORTED):
            self._state = self._transition(Local.CLOSE)
        self._acc = None
        self._bundles.clear()
        self._unmask.clear()

    def _close_keys(self) -> StageOutput:
        t = self.config.t
        members = tuple(sorted(self._advertised))
        if len(members) < t:
            raise self._fail(f"only {len(members)} clients advertised keys, threshold is {t}")
        graph = build_graph(
            self.config.graph, members, self.config.k, self._graph_seed, self.session
        )
        self._graph = graph
        self._drop(set(range(self.config.num_clients)) - set(members), "advertise")
        msgs = {}
        for u in members:
            peers = tuple(
                PeerKey(v, self._advertised[v].channel_pk, self._advertised[v].signature)
                for v in sorted(graph.neighbours(u))
            )
            msgs[u] = wire.encode(Roster(self.session, members, self._graph_seed, peers))
        self._participants = frozenset(members)
        self._closed_steps.add((MessageType.ADVERTISE_KEYS, 0))
        return StageOutput(msgs)

    def _forward(self, step: int, pool: frozenset[int]) -> dict[int, tuple[ForwardedBundle, ...]]:
        """Mutual forwarding among ``pool``: v's shares reach w only if w's reach v, so both or
        neither include the pairwise mask. Records who holds whose shares."""
        cts = {u: dict(self._bundles[u].ciphertexts) for u in pool}
        outgoing: dict[int, list[ForwardedBundle]] = {u: [] for u in pool}
        forwarded: dict[int, set[int]] = {u: set() for u in pool}
        for v in sorted(pool):
            bundle = self._bundles[v]
            for w, ct in cts[v].items():
                if w in pool and v in cts[w]:
                    outgoing[w].append(ForwardedBundle(v, bundle.mask_pk, bundle.signature, ct))
                    forwarded[v].add(w)
        self._forwarded = {v: frozenset(ws) for v, ws in forwarded.items()}
        holdings: dict[int, set[int]] = {u: {u} for u in pool}
        for v, ws in forwarded.items():
            for w in ws:
                holdings[w].add(v)
        self._holdings = {u: frozenset(vs) for u, vs in holdings.items()}
        self._mask_pks = {v: self._bundles[v].mask_pk for v in pool}
        return {w: tuple(items) for w, items in outgoing.items()}

    def _check_neighbourhoods(self, pool: frozenset[int], stage: str) -> None:
        t = self.config.t
        assert self._graph is not None
        if len(pool) < t:
            raise self._fail(
                f"step {self._step}: {len(pool)} clients left after {stage}, threshold is {t}"
            )
        for u in sorted(pool):
            near = len(self._graph.closed(u) & pool)
            if near < t:
                raise self._fail(
                    f"step {self._step}: client {u} has {near} live holders after {stage}, "
                    f"threshold is {t}"
                )

    def _close_shares(self) -> StageOutput:
        pool = frozenset(self._bundles)
        self._drop(self._participants - pool, "share")
        self._check_neighbourhoods(pool, "share keys")
        outgoing = self._forward(0, pool)
        self._participants = pool
        self._bundles = {}
        self._closed_steps.add((MessageType.SHARE_KEYS, 0))
        msgs = {
            w: wire.encode(ForwardShares(self.session, 0, items)) for w, items in outgoing.items()
        }
        return StageOutput(msgs)

    def _close_inputs(self) -> StageOutput:
        survivors = frozenset(self._inputs)
        self._drop(self._participants - survivors, "masked_input")
        self._check_neighbourhoods(survivors, "masked input")
        self._survivors = tuple(sorted(survivors))
        self._dropped_now = tuple(sorted(self._participants - survivors))
        self._survivor_set = frozenset(survivors)
        self._dropped_set = frozenset(self._dropped_now)
        self._closed_steps.add((MessageType.MASKED_INPUT, self._step))
        if self.config.active:
            req = wire.encode(ConsistencyRequest(self.session, self._step, self._survivors))
            return StageOutput({u: req for u in self._survivors})
        return self._request_unmask(survivors)

    def _close_signatures(self) -> StageOutput:
        signers = frozenset(self._signatures)
        if len(signers) < self.config.t:
            raise self._fail(
                f"step {self._step}: {len(signers)} consistency signatures, threshold is "
                f"{self.config.t}"
            )
        self._drop(set(self._survivors) - signers, "consistency")
        self._closed_steps.add((MessageType.CONSISTENCY_SIGNATURE, self._step))
        return self._request_unmask(signers)

    def _request_unmask(self, recipients: frozenset[int]) -> StageOutput:
        """Ask ``recipients`` for their shares; forward their key bundles for the next step."""
        step = self._step
        current = self._forwarded, self._holdings, self._mask_pks
        next_bundles = self._forward(step + 1, recipients)
        self._next_forwarded, self._next_holdings = self._forwarded, self._holdings
        self._next_pks = self._mask_pks
        self._forwarded, self._holdings, self._mask_pks = current
        self._bundles = {}
        sigs = tuple(sorted(self._signatures.items()))
        msgs = {
            u: wire.encode(
                UnmaskRequest(
                    self.session, step, self._survivors, self._dropped_now, sigs, next_bundles[u]
                )
            )
            for u in sorted(recipients)
        }
        self._unmask_recipients = recipients
        return StageOutput(msgs)

    def _close_unmask(self) -> StageOutput:
        step, t, bits = self._step, self.config.t, self.config.bits
        responders = frozenset(self._unmask)
        self._drop(self._unmask_recipients - responders, "unmask")
        survivors = set(self._survivors)
        self_shares: dict[int, dict[int, int]] = {v: {} for v in survivors}
        key_shares: dict[int, dict[int, int]] = {v: {} for v in self._dropped_now}
        for u, m in self._unmask.items():
            for v, blob in m.self_shares:
                self_shares[v][u + 1] = shamir.share_from_bytes(blob)
            for v, blob in m.key_shares:
                key_shares[v][u + 1] = shamir.share_from_bytes(blob)
        # pairs (survivor w, dropped v) whose mask w added and the server must remove
        pairs = {
            v: sorted(w for w in self._forwarded.get(v, ()) if w in survivors)
            for v in self._dropped_now
        }
        needed_keys = [v for v in self._dropped_now if pairs[v]]
        for v in sorted(survivors):
            if len(self_shares[v]) < t:
                raise self._fail(
                    f"step {step}: {len(self_shares[v])} shares of client {v}'s self-mask seed "
                    f"among {len(responders)} responders, threshold is {t}"
                )
        for v in needed_keys:
            if len(key_shares[v]) < t:
                raise self._fail(
                    f"step {step}: {len(key_shares[v])} shares of dropped client {v}'s mask key, "
                    f"threshold is {t}"
                )
        assert self._acc is not None and self._dim is not None
        acc, dim, chunk = self._acc, self._dim, self.config.chunk_bytes
        seeds = {v: shamir.reconstruct(self_shares[v], t) for v in sorted(survivors)}
        mask_sks = {}
        for v in needed_keys:
            raw = shamir.reconstruct(key_shares[v], t)
            sk = keys.x25519_from_private(raw)
            if keys.public_bytes(sk) != self._mask_pks[v]:
                message = (
                    f"step {step}: reconstructed mask key of client {v} does not match its public "
                    "key (a holder sent a bad share); aggregation aborted"
                )
                raise InvalidShare(message, self._abort_notifications(message))
            mask_sks[v] = sk
        for v, seed in seeds.items():
            expand_into(acc, keys.self_mask_key(seed, self.session, step, v, dim, bits), -1, chunk)
        for v, sk in mask_sks.items():
            for w in pairs[v]:
                shared = keys.x25519_shared(sk, self._mask_pks[w])
                key = keys.pair_mask_key(shared, self.session, step, v, w, dim, bits)
                # w added +PRG if w < v else -PRG; remove it
                expand_into(acc, key, -1 if w < v else 1, chunk)
        result = ServerResult(step, acc, frozenset(survivors), frozenset(self._dropped_now))
        # ---- next aggregation ----
        self._closed_steps.add((MessageType.UNMASK_SHARES, step))
        self._participants = self._unmask_recipients
        self._forwarded, self._holdings = self._next_forwarded, self._next_holdings
        self._mask_pks = self._next_pks
        self._step = step + 1
        self._inputs = set()
        self._acc = None
        self._dim = None
        self._survivors = ()
        self._dropped_now = ()
        self._survivor_set = frozenset()
        self._dropped_set = frozenset()
        self._signatures = {}
        self._unmask = {}
        self._unmask_recipients = frozenset()
        return StageOutput({}, result)
