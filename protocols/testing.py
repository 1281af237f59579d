"""Property-testing kit for secure aggregation: hypothesis strategies, malicious-server drivers and
a conformance harness for transports. Needs ``hypothesis`` (imported here, and only here:
``import protocols`` never needs it).

Why a public kit: every transport that moves this protocol's bytes (in-process, Flower, your own)
must keep the same invariants, and the cheapest way to know is to run the same hostile search
against it. ``check_transport(factory)`` does that::

    from protocols.testing import InProcessTransport, check_transport
    check_transport(InProcessTransport)                      # or your own factory

Pieces (docs/protocol-testing.md has a worked example):

* strategies: :func:`configs` (valid, optionally at the boundary of the safe region),
  :func:`invalid_config_kwargs`, :func:`inputs`, :func:`dropout_schedules` (over the steps of a
  session), :func:`wire_mutations` (hostile versions of a genuine frame),
  :func:`malicious_behaviours` (equivocating survivor sets, double-reveal requests, replays);
* :func:`run_malicious_server`: plays one behaviour against real :class:`protocols.Client`
  objects and reports what the server obtained;
* :func:`check_transport`: exact sum over survivors, typed errors only, state unchanged after every
  rejected (mutated or replayed) message, and no party ever holding t shares of both secrets of a
  client for one step.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from protocols import keys, wire
from protocols.client import Client
from protocols.errors import (
    ConfigError,
    DoubleRevealRefused,
    ProtocolError,
    RemoteProtocolError,
    SecAggError,
)
from protocols.graph import corruption_count
from protocols.messages import (
    ConsistencyRequest,
    ConsistencySignature,
    MessageType,
    UnmaskRequest,
    UnmaskShares,
)
from protocols.params import SecAggConfig
from protocols.server import Server
from protocols.session import STAGES, InProcessSession

# --------------------------------------------------------------------------- state snapshots


def freeze(value: Any) -> Any:
    """Deep, comparable snapshot of an object graph (for 'state unchanged' assertions)."""
    if isinstance(value, dict):
        return ("dict", tuple(sorted((repr(k), freeze(v)) for k, v in value.items())))
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted(repr(freeze(v)) for v in value)))
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(freeze(v) for v in value))
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.tobytes())
    if isinstance(value, (int, float, str, bytes, type(None), bool)):
        return value
    if hasattr(value, "__dataclass_fields__"):
        return ("dc", type(value).__name__, freeze(vars(value)))
    if hasattr(value, "__dict__") and type(value).__module__.startswith("protocols"):
        return ("obj", type(value).__name__, freeze(vars(value)))
    return ("id", id(value))


def snapshot(machine: Client | Server) -> Any:
    """Everything a state machine holds (its config and any instrumentation excluded), frozen."""
    return freeze(
        {k: v for k, v in vars(machine).items() if k not in ("config", "receive", "close_stage")}
    )


# --------------------------------------------------------------------------- strategies


@st.composite
def configs(
    draw: st.DrawFn,
    *,
    modes: Sequence[str] = ("semi-honest", "active"),
    graphs: Sequence[str] = ("complete", "harary"),
    min_clients: int = 3,
    max_clients: int = 7,
    bits: Sequence[int] = (32, 64),
    boundary: bool = False,
    dim: int | None = None,
    corruption_rates: Sequence[float] = (0.0, 0.1, 0.2),
    dropout_rates: Sequence[float] = (0.0, 0.1, 0.3),
) -> SecAggConfig:
    """Valid configurations. ``boundary=True`` puts the threshold at an edge of the accepted
    region (the smallest accepted t, or k + 1) and favours degree n - 1 and tiny cohorts."""
    n = draw(st.integers(min_clients, max_clients))
    graph = draw(st.sampled_from(list(graphs)))
    mode = draw(st.sampled_from(list(modes)))
    gamma = draw(st.sampled_from(list(corruption_rates)))
    delta = draw(st.sampled_from(list(dropout_rates)))
    degree = None
    if graph == "harary" and draw(st.booleans()):
        options = [d for d in range(2, n) if d % 2 == 0 or d == n - 1]
        degree = n - 1 if boundary and draw(st.booleans()) else draw(st.sampled_from(options))
    base = {
        "graph": graph,
        "degree": degree,
        "mode": mode,
        "corruption_rate": gamma,
        "dropout_rate": delta,
        "bits": draw(st.sampled_from(list(bits))),
        "dim": dim,
    }
    try:
        derived = SecAggConfig(n, **base)
    except ConfigError:
        assume(False)
        raise  # pragma: no cover - assume() raised
    k = derived.k
    if boundary:
        accepted = [t for t in range(1, k + 2) if _accepts(n, base, t)]
        assume(accepted)
        threshold = draw(st.sampled_from([accepted[0], accepted[-1]]))
    else:
        threshold = draw(st.one_of(st.none(), st.integers(1, k + 1)))
    try:
        return SecAggConfig(n, threshold=threshold, **base)
    except ConfigError:
        assume(False)
        raise  # pragma: no cover


def _accepts(n: int, base: Mapping[str, Any], t: int) -> bool:
    try:
        SecAggConfig(n, threshold=t, **base)
    except ConfigError:
        return False
    return True


def invalid_config_kwargs() -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments of :class:`SecAggConfig` that must raise :class:`ConfigError`."""
    return st.one_of(
        st.builds(dict, num_clients=st.integers(-5, 1)),
        st.builds(dict, num_clients=st.just(6), threshold=st.integers(-3, 0)),
        st.builds(dict, num_clients=st.just(6), threshold=st.integers(7, 50)),
        st.builds(dict, num_clients=st.just(6), threshold=st.just(3), mode=st.just("active")),
        st.builds(dict, num_clients=st.just(10), threshold=st.just(5), mode=st.just("active")),
        st.builds(dict, num_clients=st.just(8), threshold=st.just(1)),  # t <= c colluders
        st.builds(
            dict,
            num_clients=st.just(9),
            graph=st.just("harary"),
            degree=st.sampled_from([1, 3, 5, 7, 9, 10]),
        ),
        st.builds(dict, num_clients=st.just(5), clip=st.sampled_from([0.0, -1.0, 1e-300, 1e300])),
        st.builds(dict, num_clients=st.just(5), max_weight=st.sampled_from([float("nan"), 0])),
        st.builds(dict, num_clients=st.just(5), dropout_rate=st.floats(1.0, 5.0)),
        st.builds(dict, num_clients=st.just(5), mode=st.text(max_size=5)),
        st.builds(dict, num_clients=st.just(5), graph=st.text(max_size=5)),
    )


