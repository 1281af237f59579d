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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

import protocols
from securedream.aggregation.base import AggregateResult, Aggregator, Channel, check_contributions
from securedream.contribution import fixed_point_encode
from securedream.errors import SecureDreamError
from securedream.randomness import NoiseSource
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
        # sampling clients' integer DP noise: both run inside the dreaming stage
        self.seconds = 0.0
        self.noise_seconds = 0.0
        self.survivors_log: list[dict[str, object]] = []
        self.integer_noise: IntegerNoise | None = None
        self.rounding = NoiseSource.from_seed(settings.seed, "rounding", 0)

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
        self.session = protocols.InProcessSession(self.config, list(range(self.num_clients)))
        self.rounding = (
            NoiseSource.from_os()
            if self.settings.secure_rounding
            else NoiseSource.from_seed(self.settings.seed, "rounding", round_index)
        )

    def end_round(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session = None

    def active_clients(self, client_ids: Sequence[int]) -> list[int]:
        if self.session is None:
            return list(client_ids)
        out = self.session.dropped_clients
        return [c for c in client_ids if c not in out]

    def _drops(self, step: int, active: Sequence[int]) -> dict[int, str]:
        drops: dict[int, str] = {}
        for plan in self.settings.planned:
            if (
                plan.step == step
                and plan.round in (None, self.round_index)
                and plan.client in active
            ):
                drops[plan.client] = plan.stage
        if self.settings.dropout_rate > 0:
            rng = numpy_generator(self.settings.seed, "dropout", self.round_index, step)
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
            inputs = {
                c: self._client_encode(contributions[c], value_range, channel, step) for c in active
            }
            result = self.session.aggregate(inputs, drop=drops)
            total, survivors = self._decode(
                result.integer_sum, result.survivors, channel, step, shape
            )
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

    def _client_encode(
        self, contribution: torch.Tensor, value_range: float, channel: Channel, step: int
    ) -> np.ndarray:
        """Client side: fixed-point encode with stochastic rounding, then any integer DP noise.

        Values are divided by the channel's public range and clipped to [-1, 1], scaled by s and
        rounded up with probability equal to the fractional part (unbiased; error < 1/s each).
        The rounding randomness is keyed per round (from the seed, or os.urandom when
        ``secure_rounding``), so research runs are reproducible.
        """
        encoded = fixed_point_encode(contribution, value_range, self.encoding.scale, self.rounding)
        if self.integer_noise is not None:
            start = time.perf_counter()
            encoded += self.integer_noise(len(encoded), channel, step)
            self.noise_seconds += time.perf_counter() - start
        return encoded

    def error_bound(self, channel: Channel, contributors: int) -> float:
        """|decoded − exact clipped sum| per coordinate is below contributors·Δ·range."""
        return contributors * self.channel_range(channel) / self.encoding.scale
