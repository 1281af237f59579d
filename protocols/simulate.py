"""One-call driver: run an aggregation (or a session of them) with a dropout schedule.

Why: tests, benchmarks and documentation examples want "these inputs, this config, these clients
drop at these stages -> the sum and the bytes" without touching the state machines.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from protocols.errors import ConfigError
from protocols.params import SecAggConfig
from protocols.session import AggregateResult, InProcessSession, Stage, parse_stage


@dataclass(frozen=True)
class SimulationResult:
    """All aggregations of a simulated session plus total bytes per client."""

    steps: tuple[AggregateResult, ...]
    bytes_up: Mapping[Hashable, int]
    bytes_down: Mapping[Hashable, int]

    @property
    def sum(self) -> np.ndarray:
        """Decoded sum of the last aggregation."""
        return self.steps[-1].sum

    @property
    def survivors(self) -> frozenset[Hashable]:
        """Survivors of the last aggregation."""
        return self.steps[-1].survivors


def simulate(
    inputs: Mapping[Hashable, object] | Sequence[Mapping[Hashable, object]],
    config: SecAggConfig,
    dropouts: Mapping[Hashable, object] | None = None,
    *,
    client_ids: Sequence[Hashable] | None = None,
    weights: Mapping[Hashable, float] | None = None,
) -> SimulationResult:
    """Run one aggregation (``inputs`` is a mapping) or a session (a sequence of mappings).

    ``dropouts`` maps a client to the stage at which it drops (``"advertise"``, ``"share"``,
    ``"masked_input"``, ``"consistency"``, ``"unmask"``), or, for sessions, to ``(step, stage)``.
    ``client_ids`` defaults to ``range(config.num_clients)``.
    """
    rounds = [inputs] if isinstance(inputs, Mapping) else list(inputs)
    if not rounds:
        raise ConfigError("inputs must hold at least one aggregation")
    schedule: dict[int, dict[Hashable, Stage]] = {}
    for cid, spec in (dropouts or {}).items():
        if isinstance(spec, tuple):
            if len(spec) != 2 or not isinstance(spec[0], int) or not 0 <= spec[0] < len(rounds):
                raise ConfigError(
                    f"dropouts[{cid!r}] must be a stage or (step, stage) with step in "
                    f"[0, {len(rounds) - 1}], got {spec!r}"
                )
            step, stage = spec
        else:
            step, stage = 0, spec
        schedule.setdefault(step, {})[cid] = parse_stage(stage)
    with InProcessSession(config, client_ids) as session:
        results = []
        for step, step_inputs in enumerate(rounds):
            out = session.dropped_clients
            usable = {c: x for c, x in step_inputs.items() if c not in out}
            drop = {c: s for c, s in schedule.get(step, {}).items() if c not in out}
            results.append(session.aggregate(usable, drop=drop, weights=weights))
        return SimulationResult(
            tuple(results), dict(session.total_bytes_up), dict(session.total_bytes_down)
        )
