"""Secure aggregation behind the Aggregator interface: one protocol session per CoDream round.

Each client's contribution is flattened, divided by its channel's public range (so gradients and
logits share one fixed-point encoding), encoded, masked and sent as wire bytes through
``protocols.InProcessSession``; the server side only ever holds masked vectors and the decoded sum.
Every dream step and every soft-label snapshot is one aggregation of the round's session, so key
agreement and share distribution are paid once per round while every aggregation gets fresh masks.

A client that drops (simulated by ``dropout_rate`` or an explicit schedule) is out for the rest of
the round — the server stops sending it dreams — and is back in the next round's session. Fewer
survivors than the threshold aborts the aggregation with :class:`SecureAggregationAborted`, and so
does a sum of fewer than ``min_survivors`` (never below 2): it is refused, not released.

Off the critical path (``SecureAggregationSettings.pipeline``, on by default): nothing of a mask
depends on the data, so after each aggregation the clients' next masks and key bundles are
expanded in worker threads (``protocols.InProcessSession.prepare``) together with the next
contributions' rounding randomness, while the dream step computes; the next round's session is
created and its keys agreed in a worker while the round distils and trains. ``aggregate`` then only
encodes, adds the prepared masks and unmasks. Sums, wire bytes, dropouts and seeded rounding bits
are those of the unpipelined path (tests/test_secure_pipeline.py); every session still has fresh
keys and every aggregation fresh masks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

import protocols
from securedream.aggregation.base import AggregateResult, Aggregator, Channel, check_contributions
from securedream.contribution import fixed_point_encode_rows, rounding_stream
from securedream.errors import SecureDreamError
from securedream.seeding import numpy_generator

STAGES = ("advertise", "share", "masked_input", "consistency", "unmask")


class SecureAggregationAborted(SecureDreamError):
    """Fewer than t clients survived an aggregation; the sum cannot be unmasked."""


@dataclass(frozen=True)
class PlannedDrop:
    client: int
    stage: str
    step: int
    round: int | None = None  # None: every round


def parse_dropouts(items: Sequence[str], num_clients: int) -> list[PlannedDrop]:
    """Parse ``"client:stage:step[:round]"`` strings (config key secure_aggregation.dropouts)."""
    from securedream.errors import ConfigError

    plans = []
    for item in items:
        parts = item.split(":")
        if len(parts) not in (3, 4):
            raise ConfigError(
                "secure_aggregation.dropouts", f"expected client:stage:step[:round], got {item!r}"
            )
        try:
            client, step = int(parts[0]), int(parts[2])
            rnd = int(parts[3]) if len(parts) == 4 else None
        except ValueError:
            raise ConfigError(
                "secure_aggregation.dropouts", f"client, step and round must be integers: {item!r}"
            ) from None
        if not 0 <= client < num_clients:
            raise ConfigError(
                "secure_aggregation.dropouts",
                f"client must be in [0, {num_clients - 1}], got {client} in {item!r}",
            )
        if parts[1] not in STAGES:
            raise ConfigError(
                "secure_aggregation.dropouts", f"stage must be one of {list(STAGES)}: {item!r}"
            )
        if step < 0 or (rnd is not None and rnd < 0):
            raise ConfigError("secure_aggregation.dropouts", f"step/round must be >= 0: {item!r}")
        plans.append(PlannedDrop(client, parts[1], step, rnd))
    return plans


@dataclass(frozen=True)
class SecureAggregationSettings:
    graph: str = "complete"
    threshold: int | None = None
    degree: int | None = None
    bits: int = 32
    ranges: Mapping[str, float] = field(default_factory=dict)  # per-channel value range
    scale: float | None = None
    dropout_rate: float = 0.0
    planned: Sequence[PlannedDrop] = ()
    seed: int = 0
    secure_rounding: bool = False  # rounding randomness from os.urandom (else from the seed)
    min_survivors: int = 2  # fewest survivors a sum is released with (never below 2 or t)
    pipeline: bool = True  # masks, rounding bits and next session prepared in a worker thread


def protocol_config(
    num_clients: int, settings: SecureAggregationSettings
) -> protocols.SecAggConfig:
    """The protocol parameters of a session: what the server and every client must agree on."""
    return protocols.SecAggConfig(
        num_clients=num_clients,
        graph=settings.graph,
        degree=settings.degree,
        threshold=settings.threshold,
        dropout_rate=min(max(settings.dropout_rate, 0.0), 0.5),
        bits=settings.bits,
        clip=1.0,
        scale=settings.scale,
    )


def channel_range(settings: SecureAggregationSettings, channel: Channel) -> float:
    """The public value range of a channel: contributions are divided by it before encoding."""
    key = "logits" if channel is Channel.LOGITS else "dream"
    return float(settings.ranges.get(key, 1.0))


# Noise added by each client to its *encoded* integer vector before masking (distributed DP).
IntegerNoise = Callable[[int, Channel, int], np.ndarray]


class SecureAggregator(Aggregator):
    name = "secure"

    def __init__(self, num_clients: int, settings: SecureAggregationSettings) -> None:
        if num_clients < 2:
            raise SecureDreamError("secure aggregation needs at least 2 clients")
        self.num_clients = num_clients
        self.settings = settings
        self.config = protocol_config(num_clients, settings)
        self.session: protocols.InProcessSession | None = None
        self.round_index = 0
        # wall seconds of secure-aggregation work (encode, protocol, decode) and, separately, of
        # sampling clients' integer DP noise: both run inside the dreaming stage. With the
        # pipeline, ``seconds`` is what is left on the critical path (waits for unfinished
        # prepared work included); ``ahead_seconds`` is the CPU time of the work done ahead in
        # worker threads (masks, next key bundles, rounding bits, next session's set-up).
        self.seconds = 0.0
        self.noise_seconds = 0.0
        self.ahead_seconds = 0.0
        self.survivors_log: list[dict[str, object]] = []
        self.integer_noise: IntegerNoise | None = None
        self._position = 0  # rounding-stream calls made this round (one per contribution)
        self._pool: ThreadPoolExecutor | None = None
        self._task: Future[float] | None = None  # the worker's current task
        self._draws: dict[int, Future[np.ndarray]] = {}  # stream position -> uniform draws
        self._next_session: tuple[int, Future[tuple[protocols.InProcessSession, float]]] | None = (
            None
        )
        self._dream_dim: int | None = None  # length of the last dream-channel contribution

    @property
    def threshold(self) -> int:
        return self.config.t

    @property
    def min_survivors(self) -> int:
        """Fewest survivors whose sum is released: max(2, t, the configured minimum)."""
        return max(2, self.threshold, self.settings.min_survivors)

    @property
    def encoding(self) -> protocols.EncodingParams:
        return self.config.encoding

    def channel_range(self, channel: Channel) -> float:
        return channel_range(self.settings, channel)

    def start_round(self, round_index: int, client_ids: Sequence[int]) -> None:
        self.round_index = round_index
        self._position = 0
        self._draws = {}
        ahead, self._next_session = self._next_session, None
        if ahead is not None and ahead[0] == round_index:
            self.session, seconds = ahead[1].result()  # keys agreed, masks expanded, in a worker
            self.ahead_seconds += seconds
        else:
            if ahead is not None:
                ahead[1].result()[0].close()
            self.session = self._new_session()
        if self.settings.pipeline and self.session.started and self._dream_dim is not None:
            # that session's first masks are expanded: draw the first contributions' rounding
            self._start(self._dream_dim, self.num_clients, masks=False)

    def end_round(self) -> None:
        self._wait()
        if self.session is not None:
            self.session.close()
        self.session = None
        self._draws = {}
        if self.settings.pipeline:  # next round's session: keys agreed while this one distils
            rnd = self.round_index + 1
            self._next_session = (rnd, self._executor().submit(self._session_ahead, rnd))

    def close(self) -> None:
        """Forget a session built ahead and stop the worker thread (the run is over)."""
        self._wait()
        ahead, self._next_session = self._next_session, None
        if ahead is not None:
            ahead[1].result()[0].close()
        if self.session is not None:
            self.session.close()
            self.session = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # ------------------------------------------------------------------ work ahead

    def _new_session(self) -> protocols.InProcessSession:
        return protocols.InProcessSession(self.config, list(range(self.num_clients)))

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:  # one thread: one hand-off per aggregation, few GIL waits
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="secagg-ahead")
        return self._pool

    def _session_ahead(self, round_index: int) -> tuple[protocols.InProcessSession, float]:
        """A fresh session for ``round_index`` with its keys agreed, built in the worker thread.

        Planned or simulated drops at the set-up stages of the round's first aggregation are
        applied by that aggregation as before: such a round's session is left for it to set up.
        """
        start = time.thread_time()
        session = self._new_session()
        first = self._drops(0, range(self.num_clients), round_index)
        if not any(stage in ("advertise", "share") for stage in first.values()):
            session.setup()
            if self._dream_dim is not None:
                session.prepare(self._dream_dim)
        return session, time.thread_time() - start

    def _start(self, dim: int, contributors: int, *, masks: bool = True) -> None:
        """Start the next aggregation's rounding bits (and masks) in the worker thread."""
        positions = range(self._position, self._position + contributors)
        self._draws = {pos: Future() for pos in positions}
        # only a protocol session has masks to prepare (a subclass may sum without masking)
        real = isinstance(self.session, protocols.InProcessSession)
        session = self.session if masks and real else None
        self._task = self._executor().submit(
            self._ahead, session, self.round_index, dict(self._draws), dim
        )

    def _ahead(
        self,
        session: protocols.InProcessSession | None,
        round_index: int,
        draws: Mapping[int, Future[np.ndarray]],
        dim: int,
    ) -> float:
        """The worker's task: rounding bits first (encoding needs them first), then the masks."""
        start = time.thread_time()
        for position, future in draws.items():
            try:
                future.set_result(self._stream(round_index, position).uniform(dim))
            except Exception as exc:  # handed to the encoder waiting for it
                future.set_exception(exc)
        if session is not None:
            session.prepare(dim)
        return time.thread_time() - start

    def _wait(self) -> None:
        """Wait for the worker's task (the session is not touched while it runs)."""
        task, self._task = self._task, None
        if task is not None:
            self.ahead_seconds += task.result()

    def _stream(self, round_index: int, position: int):  # type: ignore[no-untyped-def]
        """The rounding randomness of the ``position``-th contribution of a round."""
        return rounding_stream(
            self.settings.seed, round_index, position, from_os=self.settings.secure_rounding
        )

    def _rounding(self, count: int) -> np.ndarray:
        """The next contribution's rounding variates: drawn ahead when they were, else now."""
        position = self._position
        self._position += 1
        ahead = self._draws.pop(position, None)
        if ahead is not None:
            values = ahead.result()
            if len(values) >= count:  # AES-CTR streams: a shorter draw is a prefix of a longer
                return values[:count]
        return self._stream(self.round_index, position).uniform(count)

    def active_clients(self, client_ids: Sequence[int]) -> list[int]:
        if self.session is None:
            return list(client_ids)
        out = self.session.dropped_clients
        return [c for c in client_ids if c not in out]

    def _drops(
        self, step: int, active: Iterable[int], round_index: int | None = None
    ) -> dict[int, str]:
        rnd = self.round_index if round_index is None else round_index
        active = list(active)
        drops: dict[int, str] = {}
        for plan in self.settings.planned:
            if plan.step == step and plan.round in (None, rnd) and plan.client in active:
                drops[plan.client] = plan.stage
        if self.settings.dropout_rate > 0:
            rng = numpy_generator(self.settings.seed, "dropout", rnd, step)
            draws = rng.random(self.num_clients)
            stages = rng.integers(2 if step > 0 else 0, len(STAGES), self.num_clients)
            for c in active:
                # a simulation of flaky clients: never drop below the threshold on purpose
                keeps_threshold = len(active) - len(drops) - 1 >= self.min_survivors
                if draws[c] < self.settings.dropout_rate and c not in drops and keeps_threshold:
                    drops[c] = STAGES[int(stages[c])]
        return drops

    def aggregate(
        self, contributions: Mapping[int, torch.Tensor], *, channel: Channel, step: int
    ) -> AggregateResult:
        if self.session is None:
            raise SecureDreamError("SecureAggregator.aggregate called outside start/end_round")
        shape = check_contributions(contributions)
        first = next(iter(contributions.values()))
        value_range = self.channel_range(channel)
        active = self.active_clients(sorted(contributions))
        drops = self._drops(step, active)
        start = time.perf_counter()  # encoding and decoding are secure-aggregation work too
        noise_before = self.noise_seconds
        try:
            encoded = self._clients_encode(
                [contributions[c] for c in active], value_range, channel, step
            )
            inputs = dict(zip(active, encoded, strict=True))
            self._wait()  # the prepared masks (normally long done, during the dream step)
            result = self.session.aggregate(inputs, drop=drops)
            total, survivors = self._decode(
                result.integer_sum, result.survivors, channel, step, shape
            )
            # the next dream step's masks and rounding bits, computed while that step computes
            # (after a soft-label snapshot, usually the round's last aggregation, none)
            if channel is not Channel.LOGITS:
                self._dream_dim = int(first.numel())
                if self.settings.pipeline:
                    remaining = self.active_clients(range(self.num_clients))
                    self._start(self._dream_dim, len(remaining))
        except protocols.TooFewSurvivors as exc:
            raise SecureAggregationAborted(
                f"round {self.round_index}, {channel.value} step {step}: fewer than "
                f"t={self.threshold} clients survived ({exc})"
            ) from exc
        except protocols.InvalidShare as exc:
            # a client sent a share that fails its commitment: the protocol aborts the aggregation
            raise SecureAggregationAborted(
                f"round {self.round_index}, {channel.value} step {step}: a client's key share "
                f"failed verification, aggregation aborted ({exc})"
            ) from exc
        finally:
            noise = self.noise_seconds - noise_before
            self.seconds += time.perf_counter() - start - noise
        return AggregateResult(
            total=total.to(first.device),
            contributors=survivors,
            bytes_up={int(c): int(n) for c, n in result.bytes_up.items() if n},
            bytes_down={int(c): int(n) for c, n in result.bytes_down.items() if n},
        )

    def _decode(
        self,
        integer_sum: np.ndarray,
        survivors: Iterable[object],
        channel: Channel,
        step: int,
        shape: torch.Size,
    ) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Server side: signed integer sum → float32 tensor in channel units; log survivors.

        A sum of fewer than ``min_survivors`` clients is refused here, before it leaves the
        aggregator (the protocol's own threshold already refuses fewer than t where the graph
        allows t to carry the whole floor).
        """
        ordered = tuple(sorted(int(c) for c in survivors))  # type: ignore[call-overload]
        self.survivors_log.append(
            {
                "round": self.round_index,
                "channel": channel.value,
                "step": step,
                "survivors": len(ordered),
            }
        )
        if len(ordered) < self.min_survivors:
            raise SecureAggregationAborted(
                f"round {self.round_index}, {channel.value} step {step}: only {len(ordered)} "
                f"survivors < {self.min_survivors} (the survivor floor: max(2, t, "
                "privacy.min_survivors)); the sum is not released"
            )
        summed = integer_sum.astype(np.float64) / self.encoding.scale
        total = torch.from_numpy(summed * self.channel_range(channel)).to(torch.float32)
        return total.reshape(shape), ordered

    def _clients_encode(
        self, tensors: Sequence[torch.Tensor], value_range: float, channel: Channel, step: int
    ) -> list[np.ndarray]:
        """Client side: fixed-point encode with stochastic rounding, then any integer DP noise.

        Values are divided by the channel's public range and clipped to [-1, 1], scaled by s and
        rounded up with probability equal to the fractional part (unbiased; error < 1/s each):
        :func:`securedream.contribution.fixed_point_encode_rows`, all clients of the step in one
        pass per operation, bit for bit what each client's ``fixed_point_encode`` gives. The
        rounding randomness is keyed per round and contribution (from the seed, or os.urandom
        when ``secure_rounding``), so research runs are reproducible.
        """
        if not tensors:
            return []
        values = _host_rows(tensors)
        uniforms = [self._rounding(values.shape[1]) for _ in tensors]
        encoded = fixed_point_encode_rows(values, value_range, self.encoding.scale, uniforms)
        rows = list(encoded)
        if self.integer_noise is not None:
            start = time.perf_counter()
            for row in rows:  # in client order, as each client draws its own share
                row += self.integer_noise(len(row), channel, step)
            self.noise_seconds += time.perf_counter() - start
        return rows

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    def error_bound(self, channel: Channel, contributors: int) -> float:
        """|decoded − exact clipped sum| per coordinate is below contributors·Δ·range."""
        return contributors * self.channel_range(channel) / self.encoding.scale


def _host_rows(tensors: Sequence[torch.Tensor]) -> np.ndarray:
    """The contributions as one float64 host array (clients, d), a fresh copy.

    One device-to-host transfer for all clients on a GPU (one synchronisation, not one per
    client); on the CPU one conversion pass per client, no intermediate stack.
    """
    dim = tensors[0].numel()
    if all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors):
        values = np.empty((len(tensors), dim))
        for row, t in zip(values, tensors, strict=True):
            row[:] = t.detach().reshape(-1).numpy()
        return values
    host = torch.stack([t.detach().reshape(-1) for t in tensors]).cpu()
    return host.to(torch.float64).numpy()
