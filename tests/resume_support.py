"""The smallest smoke run the resume, fault-injection and bad-input tests share."""

from __future__ import annotations

TINY = [
    "rounds=2",
    "dreams.global_steps=2",
    "dreams.batch_size=8",
    "data.samples_per_client=40",
    "distill.epochs=1",
    "clients.warmup_epochs=0",
    "threads=1",
]


def run_args(*overrides: str) -> list[str]:
    """``securedream run`` arguments for the tiny smoke run with ``overrides`` on top."""
    sets = [arg for item in (*TINY, *overrides) for arg in ("--set", item)]
    return ["run", "--preset", "smoke", *sets, "--quiet"]