def inputs(
    config: SecAggConfig, *, dim: int | None = None, integer: bool = True
) -> st.SearchStrategy[dict[int, np.ndarray]]:
    """One input vector per client: integers within the overflow-safe bound (exact sums), or
    floats including values beyond ``clip`` (the encoder clips them)."""
    length = dim or config.dim or 5
    n = config.num_clients
    if integer:
        bound = config.encoding.integer_bound
        element = st.integers(-bound, bound)
        return st.lists(
            st.lists(element, min_size=length, max_size=length), min_size=n, max_size=n
        ).map(lambda rows: {i: np.array(r, dtype=np.int64) for i, r in enumerate(rows)})
    element = st.floats(-4 * config.clip, 4 * config.clip, allow_nan=False, allow_infinity=False)
    return st.lists(
        st.lists(element, min_size=length, max_size=length), min_size=n, max_size=n
    ).map(lambda rows: {i: np.array(r, dtype=np.float64) for i, r in enumerate(rows)})


def dropout_schedules(
    config: SecAggConfig, steps: int, *, max_drops: int | None = None
) -> st.SearchStrategy[list[dict[int, str]]]:
    """Per step, which clients drop and at which stage; a client drops at most once (it stays
    out afterwards). ``advertise``/``share`` only occur at step 0."""
    n = config.num_clients
    limit = n if max_drops is None else max_drops

    @st.composite
    def schedule(draw: st.DrawFn) -> list[dict[int, str]]:
        clients = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=limit))
        out: list[dict[int, str]] = [{} for _ in range(steps)]
        for u in clients:
            step = draw(st.integers(0, steps - 1))
            stages = STAGES if step == 0 else STAGES[2:]
            out[step][u] = draw(st.sampled_from(stages))
        return out

    return schedule()


