"""Who sees the releases, and with how much of the noise they cannot remove.

One ledger records what each release was (noise multiplier, or Skellam parameter and the number
of client shares it is made of). Each party below reads the same releases with the shares it
knows taken out, so ε is stated for the party it holds against:

- ``observer``: another client, or anyone who sees the dreams and soft labels. Central noise is
  unknown to it; in distributed mode a client knows its own share, so it faces one share fewer.
- ``server``: receives every sum. Under central placement it adds the noise to the exact sum it
  has seen, so there is no DP against it; in distributed mode it faces every survivor's share.
- ``server+colluders``: the server with ``colluders`` clients that tell it their own shares.

Under the replace-one relation (any change of one client's data) the sensitivity is 2C instead of
the zero-out relation's C (the client is present and its contribution replaced by zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from securedream.privacy.accounting import PrivacyLedger

ADVERSARIES = ("observer", "server", "server+colluders")
SENSITIVITY_FACTOR = {"zero-out": 1.0, "replace-one": 2.0}


@dataclass(frozen=True)
class Adversary:
    """One party and the noise shares of each release it knows (None: it sees the exact sum)."""

    name: str
    known_shares: int | None
    protected: bool  # does the placement claim DP against this party?


def adversaries(placement: str, colluders: int) -> tuple[Adversary, ...]:
    if placement == "central":
        return (
            Adversary("observer", 0, True),
            Adversary("server", None, False),
            Adversary("server+colluders", None, False),
        )
    if placement == "distributed":
        return (
            Adversary("observer", 1, True),
            Adversary("server", 0, True),
            Adversary("server+colluders", colluders, True),
        )
    raise ValueError(f"placement must be central or distributed, got {placement!r}")


def epsilon_for(ledger: PrivacyLedger, adversary: Adversary, neighbouring: str) -> float:
    """ε of every release in ``ledger`` (all channels, composed) against ``adversary``."""
    if adversary.known_shares is None:
        return math.inf
    view = ledger.view(adversary.known_shares, SENSITIVITY_FACTOR[neighbouring])
    return math.inf if view is None else view.epsilon()


def epsilon_by_adversary(
    ledger: PrivacyLedger, placement: str, colluders: int, neighbouring: str
) -> dict[str, float]:
    return {a.name: epsilon_for(ledger, a, neighbouring) for a in adversaries(placement, colluders)}


def protected_epsilon(by_adversary: dict[str, float], placement: str, colluders: int) -> float:
    """The largest ε among the parties the placement claims to protect against."""
    names = [a.name for a in adversaries(placement, colluders) if a.protected]
    return max(by_adversary[n] for n in names)
