"""Counts the bytes each client sends and receives, from the tensors actually exchanged.

CoDream's claim that communication is independent of model size is shown by these counts, not
asserted: every broadcast and every upload goes through :class:`CommLedger`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import torch


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class CommLedger:
    """Per-round byte counts per client and direction, with a per-channel breakdown."""

    def __init__(self, client_ids: Iterable[int]) -> None:
        self.client_ids = list(client_ids)
        self.reset()

    def reset(self) -> None:
        self.up: dict[int, int] = dict.fromkeys(self.client_ids, 0)
        self.down: dict[int, int] = dict.fromkeys(self.client_ids, 0)
        self.by_channel: dict[str, int] = defaultdict(int)

    def sent(self, per_client: Mapping[int, int], channel: str) -> None:
        for client, count in per_client.items():
            self.up[client] += int(count)
            self.by_channel[f"up/{channel}"] += int(count)

    def received_each(self, per_client: Mapping[int, int], channel: str) -> None:
        for client, count in per_client.items():
            self.down[client] += int(count)
            self.by_channel[f"down/{channel}"] += int(count)

    def received(self, clients: Iterable[int], count: int, channel: str) -> None:
        for client in clients:
            self.down[client] += int(count)
            self.by_channel[f"down/{channel}"] += int(count)

    def snapshot(self) -> dict[str, object]:
        return {
            "up": [self.up[c] for c in self.client_ids],
            "down": [self.down[c] for c in self.client_ids],
            "by_channel": dict(sorted(self.by_channel.items())),
        }
