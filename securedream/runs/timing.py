"""Stage times of a round, with the stages that run *inside* another one kept apart.

Secure aggregation and DP-noise sampling happen during dreaming, so their seconds are also part
of the dreaming stage. They are reported as their own stages to show what privacy costs, and left
out when a round's wall time is summed so nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Mapping

# stage name -> attribute of the aggregator (cumulative seconds) it is read from
NESTED_STAGES: dict[str, str] = {
    "secure_aggregation": "seconds",
    "dp_noise": "noise_seconds",
}


def nested_seconds(aggregator: object) -> dict[str, float]:
    """The aggregator's cumulative counters now; pass to :func:`nested_stage_seconds` later."""
    return {stage: float(getattr(aggregator, attr, 0.0)) for stage, attr in NESTED_STAGES.items()}


def nested_stage_seconds(aggregator: object, before: Mapping[str, float]) -> dict[str, float]:
    """Seconds each nested stage took since ``before``; stages that did not run are omitted."""
    now = nested_seconds(aggregator)
    return {stage: now[stage] - before[stage] for stage in now if now[stage] - before[stage] > 0}


def round_seconds(stage_seconds: Mapping[str, float]) -> float:
    """Wall time of a round: the sum of its top-level stages."""
    return sum(v for stage, v in stage_seconds.items() if stage not in NESTED_STAGES)