def wire_mutations(frame: bytes) -> st.SearchStrategy[bytes]:
    """Hostile variants of a genuine frame: byte overwrites in header or body, truncation,
    extension, a changed type tag or version, a doubled body, a changed sender field."""
    n = len(frame)
    header = 8

    def overwrite(pos_val: tuple[int, int]) -> bytes:
        pos, val = pos_val
        out = bytearray(frame)
        out[pos % n] = val
        return bytes(out)

    return st.one_of(
        st.tuples(st.integers(0, n - 1), st.integers(0, 255)).map(overwrite),
        st.integers(0, n - 1).map(lambda cut: frame[:cut]),
        st.binary(min_size=1, max_size=16).map(lambda extra: frame + extra),
        st.integers(0, 255).map(lambda tag: frame[:3] + bytes([tag]) + frame[4:]),
        st.integers(0, 255).map(lambda v: frame[:2] + bytes([v]) + frame[3:]),
        st.just(frame + frame[header:]),
        st.integers(0, 2**32 - 1).map(
            lambda s: frame[: header + 16] + s.to_bytes(4, "big") + frame[header + 20 :]
        ),
    )


def _mutate(rng: random.Random, frame: bytes) -> bytes:
    """One hostile variant of ``frame`` chosen by ``rng`` (the harness's cheap twin of
    :func:`wire_mutations`, for mutating every message of a run)."""
    n = len(frame)
    kind = rng.randrange(6)
    out = bytearray(frame)
    if kind == 0:
        for _ in range(rng.randint(1, 3)):
            out[rng.randrange(n)] = rng.randrange(256)
        return bytes(out)
    if kind == 1:
        return frame[: rng.randrange(n)]
    if kind == 2:
        return frame + rng.randbytes(rng.randint(1, 9))
    if kind == 3:
        out[3] = rng.randrange(256)
        return bytes(out)
    if kind == 4 and n > 28:  # sender / step field right after the session id
        out[24:28] = rng.randbytes(4)
        return bytes(out)
    return frame[:8] + bytes(16) + frame[24:]  # another session


# --------------------------------------------------------------------------- malicious server


@dataclass(frozen=True)
class Equivocation:
    """Show ``group_a`` a survivor set containing ``victim`` and everyone else one without it,
    so that group A reveals the victim's self-mask shares and the others its mask-key shares.
    ``colluders`` (never the victim) sign anything and hand over the shares they hold."""

    victim: int
    group_a: frozenset[int]
    colluders: frozenset[int] = frozenset()


@dataclass(frozen=True)
class DoubleReveal:
    """Ask ``holder`` to list ``victim`` as both survivor and dropped, then (after a genuine
    request) ask again with ``victim`` as dropped."""

    victim: int
    holder: int


@dataclass(frozen=True)
class Replay:
    """Re-send an old server message (``what``: roster, forward or unmask of step 0) at step 1."""

    what: str
    target: int


Behaviour = Equivocation | DoubleReveal | Replay


def malicious_behaviours(config: SecAggConfig) -> st.SearchStrategy[Behaviour]:
    """Malicious-server behaviours against ``config`` (colluders at most ceil(gamma n))."""
    n = config.num_clients
    c = corruption_count(n, config.corruption_rate)

    @st.composite
    def equivocation(draw: st.DrawFn) -> Equivocation:
        victim = draw(st.integers(0, n - 1))
        others = [u for u in range(n) if u != victim]
        colluders = frozenset(draw(st.lists(st.sampled_from(others), unique=True, max_size=c)))
        honest = [u for u in range(n) if u not in colluders]
        group_a = frozenset(draw(st.lists(st.sampled_from(honest), unique=True))) | {victim}
        return Equivocation(victim, frozenset(group_a), colluders)

    pairs = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda p: p[0] != p[1])
    return st.one_of(
        equivocation(),
        pairs.map(lambda p: DoubleReveal(p[0], p[1])),
        st.tuples(st.sampled_from(["roster", "forward", "unmask"]), st.integers(0, n - 1)).map(
            lambda p: Replay(*p)
        ),
    )


