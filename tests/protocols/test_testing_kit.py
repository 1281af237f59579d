"""protocols.testing, the public property-testing kit, used on the in-process transport."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import ConfigError, ProtocolError, SecAggConfig, wire
from protocols.testing import (
    DoubleReveal,
    Equivocation,
    InProcessTransport,
    Replay,
    check_malicious_server,
    check_transport,
    configs,
    invalid_config_kwargs,
    malicious_behaviours,
    run_malicious_server,
    wire_mutations,
)


def test_in_process_transport_conforms() -> None:
    report = check_transport(InProcessTransport, max_examples=12, steps=3)
    assert report.examples >= 12 and report.aggregations > 0 and report.with_dropouts > 0
    assert report.refused_messages > 0


def test_in_process_transport_conforms_at_the_boundary_of_the_safe_region() -> None:
    check_transport(
        InProcessTransport, configs_strategy=configs(boundary=True), max_examples=8, steps=2
    )


class _Lossy(InProcessTransport):
    """A broken transport: reports the sum off by one in the first coordinate."""

    def aggregate(self, inputs, drop):
        res = super().aggregate(inputs, drop)
        wrong = res.integer_sum.copy()
        wrong[0] += 1
        return type(res)(wrong, res.survivors)


def test_the_harness_catches_a_wrong_sum() -> None:
    with pytest.raises(AssertionError):
        check_transport(_Lossy, max_examples=5, steps=1, shrink=False)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_malicious_server_behaviours_never_recover_an_input(data: st.DataObject) -> None:
    config = data.draw(configs(graphs=("complete",), max_clients=7))
    behaviour = data.draw(malicious_behaviours(config))
    check_malicious_server(config, behaviour)


@pytest.mark.parametrize("n,t", [(6, 4), (9, 6), (10, 6)])
def test_every_equivocation_fails_against_accepted_active_thresholds(n: int, t: int) -> None:
    config = SecAggConfig(n, threshold=t, mode="active")
    c = 1  # ceil(0.1 n)
    for size in sorted({1, t - 2, t - 1, t, n - t, n - t + 1, n // 2, n - 1} - {0}):
        group_a = frozenset(range(size))
        for colluders in (frozenset(), frozenset({n - 1})):
            behaviour = Equivocation(0, group_a - colluders, colluders if c else frozenset())
            outcome = check_malicious_server(config, behaviour)
            assert outcome.recovered_both() == []


def test_the_refused_thresholds_would_let_an_equivocating_server_recover_an_input() -> None:
    """Why (6, 3) is refused: forcing it past validation, the attack of issue 10 succeeds."""
    config = SecAggConfig(6, threshold=4, mode="active")
    object.__setattr__(config, "_derived", (5, 3))  # bypass validation: test only
    outcome = run_malicious_server(config, Equivocation(0, frozenset({0, 1, 2})))
    assert outcome.recovered_both() == [(0, 0)]
    with pytest.raises(AssertionError, match="recovered both secrets"):
        check_malicious_server(config, Equivocation(0, frozenset({0, 1, 2})))


@pytest.mark.parametrize("active", [False, True])
def test_double_reveal_and_replays_are_refused(active: bool) -> None:
    config = SecAggConfig(5, threshold=4, mode="active" if active else "semi-honest")
    outcome = check_malicious_server(config, DoubleReveal(victim=1, holder=2))
    assert outcome.refusals[:2] == ["DoubleRevealRefused", "ReplayedMessage"]
    for what in ("roster", "forward", "unmask"):
        outcome = check_malicious_server(config, Replay(what, target=3))
        assert outcome.refusals == ["ReplayedMessage"]


@given(kwargs=invalid_config_kwargs())
def test_invalid_config_strategy_only_yields_refused_configs(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        SecAggConfig(**kwargs)


def _genuine_frames() -> list[bytes]:
    """Every client frame of a short session (captured once, replayed by the property)."""
    transport = InProcessTransport(SecAggConfig(4, threshold=3))
    frames: list[bytes] = []
    original = transport.server.receive

    def capture(frame: bytes, sender: int | None = None) -> None:
        frames.append(frame)
        original(frame, sender)

    transport.server.receive = capture  # type: ignore[method-assign]
    transport.aggregate({i: np.arange(3) for i in range(4)}, {})
    return frames


FRAMES = _genuine_frames()


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_wire_mutations_decode_or_raise_protocol_errors(data: st.DataObject) -> None:
    limits = wire.WireLimits.for_config(4, 1 << 27, 32)
    frame = data.draw(st.sampled_from(FRAMES))
    hostile = data.draw(wire_mutations(frame))
    try:
        decoded = wire.decode(hostile, limits)
    except ProtocolError:
        return
    assert wire.encode(decoded) == hostile  # what decodes is canonical


def test_the_worked_example_runs() -> None:
    """docs/protocol-testing.md's worked example (a new transport) passes the harness."""
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "protocol-testing.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    example = next(b for b in blocks if "class QueueTransport" in b)
    namespace: dict = {}
    exec(compile(example, str(doc), "exec"), namespace)  # our own documentation
    # the doc's test, with its assertions made here on the report it gets
    report = namespace["check_transport"](
        namespace["QueueTransport"],
        configs_strategy=namespace["configs"](dim=4, modes=("semi-honest",)),
        max_examples=10,
    )
    assert report.with_dropouts and report.refused_messages
    assert "def test_queue_transport_conforms" in example
