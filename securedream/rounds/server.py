"""The CoDream server's side of knowledge extraction and aggregation.

The server owns the dreams and an Adam optimiser over them. At each global step it broadcasts the
dreams, obtains the *sum* of client responses from the aggregator (never an individual response),
divides by the public client count and steps. At snapshot steps it obtains the mean of client logits
the same way: those are the soft labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from securedream.aggregation import Aggregator, Channel
from securedream.comm import CommLedger, tensor_bytes
from securedream.dreams import DreamLossWeights, mean_entropy


class DreamingClient(Protocol):
    """What the server needs from a client endpoint (in-process object or a remote proxy)."""

    client_id: int

    def dream_gradient(
        self, dreams: torch.Tensor, weights: DreamLossWeights
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def dream_delta(
        self, dreams: torch.Tensor, weights: DreamLossWeights, steps: int, lr: float
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def dream_logits(self, dreams: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class DreamingSettings:
    steps: int
    lr: float
    weights: DreamLossWeights
    local_steps: int = 1
    local_lr: float = 0.05
    server_update: str = "fedavg"
    snapshots: int = 1
    adaptive_weight: float = 0.0  # > 0 enables the student entropy-ascent term


@dataclass
class DreamingOutcome:
    snapshots: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    final_terms: dict[str, float] = field(default_factory=dict)
    aggregations: int = 0
    # mean L2 norm of one client's contribution per channel: what privacy.clip_* should be near
    # (collected only when the run discloses per-client diagnostics)
    contribution_norms: dict[str, float] = field(default_factory=dict)
    norm_counts: dict[str, int] = field(default_factory=dict)
    # clients whose contribution is in each sum, one entry per aggregation in the order run
    survivors: list[int] = field(default_factory=list)


def snapshot_steps(steps: int, snapshots: int) -> set[int]:
    """Evenly spaced steps ending with the last one: ``snapshots`` of them."""
    return {steps - 1 - round(i * steps / snapshots) for i in range(snapshots)}


def _active(clients: Sequence[DreamingClient], aggregator: Aggregator) -> list[DreamingClient]:
    """Clients the aggregator still counts this round; the server stops sending to the others."""
    keep = set(aggregator.active_clients([c.client_id for c in clients]))
    return [c for c in clients if c.client_id in keep]


def _track_norms(outcome: DreamingOutcome, channel: str, values: Iterable[torch.Tensor]) -> None:
    """Running mean over the round of the mean client contribution norm on ``channel``.

    Kept as a device tensor during the round (no host synchronisation per step) and read once by
    :func:`_finish_norms`.
    """
    norms = [torch.linalg.vector_norm(v.detach()).double() for v in values]
    if not norms:
        return
    current = norms[0]
    for norm in norms[1:]:  # in order, in float64: the figures a float() per client gave
        current = current + norm
    current = current / len(norms)
    count = outcome.norm_counts.get(channel, 0)
    previous = outcome.contribution_norms.get(channel, 0.0)
    outcome.contribution_norms[channel] = (previous * count + current) / (count + 1)  # type: ignore[assignment]
    outcome.norm_counts[channel] = count + 1


def _finish_norms(outcome: DreamingOutcome) -> None:
    outcome.contribution_norms = {k: float(v) for k, v in outcome.contribution_norms.items()}


def _mean_terms(per_client: Sequence[Mapping[str, float]]) -> dict[str, float]:
    if not per_client:
        return {}
    keys = per_client[0].keys()
    return {k: sum(t[k] for t in per_client) / len(per_client) for k in keys}


def student_entropy_ascent(
    student: torch.nn.Module, dreams: torch.Tensor, weight: float
) -> torch.Tensor:
    """Gradient of −λ·H(student(x)): moves dreams to where the server's student is unsure."""
    student.eval()
    x = dreams.detach().requires_grad_(True)
    loss = -weight * mean_entropy(student(x))
    (grad,) = torch.autograd.grad(loss, [x])
    return grad.detach()


