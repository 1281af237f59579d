"""The plain aggregator and the server's use of it (sum only, divided by the public count)."""

from __future__ import annotations

import pytest
import torch

from securedream.aggregation import AggregateResult, Aggregator, Channel, PlainAggregator
from securedream.comm import CommLedger
from securedream.dreams import DreamLossWeights
from securedream.rounds.server import DreamingSettings, collaborative_dreaming, snapshot_steps


def test_plain_sum_and_bytes() -> None:
    contributions = {2: torch.ones(3, 2), 0: torch.full((3, 2), 2.0), 1: torch.zeros(3, 2)}
    result = PlainAggregator().aggregate(contributions, channel=Channel.LOGITS, step=0)
    assert torch.equal(result.total, torch.full((3, 2), 3.0))
    assert result.contributors == (0, 1, 2)
    assert result.bytes_up == {0: 24, 1: 24, 2: 24}


@pytest.mark.parametrize(
    ("contributions", "message"),
    [
        ({}, "no contributions"),
        ({0: torch.ones(2), 1: torch.ones(3)}, "different shapes"),
        ({0: torch.tensor([1.0, float("nan")])}, "non-finite"),
    ],
)
def test_plain_rejects_bad_input(contributions, message) -> None:
    with pytest.raises(ValueError, match=message):
        PlainAggregator().aggregate(contributions, channel=Channel.LOGITS, step=0)


class RecordingAggregator(Aggregator):
    """Records what it was asked to sum, and returns a fixed total to prove the server uses it."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[tuple[Channel, int, tuple[int, ...]]] = []

    def aggregate(self, contributions, *, channel, step):
        self.calls.append((channel, step, tuple(sorted(contributions))))
        total = torch.full_like(next(iter(contributions.values())), 6.0)
        return AggregateResult(total=total, contributors=tuple(sorted(contributions)))


class ConstantClient:
    def __init__(self, client_id: int) -> None:
        self.client_id = client_id

    def dream_gradient(self, dreams, weights):
        return torch.full_like(dreams, float(self.client_id)), {"total": 0.0}

    def dream_delta(self, dreams, weights, steps, lr):
        return torch.full_like(dreams, 0.5), {"total": 0.0}

    def dream_logits(self, dreams):
        return torch.zeros(dreams.shape[0], 3)


def test_server_uses_only_the_aggregate_divided_by_public_count() -> None:
    agg = RecordingAggregator()
    clients = [ConstantClient(k) for k in range(3)]
    settings = DreamingSettings(steps=4, lr=0.1, weights=DreamLossWeights(), snapshots=2)
    outcome = collaborative_dreaming(
        torch.zeros(2, 1, 2, 2), clients, agg, settings, public_count=3, ledger=CommLedger(range(3))
    )
    grad_calls = [c for c in agg.calls if c[0] is Channel.DREAM_GRADIENT]
    logit_calls = [c for c in agg.calls if c[0] is Channel.LOGITS]
    assert len(grad_calls) == 4 and len(logit_calls) == 2
    # soft labels = aggregate / public count = 6 / 3
    for _, soft in outcome.snapshots:
        assert torch.allclose(soft, torch.full((2, 3), 2.0))
    assert outcome.aggregations == 4


def test_fedavg_local_steps_moves_dreams_by_mean_delta() -> None:
    clients = [ConstantClient(k) for k in range(2)]
    settings = DreamingSettings(
        steps=3, lr=0.1, weights=DreamLossWeights(), local_steps=5, server_update="fedavg"
    )
    outcome = collaborative_dreaming(
        torch.zeros(1, 1, 2, 2),
        clients,
        PlainAggregator(),
        settings,
        public_count=2,
        ledger=CommLedger(range(2)),
    )
    final_dreams = outcome.snapshots[-1][0]
    assert torch.allclose(final_dreams, torch.full_like(final_dreams, 1.5))  # 3 steps × 0.5


def test_snapshot_steps_end_at_last_step() -> None:
    assert snapshot_steps(10, 1) == {9}
    assert snapshot_steps(10, 2) == {9, 4}
    assert len(snapshot_steps(7, 7)) == 7


def test_ledger_counts_dream_broadcasts_and_uploads() -> None:
    ledger = CommLedger(range(2))
    clients = [ConstantClient(k) for k in range(2)]
    settings = DreamingSettings(steps=2, lr=0.1, weights=DreamLossWeights())
    collaborative_dreaming(
        torch.zeros(4, 1, 2, 2), clients, PlainAggregator(), settings, public_count=2, ledger=ledger
    )
    dream_bytes = 4 * 4 * 4
    # 2 steps + 1 snapshot broadcast of dreams, plus soft labels (4×3 floats)
    assert ledger.down[0] == 3 * dream_bytes + 4 * 3 * 4
    # 2 gradient uploads + 1 logits upload
    assert ledger.up[1] == 2 * dream_bytes + 4 * 3 * 4
