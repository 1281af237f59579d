"""Dream-loss terms that stay on the device until someone reads them.

Why: a dream step computes eight scalar terms per client for logging; converting each to a Python
float is a host synchronisation, eight per client per step, which on a GPU stalls the queue of
kernels the step has launched. :class:`LossTerms` keeps them as one stacked tensor and copies it to
the host once, on first read (at the end of a round, when the server reports its final terms).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch


class LossTerms(Mapping[str, float]):
    """A read-only ``{name: float}`` mapping backed by one detached tensor of the values."""

    def __init__(self, values: Mapping[str, torch.Tensor]) -> None:
        self._names = tuple(values)
        # float64 on the device: the same numbers as Python floats of the float32 terms
        self._stacked = torch.stack([v.detach().double().reshape(()) for v in values.values()])
        self._floats: dict[str, float] | None = None

    def _read(self) -> dict[str, float]:
        if self._floats is None:  # the one host copy
            self._floats = dict(zip(self._names, self._stacked.tolist(), strict=True))
        return self._floats

    @classmethod
    def mean(cls, per_client: Sequence[LossTerms]) -> LossTerms:
        """Each term's mean over clients, on the device (no host copy), added in client order
        as a Python sum of the floats would add them."""
        names = per_client[0]._names
        if any(t._names != names for t in per_client):
            raise ValueError("LossTerms.mean: clients report different terms")
        total = per_client[0]._stacked
        for t in per_client[1:]:
            total = total + t._stacked
        total = total / len(per_client)
        return cls(dict(zip(names, total.unbind(), strict=True)))

    def __getitem__(self, name: str) -> float:
        return self._read()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"LossTerms({self._read()!r})"