def collaborative_dreaming(
    initial: torch.Tensor,
    clients: Sequence[DreamingClient],
    aggregator: Aggregator,
    settings: DreamingSettings,
    *,
    public_count: float,
    ledger: CommLedger,
    student: torch.nn.Module | None = None,
    on_step: Callable[[int], None] | None = None,
    per_client_diagnostics: bool = True,
    cohort: Callable[[int], Sequence[DreamingClient]] | None = None,
) -> DreamingOutcome:
    """Optimise one dream batch for ``settings.steps`` aggregations; return the snapshots.

    With ``per_client_diagnostics`` False (a secure or private run, see
    :mod:`securedream.diagnostics`) the loop keeps nothing of a client's response but what goes
    into the aggregator: no contribution norms, no dream-loss terms.

    ``cohort`` (client sampling, :mod:`securedream.population`) names the clients asked for each
    release, by release index (global steps and snapshots counted together); without it every
    client answers every release. ``public_count`` stays the divisor either way.
    """
    dreams = initial.detach().clone()
    param = torch.nn.Parameter(dreams)
    optimizer = torch.optim.Adam([param], lr=settings.lr)
    take_snapshot = snapshot_steps(settings.steps, settings.snapshots)
    outcome = DreamingOutcome()
    channel = Channel.DREAM_GRADIENT if settings.local_steps == 1 else Channel.DREAM_DELTA
    terms: list[Mapping[str, float]] = []

    for step in range(settings.steps):
        current = param.detach()
        asked = clients if cohort is None else cohort(outcome.aggregations + len(outcome.snapshots))
        active = _active(asked, aggregator)
        ledger.received([c.client_id for c in active], tensor_bytes(current), "dreams")
        responses: dict[int, torch.Tensor] = {}
        terms = []
        for client in active:
            if settings.local_steps == 1:
                value, client_terms = client.dream_gradient(current, settings.weights)
            else:
                value, client_terms = client.dream_delta(
                    current, settings.weights, settings.local_steps, settings.local_lr
                )
            responses[client.client_id] = value.to(current.device)
            if per_client_diagnostics:
                terms.append(client_terms)
        if per_client_diagnostics:
            _track_norms(outcome, channel.value, responses.values())
        result = aggregator.aggregate(responses, channel=channel, step=step)
        outcome.aggregations += 1
        outcome.survivors.append(len(result.contributors))
        ledger.sent(result.bytes_up, channel.value)
        ledger.received_each(result.bytes_down, channel.value)
        mean = result.total.to(current.device) / public_count

        optimizer.zero_grad(set_to_none=True)
        if settings.local_steps == 1:
            update = mean
            if student is not None and settings.adaptive_weight > 0:
                update = update + student_entropy_ascent(student, current, settings.adaptive_weight)
            param.grad = update
            optimizer.step()
        elif settings.server_update == "fedavg":
            with torch.no_grad():
                param.add_(mean)
        else:  # fedadam: the negative mean change is a pseudo-gradient
            param.grad = -mean
            optimizer.step()

        if step in take_snapshot:
            outcome.snapshots.append(
                _soft_labels(
                    param.detach(),
                    clients,
                    clients
                    if cohort is None
                    else cohort(outcome.aggregations + len(outcome.snapshots)),
                    aggregator,
                    step,
                    public_count,
                    ledger,
                    outcome,
                    per_client_diagnostics,
                )
            )
        if on_step is not None:
            on_step(step)
    outcome.final_terms = _mean_terms(terms)  # the last step's; read once, after the loop
    _finish_norms(outcome)
    return outcome


def _soft_labels(
    dreams: torch.Tensor,
    clients: Sequence[DreamingClient],
    asked: Sequence[DreamingClient],
    aggregator: Aggregator,
    step: int,
    public_count: float,
    ledger: CommLedger,
    outcome: DreamingOutcome,
    per_client_diagnostics: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean client logits on the dreams, obtained only as an aggregate."""
    active = _active(asked, aggregator)
    ledger.received([c.client_id for c in active], tensor_bytes(dreams), "dreams")
    logits = {c.client_id: c.dream_logits(dreams).to(dreams.device) for c in active}
    if per_client_diagnostics:
        _track_norms(outcome, Channel.LOGITS.value, logits.values())
    result = aggregator.aggregate(logits, channel=Channel.LOGITS, step=step)
    outcome.survivors.append(len(result.contributors))
    ledger.sent(result.bytes_up, Channel.LOGITS.value)
    ledger.received_each(result.bytes_down, Channel.LOGITS.value)
    soft = result.total.to(dreams.device) / public_count
    # every client distils from the buffer, so clients that dropped get the dreams here too
    ledger.received([c.client_id for c in clients], tensor_bytes(soft), "soft_labels")
    answered = {c.client_id for c in active}
    missed = [c.client_id for c in clients if c.client_id not in answered]
    ledger.received(missed, tensor_bytes(dreams), "dreams")
    return dreams.clone(), soft
