"""Secure aggregation off the critical path gives what the unpipelined path gives.

The pipelined aggregator (masks, key bundles and rounding bits prepared in worker threads, the next
round's session set up ahead) must release the same sums, survivors and wire bytes as the serial
one, under planned and simulated dropouts, across rounds, with seeded and OS rounding; every
round still runs a fresh session.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from securedream.aggregation import Channel
from securedream.aggregation.secure import (
    SecureAggregationSettings,
    SecureAggregator,
    parse_dropouts,
)


def _contributions(n: int, step: int, shape: tuple[int, ...]) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return {c: torch.rand(shape, generator=g) * 2 - 1 for c in range(n)}


def _run(pipeline: bool, n: int, rounds: int, steps: int, **extra: object) -> list[tuple]:
    settings = SecureAggregationSettings(
        ranges={"dream": 1.0, "logits": 8.0}, seed=3, pipeline=pipeline, **extra
    )
    agg = SecureAggregator(n, settings)
    out = []
    sessions = set()
    try:
        for r in range(rounds):
            agg.start_round(r, list(range(n)))
            assert agg.session is not None
            sessions.add(agg.session.session_id)
            for s in range(steps):
                logits = s == steps - 1
                shape = (3, 10) if logits else (4, 1, 6, 6)
                active = agg.active_clients(list(range(n)))
                contributions = {
                    c: v for c, v in _contributions(n, s, shape).items() if c in active
                }
                channel = Channel.LOGITS if logits else Channel.DREAM_GRADIENT
                res = agg.aggregate(contributions, channel=channel, step=s)
                out.append(
                    (
                        r,
                        s,
                        res.total.numpy().copy(),
                        res.contributors,
                        dict(res.bytes_up),
                        dict(res.bytes_down),
                    )
                )
            agg.end_round()
    finally:
        agg.close()
    assert len(sessions) == rounds  # a fresh session (fresh keys) every round
    return out


def _same(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x[:2] == y[:2]
        assert np.array_equal(x[2], y[2]), f"round {x[0]} step {x[1]}: sums differ"
        assert x[3:] == y[3:]


def test_pipelined_equals_serial_without_dropouts() -> None:
    pipelined = _run(True, 4, rounds=3, steps=4)
    _same(pipelined, _run(False, 4, rounds=3, steps=4))
    assert pipelined and all(len(x[3]) == 4 for x in pipelined)  # every client in every sum


def test_pipelined_equals_serial_with_planned_dropouts() -> None:
    planned = parse_dropouts(
        ["1:masked_input:1:0", "2:unmask:2:1", "0:advertise:0:2", "3:share:0:1", "2:unmask:0"],
        6,
    )
    a = _run(True, 6, rounds=3, steps=4, planned=planned, threshold=3)
    b = _run(False, 6, rounds=3, steps=4, planned=planned, threshold=3)
    _same(a, b)
    assert any(len(x[3]) < 6 for x in a)  # the schedule did drop clients


def test_pipelined_equals_serial_with_simulated_dropouts() -> None:
    a = _run(True, 6, rounds=3, steps=5, dropout_rate=0.3, threshold=3)
    b = _run(False, 6, rounds=3, steps=5, dropout_rate=0.3, threshold=3)
    _same(a, b)
    assert any(len(x[3]) < 6 for x in a)


def test_os_rounding_sums_within_bound() -> None:
    n = 4
    settings = SecureAggregationSettings(ranges={"dream": 1.0}, secure_rounding=True)
    agg = SecureAggregator(n, settings)
    try:
        for r in range(2):
            agg.start_round(r, list(range(n)))
            for s in range(3):
                contributions = _contributions(n, s, (50,))
                res = agg.aggregate(contributions, channel=Channel.DREAM_GRADIENT, step=s)
                exact = sum(contributions.values())
                bound = agg.error_bound(Channel.DREAM_GRADIENT, n)
                assert torch.max(torch.abs(res.total - exact)) <= bound + 1e-6  # + float32 output
            agg.end_round()
        assert agg.ahead_seconds > 0  # work was done ahead, in worker threads
    finally:
        agg.close()


def test_dimension_change_mid_round_is_correct() -> None:
    """A guess of the next length that is wrong (logits after dreams) only costs time."""
    n = 3
    agg = SecureAggregator(n, SecureAggregationSettings(ranges={"dream": 1.0, "logits": 1.0}))
    try:
        agg.start_round(0, list(range(n)))
        for s, shape in enumerate([(40,), (7,), (40,), (90,)]):
            contributions = _contributions(n, s, shape)
            res = agg.aggregate(contributions, channel=Channel.DREAM_GRADIENT, step=s)
            exact = sum(contributions.values())
            bound = agg.error_bound(Channel.DREAM_GRADIENT, n) + 1e-6  # + float32 output
            assert torch.max(torch.abs(res.total - exact)) <= bound
        agg.end_round()
    finally:
        agg.close()


@pytest.mark.parametrize("pipeline", [True, False])
def test_non_finite_contribution_still_refused(pipeline: bool) -> None:
    agg = SecureAggregator(3, SecureAggregationSettings(pipeline=pipeline))
    try:
        agg.start_round(0, [0, 1, 2])
        bad = _contributions(3, 0, (5,))
        bad[1][2] = float("nan")
        with pytest.raises(ValueError, match="non-finite"):
            agg.aggregate(bad, channel=Channel.DREAM_GRADIENT, step=0)
    finally:
        agg.close()


@pytest.mark.parametrize("pipeline", [True, False])
def test_batched_encoding_is_each_clients_reference_encoding(pipeline: bool) -> None:
    """The sum is, bit for bit, that of each client's fixed_point_encode with its rounding
    stream position (what a Flower node computes for itself)."""
    from securedream.contribution import fixed_point_encode, rounding_stream

    n, seed = 3, 11
    agg = SecureAggregator(
        n, SecureAggregationSettings(ranges={"dream": 0.7}, seed=seed, pipeline=pipeline)
    )
    scale = agg.encoding.scale
    try:
        agg.start_round(2, list(range(n)))
        position = 0
        for s in range(3):
            contributions = _contributions(n, s, (4, 5))
            res = agg.aggregate(contributions, channel=Channel.DREAM_GRADIENT, step=s)
            reference = sum(
                fixed_point_encode(
                    contributions[c], 0.7, scale, rounding_stream(seed, 2, position + c)
                )
                for c in range(n)
            )
            position += n
            expected = torch.from_numpy(reference.astype(np.float64) / scale * 0.7).float()
            assert torch.equal(res.total, expected.reshape(4, 5))
        agg.end_round()
    finally:
        agg.close()