@dataclass
class AttackOutcome:
    """What a malicious server obtained: per (step, owner), the holders that sent it the
    self-mask share and the mask-key share; ``refusals`` the typed errors honest clients raised."""

    threshold: int
    self_holders: dict[tuple[int, int], set[int]] = field(default_factory=dict)
    key_holders: dict[tuple[int, int], set[int]] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)

    def recovered_both(self) -> list[tuple[int, int]]:
        """(step, owner) pairs for which the server holds t shares of both secrets."""
        t = self.threshold
        return sorted(
            key
            for key, holders in self.self_holders.items()
            if len(holders) >= t and len(self.key_holders.get(key, ())) >= t
        )


class _Parties:
    """Real clients, a genuine server for set-up, and the PKI, for malicious-server drivers."""

    def __init__(self, config: SecAggConfig) -> None:
        self.config = config
        self.session = keys.random_bytes(16)
        n = config.num_clients
        self.signing: dict[int, Any] = {}
        self.verify: dict[int, bytes] | None = None
        if config.active:
            self.verify = {}
            for i in range(n):
                self.signing[i], self.verify[i] = keys.generate_signing_key()
        self.server = Server(config, self.session, verify_keys=self.verify)
        self.clients = {
            i: Client(
                config, i, self.session, signing_key=self.signing.get(i), verify_keys=self.verify
            )
            for i in range(n)
        }
        self.limits = wire.WireLimits.for_config(n, config.max_dim, config.bits)
        self.sent: dict[str, dict[int, bytes]] = {}

    def setup_and_inputs(self) -> dict[int, bytes]:
        """Advertise, share, forward, masked inputs (all honest): returns what the genuine server
        sends after closing the inputs (consistency or unmask requests)."""
        for c in self.clients.values():
            self.server.receive(c.start())
        self.sent["roster"] = self.server.close_stage().messages
        for u, data in self.sent["roster"].items():
            for reply in self.clients[u].receive(data):
                self.server.receive(reply)
        self.sent["forward"] = self.server.close_stage().messages
        for u, data in self.sent["forward"].items():
            self.clients[u].receive(data)
        for u, c in self.clients.items():
            self.server.receive(c.submit_input(np.full(3, u + 1, dtype=np.int64)))
        return self.server.close_stage().messages

    def decode(self, data: bytes) -> Any:
        return wire.decode(data, self.limits)


def _record(outcome: AttackOutcome, reply: bytes, parties: _Parties) -> None:
    msg = parties.decode(reply)
    assert isinstance(msg, UnmaskShares)
    for owner, _ in msg.self_shares:
        outcome.self_holders.setdefault((msg.step, owner), set()).add(msg.sender)
    for owner, _ in msg.key_shares:
        outcome.key_holders.setdefault((msg.step, owner), set()).add(msg.sender)


def _try(outcome: AttackOutcome, client: Client, data: bytes) -> list[bytes] | None:
    """Deliver a hostile message; a refusal must be typed and leave the client unchanged."""
    before = snapshot(client)
    try:
        return client.receive(data)
    except ProtocolError as exc:
        if isinstance(exc, RemoteProtocolError):
            assert snapshot(client) == before, f"{type(exc).__name__} changed the client"
        outcome.refusals.append(type(exc).__name__)
        return None


