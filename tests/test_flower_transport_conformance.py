"""protocols.testing.check_transport against the Flower transport's secure-sum path.

What runs for real: the server side of the Flower transport unchanged --
``FlowerSecureAggregator`` (session set-up, ForwardShares piggybacked on the DREAM request, masked
inputs in DREAM replies, the unmask relay, dropouts as failed nodes, ``SecureAggregationAborted``),
``FlowerLink`` (Flower ``Message`` objects pushed and pulled through a Grid, timeouts failing a
node for the round) and the record layouts of ``engines/flower/messages.py``; on
the client side, the protocol path of a node: wire bytes out of the ``proto`` record into a
``protocols.Client`` that is saved and restored with ``Client.to_bytes``/``from_bytes`` around every
message, as Flower's deployment runtime does.

What is replaced: the Grid (an in-process one: nodes answer synchronously; a dropped node never
answers, so its exchange times out after 50 ms), and the node's model work -- instead of
computing a dream gradient and encoding it (``NodeRuntime.dream``), a node submits the harness's
integer vector as its encoded contribution. The model and encoding paths are covered by the
loopback runs in tests/test_flower_units.py; the secure sum -- exactness, typed errors, refused
hostile and replayed messages, no double secrets -- is what this file checks, with the server
instrumented by :class:`protocols.testing.ServerProbe` exactly as for the in-process transport.
Semi-honest only, as securedream's config builds it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Error, Message, RecordDict

import protocols
from protocols.messages import MessageType
from protocols.session import STAGES
from protocols.testing import TransportResult, check_transport, configs
from securedream.aggregation import Channel
from securedream.aggregation.secure import SecureAggregationSettings
from securedream.engines.flower import messages as m
from securedream.engines.flower.transport import FlowerLink, FlowerSecureAggregator

#: protocol message a node receives -> the dropout stage at which it no longer answers
_STAGE_OF = {
    MessageType.ROSTER: "share",
    MessageType.UNMASK_REQUEST: "unmask",
}
_ORDER = {s: i for i, s in enumerate(STAGES)}


class _Node:
    """The protocol side of one node: a protocols.Client persisted as bytes between messages."""

    def __init__(self, k: int, config: protocols.SecAggConfig) -> None:
        self.k, self.config = k, config
        self.blob: bytes | None = None
        self.vector: np.ndarray | None = None
        self.dead_from: str | None = None  # dropout stage: silent from there on

    def _silent(self, stage: str) -> bool:
        return self.dead_from is not None and _ORDER[stage] >= _ORDER[self.dead_from]

    def _client(self) -> protocols.Client:
        assert self.blob is not None
        return protocols.Client.from_bytes(self.config, self.blob)

    def _deliver(self, client: protocols.Client, incoming: list[bytes]) -> list[bytes]:
        replies = []
        for data in incoming:
            replies.extend(client.receive(data))
        return replies

    def handle(self, mtype: str, rd) -> object | None:
        cfg = m.config_of(rd)
        incoming = m.proto_messages(rd, "in")
        if mtype == m.SECAGG and str(cfg["op"]) == "setup":
            if self._silent("advertise"):
                return None
            client = protocols.Client(self.config, self.k, bytes(cfg["session"]))
            out = [client.start()]
        elif mtype == m.SECAGG:
            kinds = {protocols.wire.decode(d, _limits(self.config)).TYPE for d in incoming}
            stage = next((_STAGE_OF[t] for t in kinds if t in _STAGE_OF), "unmask")
            if self._silent(stage):
                return None
            client = self._client()
            try:
                out = self._deliver(client, incoming)
            except protocols.TooFewSurvivors:
                self.blob = client.to_bytes()
                return m.content({"aborted": True}, proto=[], proto_key="out")
        else:  # DREAM: pipelined ForwardShares in, the masked contribution out
            if self._silent("masked_input"):
                return None
            client = self._client()
            reply = {"norm": 0.0}
            try:
                self._deliver(client, incoming)
                if bool(cfg.get("withhold", False)):
                    out = []
                else:
                    assert self.vector is not None
                    out = [client.submit_input(self.vector)]
            except protocols.TooFewSurvivors:
                out = []
            self.blob = client.to_bytes()
            return m.content(reply, proto=out, proto_key="out")
        self.blob = client.to_bytes()
        return m.content({}, proto=out, proto_key="out")


def _limits(config: protocols.SecAggConfig) -> protocols.wire.WireLimits:
    return protocols.wire.WireLimits.for_config(config.num_clients, config.max_dim, config.bits)


class _Grid:
    """A Flower Grid whose nodes answer in this process; silent nodes never answer."""

    def __init__(self, nodes: Mapping[int, _Node]) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.nodes = {k + 1: node for k, node in nodes.items()}  # Flower node id = k + 1
        self.replies: dict[str, Message] = {}
        self.ids = itertools.count()

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            mid = f"x{next(self.ids)}"
            msg.metadata.__dict__["_message_id"] = mid
            ids.append(mid)
            node = self.nodes[msg.metadata.dst_node_id]
            try:
                content = node.handle(msg.metadata.message_type, msg.content)
            except Exception as exc:  # a ClientApp exception is an error reply in Flower
                self.replies[mid] = Message(Error(code=0, reason=repr(exc)), reply_to=msg)
                continue
            if content is not None:
                self.replies[mid] = Message(content, reply_to=msg)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


class FlowerSecureSum:
    """``FlowerSecureAggregator`` as a :class:`protocols.testing.TransportUnderTest`."""

    def __init__(self, config: protocols.SecAggConfig) -> None:
        n = config.num_clients
        settings = SecureAggregationSettings(
            graph=config.graph,
            threshold=config.t,
            degree=config.k if config.graph == "harary" else None,
            bits=config.bits,
        )
        self.nodes = {k: _Node(k, config) for k in range(n)}
        link = FlowerLink(_Grid(self.nodes), n, timeout=0.05, poll=0.0)
        link.nodes = {k: k + 1 for k in range(n)}
        self.agg = FlowerSecureAggregator(n, settings, link)
        assert (self.agg.config.k, self.agg.config.t) == (config.k, config.t)
        self.agg.start_round(1, list(range(n)))
        self.step = 0
        self.totals: list[np.ndarray] = []
        server = self.agg.server
        assert server is not None
        close = server.close_stage

        def capture() -> protocols.StageOutput:
            out = close()
            if out.result is not None:
                self.totals.append(protocols.decode_integer_sum(out.result.total, config.bits))
            return out

        server.close_stage = capture  # type: ignore[method-assign]

    @property
    def server(self) -> protocols.Server | None:
        return self.agg.server

    def aggregate(
        self, inputs: Mapping[int, np.ndarray], drop: Mapping[int, str]
    ) -> TransportResult:
        for k, stage in drop.items():
            if self.step > 0 and _ORDER[stage] < _ORDER["masked_input"]:
                stage = "masked_input"
            if stage == "consistency":  # semi-honest: no consistency round
                stage = "unmask"
            self.nodes[k].dead_from = stage
        active = self.agg.active_clients(sorted(self.nodes))
        dreams = m.to_array(torch.zeros(1, 1))
        for k in active:
            self.nodes[k].vector = np.asarray(inputs[k], dtype=np.int64)

        def request(extra, proto):  # type: ignore[no-untyped-def]
            cfg = {"kind": m.GRADIENT, "round": 1, "step": self.step, **extra}
            rd = RecordDict({"cfg": ConfigRecord(cfg), "x": ArrayRecord({"dreams": dreams})})
            if proto:
                rd["proto"] = ConfigRecord({"in": list(proto)})
            return rd

        dim = len(next(iter(inputs.values())))
        result = self.agg.remote_sum(
            active,
            request,
            lambda k, reply: None,
            channel=Channel.DREAM_GRADIENT,
            step=self.step,
            shape=torch.Size((dim,)),
        )
        self.step += 1
        return TransportResult(self.totals[-1], frozenset(result.contributors))

    def close(self) -> None:
        self.agg.end_round()


def test_flower_secure_sum_conforms() -> None:
    report = check_transport(
        FlowerSecureSum,
        # the rates securedream's Flower config builds (corruption 0.1, no simulated dropout)
        configs_strategy=configs(
            modes=("semi-honest",), dim=4, corruption_rates=(0.1,), dropout_rates=(0.0,)
        ),
        max_examples=10,
        steps=3,
    )
    assert report.aggregations > 0 and report.with_dropouts > 0 and report.refused_messages > 0


def test_flower_secure_sum_without_dropouts_is_exact() -> None:
    config = protocols.SecAggConfig(5, threshold=3, dim=4)
    transport = FlowerSecureSum(config)
    inputs = {k: np.arange(4, dtype=np.int64) * (k + 1) for k in range(5)}
    for _ in range(2):
        res = transport.aggregate(inputs, {})
        assert res.survivors == set(range(5))
        assert res.integer_sum.tolist() == sum(inputs.values()).tolist()
    transport.close()
