"""The seam between a CoDream round and its clients: a cohort answers with *sums*.

Why a seam here: the round logic (:mod:`securedream.rounds.codream`, the dreaming loop in
:mod:`securedream.rounds.server`) must be one copy whichever engine carries the messages. The round
asks a :class:`Cohort` to train, to answer a dream request with the sum of the clients'
contributions (an :class:`AggregateResult` from the run's aggregation stack, never a client's own
value), to distil from new buffer entries and to evaluate. :class:`InProcessCohort` holds the
client objects and calls the stack directly; ``engines.flower.cohort.FlowerCohort`` sends one
message per node per request and obtains the same sums, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from securedream.aggregation import Aggregator, Channel
from securedream.comm import CommLedger, tensor_bytes
from securedream.dreams import DreamLossWeights
from securedream.dreams.terms import LossTerms


class DreamingClient(Protocol):
    """What an in-process cohort needs from a client object."""

    client_id: int

    def dream_gradient(
        self, dreams: torch.Tensor, weights: DreamLossWeights
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def dream_delta(
        self, dreams: torch.Tensor, weights: DreamLossWeights, steps: int, lr: float
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def dream_logits(self, dreams: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class DreamRequest:
    """One release: what every active client computes on ``dreams`` (channel says which)."""

    channel: Channel
    dreams: torch.Tensor
    step: int
    weights: DreamLossWeights | None = None  # gradient and delta requests
    local_steps: int = 1
    local_lr: float = 0.0


@dataclass(frozen=True)
class DreamSum:
    """The stack's release for one request, and the diagnostics the run discloses.

    ``terms`` (mean dream-loss terms over the clients that answered) and ``norms`` (each
    answering client's contribution norm) are empty unless per-client metrics are disclosed.
    """

    total: torch.Tensor
    contributors: tuple[int, ...]
    terms: Mapping[str, float] = field(default_factory=dict)
    norms: tuple[float | torch.Tensor, ...] = ()  # device tensors in-process (read once a round)


class Cohort(Protocol):
    """The clients of a run as one round sees them."""

    ledger: CommLedger  # bytes each client sent and received this round
    aggregator: Aggregator  # the run's stack (its nested stage seconds are reported)

    def begin_round(self, round_index: int) -> None:
        """Start a round (Flower: find returning nodes, reset the round's ledger)."""

    def train(self, round_index: int) -> dict[str, Any]:
        """Local training of every client; the record entries it yields (losses where
        disclosed)."""

    def members(self) -> list[int]:
        """The clients taking part in this round's dreaming."""

    def dream(self, request: DreamRequest) -> DreamSum:
        """The sum of the active clients' answers to ``request``."""

    def distill(
        self,
        round_index: int,
        entries: Sequence[tuple[torch.Tensor, torch.Tensor]],
        buffer: Sequence[tuple[torch.Tensor, torch.Tensor]],
        due: bool,
    ) -> list[float | None] | None:
        """Deliver the round's new buffer ``entries`` (dreams, soft labels); when ``due`` every
        client distils from ``buffer``: its losses, None where a client keeps its own."""

    def evaluate(self, round_index: int) -> list[float | None]:
        """Each client's test accuracy, None where a client keeps its own."""

    def round_info(self) -> dict[str, Any]:
        """Engine facts for the round record (Flower: roster and messages)."""


def mean_terms(per_client: Sequence[Mapping[str, float]]) -> Mapping[str, float]:
    """Mean of each dream-loss term over the clients, left on the device where they are."""
    if not per_client:
        return {}
    if all(isinstance(t, LossTerms) for t in per_client):
        return LossTerms.mean(per_client)  # type: ignore[arg-type]
    keys = per_client[0].keys()
    return {k: sum(t[k] for t in per_client) / len(per_client) for k in keys}


def answer(client: DreamingClient, request: DreamRequest) -> tuple[torch.Tensor, dict[str, float]]:
    """One client's contribution to ``request`` (in-process, or on its Flower node)."""
    if request.channel is Channel.LOGITS:
        return client.dream_logits(request.dreams), {}
    assert request.weights is not None
    if request.channel is Channel.DREAM_GRADIENT:
        return client.dream_gradient(request.dreams, request.weights)
    return client.dream_delta(
        request.dreams, request.weights, request.local_steps, request.local_lr
    )


class InProcessCohort:
    """Client objects in this process and the aggregation stack that sums their answers.

    ``sampler`` (client sampling, :mod:`securedream.population`) names the clients asked for
    each release, by release index; without it every client answers every release.
    """

    def __init__(
        self,
        clients: Sequence[DreamingClient],
        aggregator: Aggregator,
        ledger: CommLedger,
        *,
        per_client_diagnostics: bool = True,
        sampler: Callable[[int], Sequence[DreamingClient]] | None = None,
    ) -> None:
        self.clients = list(clients)
        self.aggregator = aggregator
        self.ledger = ledger
        self.per_client_diagnostics = per_client_diagnostics
        self.sampler = sampler
        self.releases = 0

    def _active(self, asked: Sequence[DreamingClient]) -> list[DreamingClient]:
        """Clients the aggregator still counts this round; the server stops sending to others."""
        keep = set(self.aggregator.active_clients([c.client_id for c in asked]))
        return [c for c in asked if c.client_id in keep]

    def dream(self, request: DreamRequest) -> DreamSum:
        asked = self.clients if self.sampler is None else self.sampler(self.releases)
        self.releases += 1
        active = self._active(asked)
        dreams, channel = request.dreams, request.channel
        self.ledger.received([c.client_id for c in active], tensor_bytes(dreams), "dreams")
        responses: dict[int, torch.Tensor] = {}
        terms: list[Mapping[str, float]] = []
        for client in active:
            value, client_terms = answer(client, request)
            responses[client.client_id] = value.to(dreams.device)
            terms.append(client_terms)
        norms: tuple[torch.Tensor, ...] = ()
        if self.per_client_diagnostics:  # kept on the device: no host synchronisation per step
            norms = tuple(torch.linalg.vector_norm(v.detach()).double() for v in responses.values())
        result = self.aggregator.aggregate(responses, channel=channel, step=request.step)
        self.ledger.sent(result.bytes_up, channel.value)
        self.ledger.received_each(result.bytes_down, channel.value)
        if channel is Channel.LOGITS:
            # every client distils from the buffer, so clients that dropped get the dreams too
            everyone = [c.client_id for c in self.clients]
            self.ledger.received(everyone, tensor_bytes(result.total), "soft_labels")
            answered = {c.client_id for c in active}
            missed = [k for k in everyone if k not in answered]
            self.ledger.received(missed, tensor_bytes(dreams), "dreams")
        return DreamSum(
            total=result.total.to(dreams.device),
            contributors=tuple(result.contributors),
            terms=mean_terms(terms) if self.per_client_diagnostics else {},
            norms=norms,
        )