def run_malicious_server(config: SecAggConfig, behaviour: Behaviour) -> AttackOutcome:
    """Play ``behaviour`` against real clients (all honest except the behaviour's colluders)."""
    parties = _Parties(config)
    outcome = AttackOutcome(config.t)
    requests = parties.setup_and_inputs()
    clients = parties.clients
    everyone = tuple(range(config.num_clients))
    if isinstance(behaviour, Equivocation):
        victim, colluders = behaviour.victim, behaviour.colluders
        group_a = behaviour.group_a - colluders
        group_b = frozenset(everyone) - group_a - colluders - {victim}
        sets = {"a": everyone, "b": tuple(u for u in everyone if u != victim)}
        groups = {"a": group_a, "b": group_b}
        for label, survivors in sets.items():
            dropped = () if label == "a" else (victim,)
            signatures: dict[int, bytes] = {}
            if config.active:
                ask = wire.encode(ConsistencyRequest(parties.session, 0, survivors))
                for u in sorted(groups[label]):
                    replies = _try(outcome, clients[u], ask) or []
                    for r in replies:
                        sig = parties.decode(r)
                        assert isinstance(sig, ConsistencySignature)
                        signatures[u] = sig.signature
                payload = keys.consistency_payload(parties.session, 0, survivors)
                for u in colluders:
                    signatures[u] = keys.sign(parties.signing[u], payload)
            request = wire.encode(
                UnmaskRequest(
                    parties.session, 0, survivors, dropped, tuple(sorted(signatures.items())), ()
                )
            )
            for u in sorted(groups[label]):
                for r in _try(outcome, clients[u], request) or []:
                    _record(outcome, r, parties)
        for u in colluders:  # colluders hand over everything they hold for the victim
            material = clients[u]._peers.get(0, {}).get(victim)
            if material is not None:
                outcome.self_holders.setdefault((0, victim), set()).add(u)
                outcome.key_holders.setdefault((0, victim), set()).add(u)
        return outcome
    if isinstance(behaviour, DoubleReveal):
        victim, holder = behaviour.victim, behaviour.holder
        genuine = parties.decode(requests[holder]) if holder in requests else None
        if config.active:  # get the holder past the consistency round honestly
            for u, data in requests.items():
                for r in clients[u].receive(data):
                    parties.server.receive(r)
            genuine = parties.decode(parties.server.close_stage().messages[holder])
        assert isinstance(genuine, UnmaskRequest)
        both = dataclasses.replace(genuine, dropped=tuple(sorted({*genuine.dropped, victim})))
        _try(outcome, clients[holder], wire.encode(both))
        for r in _try(outcome, clients[holder], wire.encode(genuine)) or []:
            _record(outcome, r, parties)
        survivors = tuple(u for u in genuine.survivors if u != victim)
        again = dataclasses.replace(genuine, survivors=survivors, dropped=(victim,))
        for r in _try(outcome, clients[holder], wire.encode(again)) or []:
            _record(outcome, r, parties)
        return outcome
    assert isinstance(behaviour, Replay)
    target = behaviour.target
    parties.sent["unmask"] = requests
    messages = requests
    while True:  # finish step 0 honestly
        for u, data in messages.items():
            for r in clients[u].receive(data):
                parties.server.receive(r)
        out = parties.server.close_stage()
        if out.result is not None:
            break
        messages = parties.sent["unmask"] = out.messages
    old = parties.sent.get(behaviour.what, {}).get(target)
    if old is not None:
        assert _try(outcome, clients[target], old) is None, "a replay was accepted"
    return outcome


def check_malicious_server(config: SecAggConfig, behaviour: Behaviour) -> AttackOutcome:
    """Run ``behaviour`` and assert the defences held: no (step, client) with t shares of both
    secrets, no honest holder revealing both kinds, double reveals and replays refused."""
    outcome = run_malicious_server(config, behaviour)
    # semi-honest mode does not defend against equivocation (the server follows the protocol
    # there); what holds in both modes is that no honest holder reveals both kinds
    if config.active or not isinstance(behaviour, Equivocation):
        assert not outcome.recovered_both(), (
            f"server recovered both secrets of {outcome.recovered_both()} with {behaviour}"
        )
    colluders = behaviour.colluders if isinstance(behaviour, Equivocation) else frozenset()
    for key, holders in outcome.self_holders.items():
        both = (holders & outcome.key_holders.get(key, set())) - colluders
        assert not both, f"honest holders {sorted(both)} revealed both kinds for {key}"
    if isinstance(behaviour, DoubleReveal):
        assert outcome.refusals and outcome.refusals[0] == DoubleRevealRefused.__name__
    return outcome


