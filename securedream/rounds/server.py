"""The CoDream server's side of knowledge extraction and aggregation.

The server owns the dreams and an Adam optimiser over them. At each global step it broadcasts the
dreams, obtains the *sum* of client responses from the aggregator (never an individual response),
divides by the public client count and steps. At snapshot steps it obtains the mean of client logits
the same way: those are the soft labels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from securedream.aggregation import Aggregator, Channel
from securedream.comm import CommLedger
from securedream.dreams import DreamLossWeights, mean_entropy
from securedream.rounds.cohort import (
    Cohort,
    DreamingClient,
    DreamRequest,
    DreamSum,
    InProcessCohort,
)

__all__ = [
    "DreamingClient",
    "DreamingOutcome",
    "DreamingSettings",
    "collaborative_dreaming",
    "dream_over",
    "snapshot_steps",
    "student_entropy_ascent",
]


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
    final_terms: Mapping[str, float] = field(default_factory=dict)
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


def _track_norms(outcome: DreamingOutcome, channel: str, answer: DreamSum) -> None:
    """Running mean over the round of the mean client contribution norm on ``channel``.

    In-process the norms are device tensors: the mean stays on the device during the round (no
    host synchronisation per step) and :func:`_finish_norms` reads it once.
    """
    if not answer.norms:
        return
    current = answer.norms[0]
    for norm in answer.norms[1:]:  # in order: the figures a float() per client gave
        current = current + norm
    current = current / len(answer.norms)
    count = outcome.norm_counts.get(channel, 0)
    previous = outcome.contribution_norms.get(channel, 0.0)
    outcome.contribution_norms[channel] = (previous * count + current) / (count + 1)  # type: ignore[assignment]
    outcome.norm_counts[channel] = count + 1


def _finish_norms(outcome: DreamingOutcome) -> None:
    outcome.contribution_norms = {k: float(v) for k, v in outcome.contribution_norms.items()}


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
    """:func:`dream_over` the in-process ``clients`` summed by ``aggregator``.

    With ``per_client_diagnostics`` False (a secure or private run, see
    :mod:`securedream.diagnostics`) the loop keeps nothing of a client's response but what goes
    into the aggregator: no contribution norms, no dream-loss terms. ``cohort`` (client sampling,
    :mod:`securedream.population`) names the clients asked for each release, by release index.
    """
    members = InProcessCohort(
        clients,
        aggregator,
        ledger,
        per_client_diagnostics=per_client_diagnostics,
        sampler=cohort,
    )
    return dream_over(
        initial, members, settings, public_count=public_count, student=student, on_step=on_step
    )


def dream_over(
    initial: torch.Tensor,
    cohort: Cohort,
    settings: DreamingSettings,
    *,
    public_count: float,
    student: torch.nn.Module | None = None,
    on_step: Callable[[int], None] | None = None,
) -> DreamingOutcome:
    """Optimise one dream batch for ``settings.steps`` aggregations; return the snapshots.

    Every client answer reaches the server only as the cohort's sum; ``public_count`` (never the
    number of survivors) is the divisor.
    """
    dreams = initial.detach().clone()
    param = torch.nn.Parameter(dreams)
    optimizer = torch.optim.Adam([param], lr=settings.lr)
    take_snapshot = snapshot_steps(settings.steps, settings.snapshots)
    outcome = DreamingOutcome()
    channel = Channel.DREAM_GRADIENT if settings.local_steps == 1 else Channel.DREAM_DELTA

    for step in range(settings.steps):
        current = param.detach()
        request = DreamRequest(
            channel, current, step, settings.weights, settings.local_steps, settings.local_lr
        )
        answer = cohort.dream(request)
        _track_norms(outcome, channel.value, answer)
        outcome.aggregations += 1
        outcome.survivors.append(len(answer.contributors))
        mean = answer.total.to(current.device) / public_count
        outcome.final_terms = answer.terms

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
            snapshot = param.detach()
            logits = cohort.dream(DreamRequest(Channel.LOGITS, snapshot, step))
            _track_norms(outcome, Channel.LOGITS.value, logits)
            outcome.survivors.append(len(logits.contributors))
            soft = logits.total.to(snapshot.device) / public_count
            outcome.snapshots.append((snapshot.clone(), soft))
        if on_step is not None:
            on_step(step)
    outcome.final_terms = dict(outcome.final_terms)  # the last step's, read once after the loop
    _finish_norms(outcome)
    return outcome
