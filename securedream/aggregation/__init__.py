"""How the server obtains sums of client contributions.

The CoDream server never reads an individual client's dream gradient or logits: it only receives
what an :class:`Aggregator` returns. Plain summation lives here; secure aggregation and differential
privacy plug in behind the same interface.
"""

from securedream.aggregation.base import AggregateResult, Aggregator, Channel
from securedream.aggregation.plain import PlainAggregator

__all__ = ["AggregateResult", "Aggregator", "Channel", "PlainAggregator"]