# --------------------------------------------------------------------------- conformance


@dataclass(frozen=True)
class TransportResult:
    """What a transport reports for one aggregation: the sum in signed integers, the survivors."""

    integer_sum: np.ndarray
    survivors: frozenset[int]


class TransportUnderTest(Protocol):
    """What :func:`check_transport` needs from a transport.

    ``server`` is the :class:`protocols.Server` the transport drives (it may be created lazily, at
    the first aggregation); the harness instruments it. ``aggregate`` runs one aggregation of the
    session over the clients still in it, with ``drop`` = {client: stage} meaning "this client
    sends nothing from this stage on, for the rest of the session" (stages as in
    :data:`protocols.session.STAGES`); it returns the sum or raises. A transport may wrap a
    protocol error in its own exception, with the :class:`SecAggError` as ``__cause__``.
    """

    @property
    def server(self) -> Server | None: ...

    def aggregate(
        self, inputs: Mapping[int, np.ndarray], drop: Mapping[int, str]
    ) -> TransportResult: ...

    def close(self) -> None: ...


TransportFactory = Callable[[SecAggConfig], TransportUnderTest]


class InProcessTransport:
    """Reference adapter: :class:`protocols.InProcessSession` as a :class:`TransportUnderTest`."""

    def __init__(self, config: SecAggConfig) -> None:
        self._session = InProcessSession(config)

    @property
    def server(self) -> Server:
        return self._session.server

    def aggregate(
        self, inputs: Mapping[int, np.ndarray], drop: Mapping[int, str]
    ) -> TransportResult:
        live = {u: x for u, x in inputs.items() if u in self._session.active_clients}
        res = self._session.aggregate(live, drop=dict(drop))
        return TransportResult(res.integer_sum, frozenset(int(u) for u in res.survivors))

    def close(self) -> None:
        self._session.close()


class ServerProbe:
    """Instruments a transport's Server: every genuine client message is first answered with
    hostile variants on a copy (rejections must be typed and leave the copy unchanged), then
    delivered, then replayed (must be refused, state unchanged); accepted unmask shares are
    tallied per (step, owner, kind)."""

    def __init__(self, server: Server, rng: random.Random, mutations: int) -> None:
        self.server = server
        self.rng = rng
        self.mutations = mutations
        self.self_holders: dict[tuple[int, int], set[int]] = {}
        self.key_holders: dict[tuple[int, int], set[int]] = {}
        self.rejected = 0
        self.limits = wire.WireLimits.for_config(
            server.config.num_clients, server.config.max_dim, server.config.bits
        )
        cls = type(server)
        server.receive = self._receive  # type: ignore[method-assign]
        self._receive_impl = lambda s, data, sender: cls.receive(s, data, sender)

    def _clone(self) -> Server:
        return copy.deepcopy(self.server, {id(self): self})  # the probe itself is shared

    def _hostile(self, data: bytes, sender: int | None) -> None:
        clone = self._clone()
        for _ in range(self.mutations):
            bad = _mutate(self.rng, data)
            if bad == data:
                continue
            before = snapshot(clone)
            try:
                self._receive_impl(clone, bad, sender)
            except ProtocolError:
                self.rejected += 1
                assert snapshot(clone) == before, "a rejected message changed the server"
            except Exception as exc:  # the property under test
                raise AssertionError(f"untyped {type(exc).__name__} from a mutated frame") from exc
            else:
                clone = self._clone()

    def _receive(self, data: bytes, sender: int | None = None) -> None:
        if self.mutations:
            self._hostile(data, sender)
        self._receive_impl(self.server, data, sender)  # genuine: may raise ProtocolError
        msg = wire.decode(data, self.limits)
        if msg.TYPE is MessageType.UNMASK_SHARES:
            for owner, _ in msg.self_shares:
                self.self_holders.setdefault((msg.step, owner), set()).add(msg.sender)
            for owner, _ in msg.key_shares:
                self.key_holders.setdefault((msg.step, owner), set()).add(msg.sender)
        before = snapshot(self.server)
        try:
            self._receive_impl(self.server, data, sender)
        except RemoteProtocolError:
            self.rejected += 1
        else:
            raise AssertionError(f"replayed {msg.TYPE.name} from {sender} was accepted")
        assert snapshot(self.server) == before, "a refused replay changed the server"

    def check_no_double_secret(self, t: int) -> None:
        for key, holders in self.self_holders.items():
            keyh = self.key_holders.get(key, set())
            assert not (len(holders) >= t and len(keyh) >= t), (
                f"server holds {len(holders)} self-mask and {len(keyh)} mask-key shares of "
                f"(step, client) {key}, threshold {t}"
            )
            assert not holders & keyh, f"holders {sorted(holders & keyh)} revealed both for {key}"


