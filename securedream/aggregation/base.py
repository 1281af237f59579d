"""The Aggregator interface between the CoDream server and whatever computes sums."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import torch


class Channel(StrEnum):
    """What is being summed; privacy accounting and byte counts are kept per channel."""

    DREAM_GRADIENT = "dream_gradient"
    DREAM_DELTA = "dream_delta"
    LOGITS = "logits"
    GENERATOR_DELTA = "generator_delta"  # CoDream-fast: change in (generator weights, latents)


@dataclass(frozen=True)
class AggregateResult:
    """The sum over ``contributors`` and what each client sent and received to produce it."""

    total: torch.Tensor
    contributors: tuple[int, ...]
    bytes_up: Mapping[int, int] = field(default_factory=dict)
    bytes_down: Mapping[int, int] = field(default_factory=dict)


class Aggregator(ABC):
    """Sums client contributions for the server.

    ``start_round`` / ``end_round`` bracket one CoDream round so that an implementation can run one
    protocol session per round; ``aggregate`` is called once per release (dream step or soft-label
    snapshot). Implementations return only the sum; the server divides by the *public* client count.
    """

    name: str = "abstract"

    def start_round(self, round_index: int, client_ids: Sequence[int]) -> None:  # noqa: B027
        """Called before the first aggregation of a round."""

    def end_round(self) -> None:  # noqa: B027
        """Called after the last aggregation of a round."""

    def active_clients(self, client_ids: Sequence[int]) -> list[int]:
        """Clients still taking part in this round (a dropped client is out until the next)."""
        return list(client_ids)

    def finish(self, result: AggregateResult, *, channel: Channel) -> AggregateResult:
        """The server's last step on a sum: nothing here; a DP wrapper adds noise and records.

        Called by :meth:`aggregate` and, where the sum was computed elsewhere (Flower's remote
        secure sum), by whoever obtained it, so the release is finished the same way.
        """
        return result

    @abstractmethod
    def aggregate(
        self, contributions: Mapping[int, torch.Tensor], *, channel: Channel, step: int
    ) -> AggregateResult:
        """Return the sum of ``contributions`` (all tensors share one shape)."""


def check_contributions(contributions: Mapping[int, torch.Tensor]) -> torch.Size:
    """Shared input checks: at least one contribution, one shape, finite values."""
    if not contributions:
        raise ValueError("aggregate: no contributions (every client dropped?)")
    shapes = {tuple(t.shape) for t in contributions.values()}
    if len(shapes) != 1:
        raise ValueError(f"aggregate: contributions have different shapes {sorted(shapes)}")
    # one host synchronisation for all clients (a GPU's queue is not drained once per client)
    finite = torch.stack([torch.isfinite(t).all() for t in contributions.values()]).tolist()
    for client, ok in zip(contributions, finite, strict=True):
        if not ok:
            raise ValueError(f"aggregate: client {client} sent a non-finite value")
    return next(iter(contributions.values())).shape
