"""Poisson client sampling: which clients answer each release (or each round).

Each client joins a cohort independently with probability q. The server divides every sum by the
*public expected* cohort q·N, never by the realised cohort size (that would make the scale depend on
who was sampled and leak it into every release).

Randomness: with ``secret=True`` the inclusion coins come from ``os.urandom`` (a CSPRNG), so nobody
who knows the run's seed and config can predict a cohort; that is what amplification against
observers needs (see :mod:`securedream.population.accounting`). With ``secret=False`` the coins come
from a stream derived from the run seed, which makes non-private runs reproducible but gives no
amplification to anyone. The server always learns the cohorts it forms.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from securedream.seeding import numpy_generator

SAMPLINGS = ("release", "round")


@dataclass(frozen=True)
class SamplingSettings:
    rate: float
    unit: str = "release"  # "release" | "round": how often a fresh cohort is drawn
    max_participations: int = 0  # cohorts a client may join over the run; 0 = no cap
    secret: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"rate: must be in (0, 1], got {self.rate}")
        if self.unit not in SAMPLINGS:
            raise ValueError(f"unit: {self.unit!r} is not one of {list(SAMPLINGS)}")
        if self.max_participations < 0:
            raise ValueError(f"max_participations: must be >= 0, got {self.max_participations}")


class CohortSampler:
    """Draws cohorts for a population of ``count`` clients and enforces the participation cap."""

    def __init__(self, count: int, settings: SamplingSettings, seed: int) -> None:
        self.count = count
        self.settings = settings
        self.seed = seed
        self.participations = np.zeros(count, dtype=np.int64)
        self._round_cohort: tuple[int, np.ndarray] | None = None

    @property
    def expected_cohort(self) -> float:
        """q·N: the public divisor of every aggregate."""
        return self.settings.rate * self.count

    def _coins(self, *labels: object) -> np.ndarray:
        if self.settings.rate >= 1.0:
            return np.ones(self.count, dtype=bool)
        if self.settings.secret:
            raw = np.frombuffer(os.urandom(8 * self.count), dtype=np.uint64)
            uniform = (raw >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        else:
            uniform = numpy_generator(self.seed, "cohort", *labels).random(self.count)
        return uniform < self.settings.rate

    def _draw(self, *labels: object) -> np.ndarray:
        chosen = self._coins(*labels)
        cap = self.settings.max_participations
        if cap:
            chosen &= self.participations < cap
        ids = np.flatnonzero(chosen)
        self.participations[ids] += 1
        return ids

    def cohort(self, round_index: int, release_index: int) -> np.ndarray:
        """Sorted client ids answering release ``release_index`` of round ``round_index``."""
        if self.settings.unit == "round":
            if self._round_cohort is None or self._round_cohort[0] != round_index:
                self._round_cohort = (round_index, self._draw(round_index))
            return self._round_cohort[1]
        return self._draw(round_index, release_index)

    def state_dict(self) -> dict[str, list[int]]:
        return {"participations": self.participations.tolist()}