def _protocol_error(exc: BaseException) -> SecAggError | None:
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 8:
        if isinstance(cur, SecAggError):
            return cur
        cur, seen = cur.__cause__, seen + 1
    return None


def _expected_abort_complete(
    n: int, t: int, active: bool, schedule: Sequence[Mapping[int, str]], upto: int
) -> bool:
    """Whether a complete-graph session must abort by step ``upto`` (stage pools below t)."""
    out: set[int] = set()
    for step in range(upto + 1):
        drops = schedule[step]

        def stays(u: int, stage: str, drops: Mapping[int, str] = drops, step: int = step) -> bool:
            st_ = drops.get(u)
            if st_ is None:
                return True
            order = STAGES.index(st_ if (active or st_ != "consistency") else "unmask")
            if step > 0 and order < 2:
                order = 2
            return order > STAGES.index(stage)

        alive = [u for u in range(n) if u not in out]
        pools = []
        if step == 0:
            pools.append([u for u in alive if stays(u, "advertise")])
            pools.append([u for u in pools[-1] if stays(u, "share")])
            alive = pools[-1]
        inputs_ = [u for u in alive if stays(u, "masked_input")]
        pools.append(inputs_)
        recipients = inputs_
        if active:
            recipients = [u for u in inputs_ if stays(u, "consistency")]
            pools.append(recipients)
        responders = [u for u in recipients if stays(u, "unmask")]
        pools.append(responders)
        if min(len(p) for p in pools) < t:
            return True
        out |= {u for u in alive if u not in responders}
        out |= {u for u in range(n) if u not in alive}
    return False


@dataclass
class ConformanceReport:
    """What :func:`check_transport` exercised (to assert that a run covered the cases)."""

    examples: int = 0
    aggregations: int = 0
    with_dropouts: int = 0
    aborts: int = 0
    refused_messages: int = 0


