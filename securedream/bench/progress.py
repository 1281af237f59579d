""" "run k of n" lines with an ETA for benchmarks that chain many runs.

A benchmark runs whole experiments one after another for tens of minutes; a per-run progress bar
says nothing about the whole. Before each run this prints which run it is and, once one run has
finished, an estimate of the time left (mean seconds per finished run times runs left).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


class RunCounter:
    """Counts the runs of a benchmark and prints one line before each to ``stream``."""

    def __init__(self, total: int, what: str = "run", stream: TextIO | None = None) -> None:
        self.total = total
        self.what = what
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.started = time.perf_counter()

    def start(self, label: str) -> None:
        elapsed = time.perf_counter() - self.started
        if self.done:
            left = elapsed / self.done * (self.total - self.done)
            eta = f"; {_duration(elapsed)} so far, about {_duration(left)} left"
        else:
            eta = ""
        print(f"{self.what} {self.done + 1} of {self.total}: {label}{eta}", file=self.stream)
        self.stream.flush()

    def finish(self) -> None:
        self.done += 1
