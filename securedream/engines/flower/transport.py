"""Server side of the Flower transport: node roster, message exchange, the remote secure sum.

:class:`FlowerLink` sends one message per node and collects the replies, counting bytes;
``engines.flower.cohort.FlowerCohort`` uses it to answer the round's requests (the round logic is
the in-process one, :mod:`securedream.rounds.codream`).

:class:`FlowerSecureAggregator` drives the ``protocols.Server`` state machine of one session per
round and ships each stage's wire bytes in Flower messages (AdvertiseKeys/Roster/ShareKeys at the
start of a round, ForwardShares piggybacked on the first DREAM request, MaskedInput in DREAM
replies, UnmaskRequest/UnmaskShares in a relay exchange). The ``protocols.Client`` of each node
lives in its ClientApp; the server only ever holds masked vectors and the decoded sum.

A node that does not answer within the timeout, or answers with a Flower error, is *failed* for the
rest of the round: for secure aggregation that is exactly a protocol dropout (the server closes the
stage without it; the sum is unmasked if at least t clients remain, else
:class:`SecureAggregationAborted`); the next round starts a new session with whoever answers.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import Message, RecordDict

import protocols
from protocols.encoding import decode_integer_sum
from securedream.aggregation import AggregateResult, Channel
from securedream.aggregation.secure import (
    SecureAggregationAborted,
    SecureAggregationSettings,
    SecureAggregator,
)
from securedream.comm import CommLedger
from securedream.engines.flower import messages as m
from securedream.errors import SecureDreamError

log = logging.getLogger("securedream.flower")

# builds one DREAM request from its per-client extras and the protocol messages it carries
RequestBuilder = Callable[[Mapping[str, Any], Sequence[bytes]], RecordDict]


class FlowerRunError(SecureDreamError):
    """The Flower run cannot go on (no client answered, nodes missing at start, ...)."""


# ----------------------------------------------------------------------------------------------
# Node roster and message exchange


@dataclass
class ExchangeStats:
    messages: int = 0
    round_trips: int = 0  # exchanges: one push of requests and the pull of their replies
    seconds: float = 0.0


class FlowerLink:
    """Sends requests to the nodes holding clients 0..K-1 and collects replies, counting bytes.

    ``timeout`` bounds each exchange (a node that has not answered by then is failed for the rest
    of the round); ``poll`` is the pull interval.
    """

    def __init__(
        self, grid: Any, num_clients: int, *, timeout: float = 600.0, poll: float = 0.02
    ) -> None:
        self.grid = grid
        self.num_clients = num_clients
        self.timeout = float(timeout)
        self.poll = float(poll)
        self.nodes: dict[int, int] = {}  # client id -> Flower node id
        self.info: dict[int, dict[str, Any]] = {}  # client id -> its HELLO reply
        self.failed: dict[int, str] = {}  # client id -> why it is out for this round
        self.joined: set[int] = set()  # clients that (re)answered HELLO since the last take
        self.ledger = CommLedger(range(num_clients))
        self.stats = ExchangeStats()
        self.group = ""

    # --- low level ----------------------------------------------------------------------------
    def _send(
        self, requests: Sequence[tuple[Any, int, str, RecordDict]], timeout: float
    ) -> dict[Any, Message | str]:
        """Push (key, node, type, content) messages; returns key -> reply or failure reason."""
        start = time.perf_counter()
        outcome: dict[Any, Message | str] = {}
        if not requests:
            return outcome
        messages = [
            Message(rd, dst_node_id=node, message_type=mtype, group_id=self.group, ttl=self._ttl())
            for _, node, mtype, rd in requests
        ]
        ids = list(self.grid.push_messages(messages))
        waiting: dict[str, Any] = {}
        for (key, *_), mid in zip(requests, ids, strict=True):
            if mid:
                waiting[mid] = key
            else:
                outcome[key] = "the SuperLink refused the message"
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(waiting)):
                key = waiting.pop(reply.metadata.reply_to_message_id, None)
                if key is None:
                    continue
                if reply.has_error():
                    outcome[key] = f"Flower error {reply.error.code}: {reply.error.reason}"
                else:
                    outcome[key] = reply
            if waiting:
                time.sleep(self.poll)
        for key in waiting.values():
            outcome[key] = f"no reply within {timeout:g} s"
        self.stats.messages += len(requests)
        self.stats.round_trips += 1
        self.stats.seconds += time.perf_counter() - start
        return outcome

    def _ttl(self) -> float:
        return max(self.timeout + 60.0, 120.0)

    # --- roster -------------------------------------------------------------------------------
    def discover(self, config_digest: str, *, wait: float = 0.0, probe: Sequence[int] = ()) -> None:
        """HELLO the nodes not yet known (and the clients in ``probe``); map partitions to nodes.

        With ``wait`` > 0, keeps looking until every client 0..K-1 has a node or ``wait`` runs out.
        """
        deadline = time.monotonic() + wait
        asked: set[int] = set()
        while True:
            known = set(self.nodes.values())
            nodes = [n for n in self.grid.get_node_ids() if n not in known and n not in asked]
            nodes += [self.nodes[k] for k in probe if k in self.nodes]
            probe = ()
            hello = m.content({"config": config_digest})
            requests = [(node, node, m.HELLO, hello) for node in nodes]
            timeout = min(self.timeout, 60.0)
            if wait > 0:  # at start-up a node's first message loads its data: give it the wait
                timeout = max(1.0, deadline - time.monotonic())
            for node, reply in self._send(requests, timeout).items():
                asked.add(node)
                if isinstance(reply, str):
                    for k, n in list(self.nodes.items()):
                        if n == node:
                            self.failed[k] = reply
                    log.warning("node %s did not answer HELLO: %s", node, reply)
                    continue
                info = dict(reply.content["cfg"])
                k = int(info["partition"])
                if not 0 <= k < self.num_clients:
                    log.warning("node %s holds partition %s, not in this run", node, k)
                    continue
                self.nodes[k] = node
                self.info[k] = info
                self.failed.pop(k, None)
                self.joined.add(k)
            if wait <= 0 or len(self.nodes) == self.num_clients or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if wait > 0 and len(self.nodes) < self.num_clients:
            missing = sorted(set(range(self.num_clients)) - set(self.nodes))
            raise FlowerRunError(
                f"only {len(self.nodes)} of {self.num_clients} clients connected within "
                f"{wait:g} s; missing partition ids {missing}"
            )

    def take_joined(self) -> set[int]:
        joined, self.joined = self.joined, set()
        return joined

    def begin_round(self, round_index: int) -> None:
        self.failed = {}
        self.group = str(round_index)
        self.ledger.reset()

    def present(self) -> list[int]:
        return sorted(k for k in self.nodes if k not in self.failed)

    def is_failed(self, client: int) -> bool:
        return client in self.failed or client not in self.nodes

    def fail(self, client: int, reason: str) -> None:
        if client not in self.failed:
            log.warning("client %d is out for this round: %s", client, reason)
        self.failed.setdefault(client, reason)

    def failures(self) -> str:
        return "; ".join(f"client {k}: {r}" for k, r in sorted(self.failed.items())) or "none"

    # --- exchange -----------------------------------------------------------------------------
    def exchange(
        self,
        requests: Mapping[int, tuple[str, RecordDict]],
        *,
        down: str,
        up: str,
        timeout: float | None = None,
    ) -> dict[int, RecordDict]:
        """Send one request per client; replies of clients that answered (others are failed)."""
        batch = []
        for k, (mtype, rd) in sorted(requests.items()):
            if self.is_failed(k):
                continue
            batch.append((k, self.nodes[k], mtype, rd))
            self.ledger.received([k], m.payload_bytes(rd), down)
        replies: dict[int, RecordDict] = {}
        for k, reply in self._send(batch, self.timeout if timeout is None else timeout).items():
            if isinstance(reply, str):
                self.fail(k, reply)
                continue
            replies[k] = reply.content
            self.ledger.sent({k: m.payload_bytes(reply.content)}, up)
        return replies


# ----------------------------------------------------------------------------------------------
# Secure sums over Flower


class FlowerSecureAggregator(SecureAggregator):
    """Secure aggregation over Flower: the protocol Server here, each protocol Client in its node.

    Same parameters, encoding and simulated-dropout schedule as :class:`SecureAggregator` (it is
    one), so a run gives the same sums as in-process; the rounding-stream position of each client
    (``securedream.contribution.rounding_stream``) is sent along so even the rounding matches.
    """

    def __init__(
        self,
        num_clients: int,
        settings: SecureAggregationSettings,
        link: FlowerLink,
    ) -> None:
        super().__init__(num_clients, settings)
        self.link = link
        self.server: protocols.Server | None = None
        self._out: set[int] = set()  # out of the session, as the in-process session counts them
        self._calls = 0  # rounding-stream calls so far this round
        self._pending_in: dict[int, list[bytes]] = {}
        self._started = False
        self.bytes_setup = 0

    # --- session ------------------------------------------------------------------------------
    def start_round(self, round_index: int, client_ids: Sequence[int]) -> None:
        self.round_index = round_index
        self._out = set()
        self._calls = 0
        self._pending_in = {}
        self._started = False
        self._members = sorted(client_ids)
        self.session = None
        self.server = protocols.Server(self.config, os.urandom(protocols.keys.SESSION_ID_BYTES))

    def _setup(self) -> None:
        """AdvertiseKeys -> Roster -> ShareKeys; ForwardShares ride on the first DREAM request."""
        assert self.server is not None
        start = time.perf_counter()
        drops = self._drops(0, self._members)
        setup = m.content(
            {"op": "setup", "round": self.round_index, "session": self.server.session}
        )
        requests = {
            k: (m.SECAGG, setup)
            for k in self._members
            if drops.get(k) != "advertise" and not self.link.is_failed(k)
        }
        self._receive_all(self.link.exchange(requests, down="secagg_setup", up="secagg_setup"))
        out = self._close_stage()
        requests = {
            k: (m.SECAGG, m.content({"op": "relay", "round": self.round_index}, proto=[data]))
            for k, data in out.messages.items()
            if drops.get(k) != "share"
        }
        self._receive_all(self.link.exchange(requests, down="secagg_setup", up="secagg_setup"))
        out = self._close_stage()
        self._pending_in = {k: [data] for k, data in out.messages.items()}
        self.seconds += time.perf_counter() - start

    def _receive_all(self, replies: Mapping[int, RecordDict]) -> None:
        assert self.server is not None
        for k in sorted(replies):
            for data in m.proto_messages(replies[k], "out"):
                try:
                    self.server.receive(data, sender=k)
                except protocols.ProtocolError as exc:
                    self.link.fail(k, f"protocol message refused: {exc}")

    def _close_stage(self) -> protocols.StageOutput:
        assert self.server is not None
        try:
            return self.server.close_stage()
        except protocols.TooFewSurvivors as exc:
            raise SecureAggregationAborted(
                f"round {self.round_index}: fewer than t={self.threshold} clients survived "
                f"({exc}); failures: {self.link.failures()}"
            ) from exc
        except protocols.InvalidShare as exc:
            raise SecureAggregationAborted(
                f"round {self.round_index}: a client's key share failed verification, "
                f"aggregation aborted ({exc})"
            ) from exc

    def end_round(self) -> None:
        if self.server is not None:
            self.server.close()
        self.server = None

    def active_clients(self, client_ids: Sequence[int]) -> list[int]:
        return [c for c in client_ids if c not in self._out and not self.link.is_failed(c)]

    # --- one aggregation ----------------------------------------------------------------------
    def aggregate(
        self, contributions: Mapping[int, torch.Tensor], *, channel: Channel, step: int
    ) -> AggregateResult:
        raise SecureDreamError(
            "the contributions of a Flower run stay on their nodes: use remote_sum (FlowerCohort)"
        )

    def remote_sum(
        self,
        active: Sequence[int],
        request: RequestBuilder,
        on_reply: Callable[[int, RecordDict], None],
        *,
        channel: Channel,
        step: int,
        shape: torch.Size,
    ) -> AggregateResult:
        """One aggregation: DREAM requests to ``active`` (built by ``request(extra, proto)``),
        masked inputs in the replies (each handed to ``on_reply``), then the unmask relay."""
        if self.server is None:
            raise SecureDreamError("FlowerSecureAggregator.remote_sum called outside a round")
        first = not self._started
        if first:
            self._started = True
            self._setup()
        active = self.active_clients(sorted(active))
        drops = self._stage_drops(self._drops(step, active), first)
        counters = {k: self._calls + i for i, k in enumerate(active)}
        self._calls += len(active)
        in_session = set(self.server.participants) - set(self.server.out)
        requests = {}
        for k in active:
            withhold = k not in in_session or drops.get(k) == "masked_input"
            extra = {"secure": True, "counter": counters[k], "withhold": withhold}
            proto = self._pending_in.pop(k, []) if not withhold else []
            requests[k] = (m.DREAM, request(extra, proto))
        replies = self.link.exchange(requests, down="dreams", up=channel.value)
        start = time.perf_counter()
        for k in sorted(replies):
            on_reply(k, replies[k])
        self._receive_all({k: r for k, r in replies.items() if drops.get(k) != "masked_input"})
        out = self._close_stage()
        self.seconds += time.perf_counter() - start
        requests = {
            k: (m.SECAGG, m.content({"op": "relay", "round": self.round_index}, proto=[data]))
            for k, data in out.messages.items()
            if drops.get(k) != "unmask"
        }
        relay_start = time.perf_counter()
        replies = self.link.exchange(requests, down=channel.value, up=channel.value)
        self._receive_all(replies)
        final = self._close_stage()
        self.seconds += time.perf_counter() - relay_start
        result = final.result
        assert result is not None
        self._out |= set(self.server.out)
        integer_sum = decode_integer_sum(result.total, self.config.bits)
        total, survivors = self._decode(integer_sum, result.survivors, channel, step, shape)
        return AggregateResult(total=total, contributors=survivors)

    @staticmethod
    def _stage_drops(drops: Mapping[int, str], first: bool) -> dict[int, str]:
        """Planned drops mapped to the stage where they take effect (as InProcessSession does)."""
        out = {}
        for k, stage in drops.items():
            if stage == "consistency":
                stage = "unmask"  # semi-honest: no consistency round
            if stage in ("advertise", "share"):
                stage = "setup" if first else "masked_input"
            out[k] = stage
        return out
