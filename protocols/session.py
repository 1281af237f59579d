"""In-process transport: drives one Server and n Clients through a session of aggregations.

Why it exists: the engine (and the tests, and the benchmark) need to run the real protocol --
real wire bytes, real state machines -- without sockets. This class only moves bytes between the
sans-IO objects and applies a dropout schedule; a Flower transport can do the same with the same
messages.

Engine-facing API::

    session = InProcessSession(config, client_ids)
    for each dream step:
        result = session.aggregate({cid: vector}, drop={cid: "unmask"})
        result.sum, result.survivors, result.bytes_up[cid], result.bytes_down[cid]
    session.close()

Off the critical path (both optional, both give the same sums and wire bytes)::

    session = InProcessSession(config, client_ids)
    session.setup()            # key agreement before any input exists
    session.prepare(dim)       # every client's mask and next key bundle, expanded now
    ...compute the inputs...
    session.aggregate(inputs)  # only encodes, adds the prepared masks and unmasks

The session itself starts no thread (protocols does no I/O and no threading); a caller that wants
the work overlapped with its computation runs ``setup``/``prepare`` in a worker thread of its own
(AES-CTR and numpy release the GIL) and calls nothing else on the session until it returns.

Dropping at a stage means the client stops *before sending* its message of that stage, and stays
out for the rest of the session. The stages ``advertise`` and ``share`` exist only in the first
aggregation of a session (later aggregations get their keys pipelined); in later aggregations they
mean the same as ``masked_input``.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from protocols import keys
from protocols.client import Client
from protocols.encoding import decode_integer_sum, decode_sum
from protocols.errors import (
    ConfigError,
    EncodingError,
    InvalidShare,
    LocalProtocolError,
    TooFewSurvivors,
)
from protocols.params import SecAggConfig
from protocols.server import Server, ServerResult, StageOutput


class Stage(str, enum.Enum):  # noqa: UP042 - StrEnum needs Python 3.11; we support 3.10
    """Protocol stages at which a client may drop (it sends nothing from that stage on)."""

    ADVERTISE = "advertise"
    SHARE = "share"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"


STAGES = tuple(s.value for s in Stage)
_ORDER = {s: i for i, s in enumerate(Stage)}


def parse_stage(value: object) -> Stage:
    """Accept a Stage or its string value."""
    try:
        return Stage(value)
    except ValueError:
        raise ConfigError(f"dropout stage must be one of {STAGES}, got {value!r}") from None


@dataclass(frozen=True)
class AggregateResult:
    """Result of one aggregation.

    ``sum`` is the decoded float64 sum (float inputs) or the signed int64 sum (integer inputs);
    ``integer_sum`` is always the signed integer sum in Z_{2^b}; ``survivors`` are the clients whose
    inputs are in the sum; ``dropped`` every client out of the session after this aggregation.
    Byte counts are wire bytes of this aggregation (including session set-up for the first one);
    ``client_seconds`` / ``server_seconds`` are CPU seconds of the calling thread
    (``time.thread_time``) spent inside each party's state machine -- compute, unaffected by other
    load on the machine. ``prepared_seconds`` are each client's CPU seconds of
    :meth:`InProcessSession.prepare` work this aggregation used (done ahead, in worker threads:
    off the critical path).
    """

    step: int
    sum: np.ndarray
    integer_sum: np.ndarray
    survivors: frozenset[Hashable]
    dropped: frozenset[Hashable]
    bytes_up: Mapping[Hashable, int]
    bytes_down: Mapping[Hashable, int]
    error_bound: float
    client_seconds: Mapping[Hashable, float] = field(default_factory=dict)
    server_seconds: float = 0.0
    prepared_seconds: Mapping[Hashable, float] = field(default_factory=dict)


class InProcessSession:
    """A multi-aggregation secure-aggregation session run in this process.

    ``client_ids`` are any hashable ids (``num_clients`` of them, default ``range(n)``); they are
    mapped to protocol ids 0..n-1 in the given order. In active mode the session plays the PKI:
    it creates each client's Ed25519 key and hands every party all verification keys.
    Set ``record=True`` to keep a transcript of (step, direction, protocol id, bytes).
    """

    def __init__(
        self,
        config: SecAggConfig,
        client_ids: Sequence[Hashable] | None = None,
        *,
        session_id: bytes | None = None,
        record: bool = False,
    ) -> None:
        if not isinstance(config, SecAggConfig):
            raise ConfigError("config must be a SecAggConfig")
        ids = list(range(config.num_clients)) if client_ids is None else list(client_ids)
        if len(ids) != config.num_clients or len(set(ids)) != len(ids):
            raise ConfigError(
                f"client_ids must be {config.num_clients} distinct ids (num_clients), "
                f"got {len(ids)}"
            )
        self.config = config
        self._busy = False  # setup/prepare running (possibly in the caller's worker thread)
        self._prepared_seconds: dict[int, float] = {}
        self._setup_counters: dict | None = None
        self.session_id = session_id if session_id is not None else keys.random_bytes(16)
        self._ids = ids
        self._index = {cid: i for i, cid in enumerate(ids)}
        signing: dict[int, object] = {}
        verify: dict[int, bytes] | None = None
        if config.active:
            verify = {}
            for i in range(config.num_clients):
                signing[i], verify[i] = keys.generate_signing_key()
        self._server = Server(config, self.session_id, verify_keys=verify)
        self._clients = {
            i: Client(
                config,
                i,
                self.session_id,
                signing_key=signing.get(i),  # type: ignore[arg-type]
                verify_keys=verify,
            )
            for i in range(config.num_clients)
        }
        self._out: set[int] = set()
        self._started = False
        self._closed = False
        self._aborted: str | None = None
        self.transcript: list[tuple[int, str, int, bytes]] | None = [] if record else None
        self.total_bytes_up = dict.fromkeys(ids, 0)
        self.total_bytes_down = dict.fromkeys(ids, 0)

    # ------------------------------------------------------------------ introspection

    @property
    def step(self) -> int:
        """Index of the next aggregation."""
        return self._server.step

    @property
    def active_clients(self) -> frozenset[Hashable]:
        """Clients still in the session."""
        return frozenset(self._ids[i] for i in range(len(self._ids)) if i not in self._out)

    @property
    def dropped_clients(self) -> frozenset[Hashable]:
        """Clients out of the session."""
        return frozenset(self._ids[i] for i in self._out)

    @property
    def server(self) -> Server:
        """The server state machine (read-only use: tests, audits)."""
        return self._server

    def client(self, cid: Hashable) -> Client:
        """The client state machine of ``cid`` (read-only use: tests, audits)."""
        return self._clients[self._index[cid]]

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """End the session: every party forgets its secrets."""
        if self._closed:
            return
        if self._busy:
            raise LocalProtocolError("setup/prepare still running: wait for it before closing")
        self._closed = True
        self._server.close()
        for c in self._clients.values():
            c.close()

    def __enter__(self) -> InProcessSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ validation

    def _resolve_drop(
        self, drop: Mapping[Hashable, object] | None, first: bool
    ) -> dict[int, Stage]:
        out: dict[int, Stage] = {}
        for cid, stage in (drop or {}).items():
            if cid not in self._index:
                raise ConfigError(f"drop: unknown client id {cid!r}")
            st = parse_stage(stage)
            if st is Stage.CONSISTENCY and not self.config.active:
                st = (
                    Stage.UNMASK
                )  # no consistency round in semi-honest mode: next message is unmask
            if not first and _ORDER[st] < _ORDER[Stage.MASKED_INPUT]:
                st = Stage.MASKED_INPUT
            out[self._index[cid]] = st
        return out

    def _resolve_inputs(
        self,
        inputs: Mapping[Hashable, object],
        weights: Mapping[Hashable, float] | None,
        needed: set[int],
    ) -> tuple[dict[int, np.ndarray], dict[int, float], bool]:
        vectors: dict[int, np.ndarray] = {}
        for cid, x in inputs.items():
            if cid not in self._index:
                raise ConfigError(f"inputs: unknown client id {cid!r}")
            i = self._index[cid]
            if i in needed:
                vectors[i] = np.asarray(x)
        missing = sorted(needed - vectors.keys())
        if missing:
            raise ConfigError(
                f"inputs: no vector for active clients {[self._ids[i] for i in missing][:5]} "
                "(pass drop={id: 'masked_input'} for clients that have none)"
            )
        kinds = {v.dtype.kind for v in vectors.values()}
        if not kinds <= set("fiu") or ("f" in kinds and kinds & set("iu")):
            raise EncodingError(f"inputs must be all float or all integer vectors, got {kinds}")
        is_float = "f" in kinds
        if not vectors:  # nobody contributes: the server will abort with TooFewSurvivors
            is_float = weights is not None
        lengths = {v.shape for v in vectors.values()}
        if len(lengths) > 1 or any(len(s) != 1 for s in lengths):
            raise EncodingError(f"inputs must be 1-D vectors of one length, got shapes {lengths}")
        params = self.config.encoding
        for i, v in vectors.items():
            if is_float and not np.all(np.isfinite(v)):
                raise EncodingError(f"input of client {self._ids[i]!r} contains NaN or inf")
            if not is_float and v.size:
                b = params.integer_bound
                if int(v.min()) < -b or int(v.max()) > b:
                    raise EncodingError(
                        f"integer input of client {self._ids[i]!r} exceeds +-{b} "
                        f"(2^{params.bits - 1} - 1) // num_clients"
                    )
        w: dict[int, float] = {}
        if weights is not None and not isinstance(weights, Mapping):
            raise ConfigError(
                f"weights must be a mapping client id -> number, got {type(weights).__name__}"
            )
        for cid, weight in (weights or {}).items():
            if cid not in self._index:
                raise ConfigError(f"weights: unknown client id {cid!r}")
            if (
                isinstance(weight, bool)
                or not isinstance(weight, (int, float, np.integer, np.floating))
                or not math.isfinite(weight)
            ):
                raise EncodingError(
                    f"weight of client {cid!r} must be a finite number, got {weight!r}"
                )
            if not is_float and weight != 1:
                raise EncodingError("weights apply to float inputs only")
            if not 0 <= weight <= params.max_weight:
                raise EncodingError(
                    f"weight of client {cid!r} must be in [0, max_weight={params.max_weight}], "
                    f"got {weight}"
                )
            w[self._index[cid]] = float(weight)
        return vectors, w, is_float

    # ------------------------------------------------------------------ byte moving

    def _up(self, u: int, data: bytes, counters: dict[str, dict[int, int]], step: int) -> None:
        counters["up"][u] += len(data)
        if self.transcript is not None:
            self.transcript.append((step, "up", u, data))
        t0 = time.thread_time()
        self._server.receive(data, sender=u)
        counters["server"][0] += time.thread_time() - t0

    def _deliver(
        self,
        out: StageOutput,
        counters: dict,
        step: int,
        skip: set[int],
    ) -> dict[int, list[bytes]]:
        replies: dict[int, list[bytes]] = {}
        for u, data in sorted(out.messages.items()):
            if u in self._out or u in skip:
                continue
            counters["down"][u] += len(data)
            if self.transcript is not None:
                self.transcript.append((step, "down", u, data))
            t0 = time.thread_time()
            try:
                replies[u] = self._clients[u].receive(data)
            except TooFewSurvivors:
                self._out.add(u)  # the client aborted: it drops out
                replies[u] = []
            counters["client"][u] += time.thread_time() - t0
        return replies

    def _close_stage(self, counters: dict, step: int) -> StageOutput:
        t0 = time.thread_time()
        try:
            out = self._server.close_stage()
        except (TooFewSurvivors, InvalidShare) as exc:
            counters["server"][0] += time.thread_time() - t0
            self._aborted = str(exc)
            for u, data in exc.notifications.items():
                if u not in self._out:
                    self._clients[u].receive(data)
            raise
        counters["server"][0] += time.thread_time() - t0
        return out

    # ------------------------------------------------------------------ one aggregation

    def aggregate(
        self,
        inputs: Mapping[Hashable, object],
        *,
        drop: Mapping[Hashable, object] | None = None,
        weights: Mapping[Hashable, float] | None = None,
    ) -> AggregateResult:
        """Run one aggregation over the clients still in the session.

        Raises :class:`TooFewSurvivors` (and the session is over) when fewer than t remain where t
        are needed. Inputs of clients already out of the session are ignored.
        """
        self._check_live()
        first = not self._started
        step = self._server.step
        stages = self._resolve_drop(drop, first)
        alive = [i for i in range(len(self._ids)) if i not in self._out]
        needed = {
            i for i in alive if _ORDER[stages.get(i, Stage.UNMASK)] > _ORDER[Stage.MASKED_INPUT]
        }
        needed |= {i for i in alive if i not in stages}
        vectors, w, is_float = self._resolve_inputs(inputs, weights, needed)
        counters = self._setup_counters or self._new_counters()
        self._setup_counters = None
        prepared, self._prepared_seconds = self._prepared_seconds, {}
        drops_at = self._dropper(stages)
        if first:
            self._run_setup(alive, drops_at, counters, step)

        for u in sorted(i for i in alive if i not in self._out):
            if drops_at(u, Stage.MASKED_INPUT):
                continue
            t0 = time.thread_time()
            try:
                msg = self._clients[u].submit_input(vectors[u], w.get(u, 1.0))
            except TooFewSurvivors:
                self._out.add(u)
                continue
            finally:
                counters["client"][u] += time.thread_time() - t0
            self._up(u, msg, counters, step)
        out = self._close_stage(counters, step)
        if self.config.active:
            replies = self._deliver(out, counters, step, set())
            for u, msgs in sorted(replies.items()):
                if drops_at(u, Stage.CONSISTENCY):
                    continue
                for msg in msgs:
                    self._up(u, msg, counters, step)
            out = self._close_stage(counters, step)
        replies = self._deliver(out, counters, step, set())
        for u, msgs in sorted(replies.items()):
            if drops_at(u, Stage.UNMASK):
                continue
            for msg in msgs:
                self._up(u, msg, counters, step)
        final = self._close_stage(counters, step)
        assert final.result is not None
        return self._result(final.result, is_float, counters, prepared)

    # ------------------------------------------------------------------ ahead of time

    def _new_counters(self) -> dict:
        n = len(self._ids)
        return {
            "up": dict.fromkeys(range(n), 0),
            "down": dict.fromkeys(range(n), 0),
            "client": dict.fromkeys(range(n), 0.0),
            "server": [0.0],
        }

    def _dropper(self, stages: Mapping[int, Stage]) -> Callable[[int, Stage], bool]:
        """``drops_at(u, stage)``: whether client u is out from ``stage`` on (and mark it out)."""

        def drops_at(u: int, stage: Stage) -> bool:
            st = stages.get(u)
            if st is not None and _ORDER[st] <= _ORDER[stage]:
                self._out.add(u)
                return True
            return u in self._out

        return drops_at

    def _run_setup(
        self, alive: list[int], drops_at: Callable[[int, Stage], bool], counters: dict, step: int
    ) -> None:
        """Advertise + share keys: the session's key agreement (before its first input)."""
        self._started = True
        for u in alive:
            if drops_at(u, Stage.ADVERTISE):
                continue
            t0 = time.thread_time()
            msg = self._clients[u].start()
            counters["client"][u] += time.thread_time() - t0
            self._up(u, msg, counters, step)
        replies = self._deliver(self._close_stage(counters, step), counters, step, set())
        for u, msgs in sorted(replies.items()):
            if drops_at(u, Stage.SHARE):
                continue
            for msg in msgs:
                self._up(u, msg, counters, step)
        self._deliver(self._close_stage(counters, step), counters, step, set())

    def setup(self, *, drop: Mapping[Hashable, object] | None = None) -> None:
        """Run the session's key agreement (advertise + share keys) now, before any input exists.

        Without it the first :meth:`aggregate` does it. ``drop`` may only name the stages of the
        set-up (``advertise``, ``share``); later drops go to ``aggregate`` as usual. Bytes and
        CPU seconds of the set-up are reported with the first aggregation, as without it. Raises
        :class:`TooFewSurvivors` like the first aggregation would.
        """
        self._check_live()
        if self._started:
            raise LocalProtocolError("session keys were already agreed (setup runs once)")
        stages = self._resolve_drop(drop, True)
        late = sorted(
            str(self._ids[u])
            for u, st in stages.items()
            if _ORDER[st] >= _ORDER[Stage.MASKED_INPUT]
        )
        if late:
            raise ConfigError(
                f"setup: drop stages must be advertise or share; pass later drops of {late[:5]} "
                "to aggregate"
            )
        counters = self._new_counters()
        self._setup_counters = counters  # reported with the first aggregation
        alive = [i for i in range(len(self._ids)) if i not in self._out]
        self._busy = True
        try:
            self._run_setup(alive, self._dropper(stages), counters, self._server.step)
        finally:
            self._busy = False

    @property
    def started(self) -> bool:
        """Whether the session's keys are agreed (by :meth:`setup` or a first aggregation)."""
        return self._started

    def _check_idle(self) -> None:
        if self._busy:
            raise LocalProtocolError(
                "setup/prepare still running: wait for it before using the session again"
            )

    def _check_live(self) -> None:
        self._check_idle()
        if self._closed:
            raise LocalProtocolError("session is closed")
        if self._aborted is not None:
            raise LocalProtocolError(f"session aborted: {self._aborted}")

    def prepare(self, dim: int) -> None:
        """Do the data-independent work of the next aggregation now.

        Every client still in the session expands its mask for a length-``dim`` input and draws
        its next key bundle (:meth:`protocols.Client.prepare_input`), so :meth:`aggregate` only
        encodes, adds and unmasks. The sums and wire bytes are those of an unprepared aggregation
        -- a client whose prepared work does not fit (another length, other peers) computes on
        demand -- so a wrong ``dim`` only costs time. Run it in a worker thread to overlap it with
        the computation of the inputs; the session refuses other calls until it returns.
        """
        self._check_live()
        if not self._started:
            raise LocalProtocolError("prepare needs the session keys: call setup() first")
        self._busy = True
        try:
            for u in range(len(self._ids)):
                if u not in self._out:
                    t0 = time.thread_time()
                    self._clients[u].prepare_input(dim)
                    spent = time.thread_time() - t0
                    self._prepared_seconds[u] = self._prepared_seconds.get(u, 0.0) + spent
        finally:
            self._busy = False

    def _result(
        self, res: ServerResult, is_float: bool, counters: dict, prepared: Mapping[int, float]
    ) -> AggregateResult:
        for u in self._server.out:
            self._out.add(u)
        params = self.config.encoding
        integer_sum = decode_integer_sum(res.total, params.bits)
        total = decode_sum(res.total, params) if is_float else integer_sum
        bound = params.error_bound(len(res.survivors)) if is_float else 0.0
        ids = self._ids
        out = AggregateResult(
            step=res.step,
            sum=total,
            integer_sum=integer_sum,
            survivors=frozenset(ids[i] for i in res.survivors),
            dropped=frozenset(ids[i] for i in self._out),
            bytes_up={ids[i]: n for i, n in counters["up"].items()},
            bytes_down={ids[i]: n for i, n in counters["down"].items()},
            error_bound=bound,
            client_seconds={ids[i]: s for i, s in counters["client"].items()},
            server_seconds=counters["server"][0],
            prepared_seconds={ids[i]: s for i, s in prepared.items()},
        )
        for i in range(len(ids)):
            self.total_bytes_up[ids[i]] += counters["up"][i]
            self.total_bytes_down[ids[i]] += counters["down"][i]
        return out
