"""Plain (non-secure) summation: the reference every other aggregator is compared against."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from securedream.aggregation.base import AggregateResult, Aggregator, Channel, check_contributions


class PlainAggregator(Aggregator):
    """The server receives each float32 contribution and adds them up in client order."""

    name = "plain"

    def aggregate(
        self, contributions: Mapping[int, torch.Tensor], *, channel: Channel, step: int
    ) -> AggregateResult:
        check_contributions(contributions)
        ordered = sorted(contributions)
        total = torch.zeros_like(contributions[ordered[0]], dtype=torch.float32)
        for client in ordered:
            total += contributions[client].to(torch.float32)
        sent = {c: contributions[c].numel() * 4 for c in ordered}
        return AggregateResult(total=total, contributors=tuple(ordered), bytes_up=sent)