def check_transport(
    factory: TransportFactory,
    *,
    configs_strategy: st.SearchStrategy[SecAggConfig] | None = None,
    steps: int = 3,
    dim: int = 4,
    max_examples: int = 15,
    mutations: int = 3,
    shrink: bool = True,
) -> ConformanceReport:
    """Run the conformance properties against transports built by ``factory(config)``.

    For each example (a configuration, a dropout schedule over ``steps`` aggregations, integer
    inputs and a mutation seed):

    * every aggregation that completes returns exactly the sum over its survivors, and its
      survivors are exactly the clients that sent a masked input in that step;
    * everything raised is a :class:`SecAggError` (or wraps one as ``__cause__``); an abort
      happens only where clients dropped (complete graph: exactly when some stage has fewer
      than t clients left);
    * every hostile variant of every client message is either accepted or refused with a
      :class:`ProtocolError` that leaves the server unchanged; every replay is refused;
    * at no step does the server hold t shares of both secrets of a client, and no holder
      reveals both kinds.

    ``shrink=False`` reports the first failing example as found (faster when a failure is
    expected, e.g. when testing a test).
    """
    strategy = configs_strategy if configs_strategy is not None else configs(dim=dim)
    report = ConformanceReport()

    @settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        database=None,
        phases=tuple(p for p in Phase if shrink or p is not Phase.shrink),
    )
    @given(data=st.data(), seed=st.integers(0, 2**32 - 1))
    def run(data: st.DataObject, seed: int) -> None:
        config = data.draw(strategy, label="config")
        schedule = data.draw(dropout_schedules(config, steps), label="schedule")
        rng = random.Random(seed)
        transport = factory(config)
        report.examples += 1
        probe: ServerProbe | None = None
        out: set[int] = set()
        n, t = config.num_clients, config.t
        try:
            for step in range(steps):
                vectors = data.draw(inputs(config, dim=dim), label=f"inputs {step}")
                drop = {u: s for u, s in schedule[step].items() if u not in out}
                if probe is None and transport.server is not None:
                    probe = ServerProbe(transport.server, rng, mutations)
                try:
                    if probe is None:  # server created lazily: instrument it on creation
                        result = _first_aggregate(transport, vectors, drop, rng, mutations)
                        probe = result[1]
                        res = result[0]
                    else:
                        res = transport.aggregate(vectors, drop)
                except Exception as exc:  # the property under test
                    err = _protocol_error(exc)
                    if err is None:
                        raise AssertionError(f"untyped error {type(exc).__name__}: {exc}") from exc
                    dropped_any = any(schedule[j] for j in range(step + 1))
                    assert dropped_any, f"aborted without any dropout: {err}"
                    report.aborts += 1
                    if config.k >= n - 1:
                        assert _expected_abort_complete(n, t, config.active, schedule, step), (
                            f"complete graph aborted with enough clients left: {err}"
                        )
                    return
                report.aggregations += 1
                report.with_dropouts += bool(drop)
                stays = {"consistency", "unmask"}
                expected = {
                    u for u in range(n) if u not in out and (u not in drop or drop[u] in stays)
                }
                assert res.survivors == expected, (res.survivors, expected)
                want = sum((vectors[u] for u in expected), np.zeros(dim, dtype=np.int64))
                assert np.array_equal(np.asarray(res.integer_sum, dtype=np.int64), want)
                if config.k >= n - 1:
                    assert not _expected_abort_complete(n, t, config.active, schedule, step)
                out |= set(drop)
                if probe is not None:
                    probe.check_no_double_secret(t)
        finally:
            if probe is not None:
                report.refused_messages += probe.rejected
            transport.close()

    run()
    return report


def _first_aggregate(
    transport: TransportUnderTest,
    vectors: Mapping[int, np.ndarray],
    drop: Mapping[int, str],
    rng: random.Random,
    mutations: int,
) -> tuple[TransportResult, ServerProbe | None]:
    """For transports that create their Server inside the first aggregation: the transport may
    expose ``on_server`` (a list of callbacks called with the new Server)."""
    holder: list[ServerProbe] = []
    hooks = getattr(transport, "on_server", None)
    if hooks is not None:
        hooks.append(lambda server: holder.append(ServerProbe(server, rng, mutations)))
    res = transport.aggregate(vectors, drop)
    return res, (holder[0] if holder else None)


__all__ = [
    "AttackOutcome",
    "Behaviour",
    "ConformanceReport",
    "DoubleReveal",
    "Equivocation",
    "InProcessTransport",
    "Replay",
    "ServerProbe",
    "TransportFactory",
    "TransportResult",
    "TransportUnderTest",
    "check_malicious_server",
    "check_transport",
    "configs",
    "dropout_schedules",
    "freeze",
    "inputs",
    "invalid_config_kwargs",
    "malicious_behaviours",
    "run_malicious_server",
    "snapshot",
    "wire_mutations",
]
