"""Flower engine without Ray: record encodings, protocol-state persistence, client-side encoding,
and whole runs over an in-process grid that hands each message to the real ClientApp.

The in-process grid (:class:`LoopbackGrid`) implements the three Grid calls the server uses
(``get_node_ids``, ``push_messages``, ``pull_messages``) by calling the ClientApp synchronously
with each node's own ``Context``; it can make a node die after a number of messages and come back
as a new node, which is how a SuperNode that is killed and restarted looks to the server.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Context, Message, RecordDict

from securedream.config import config_to_toml, resolve_config
from securedream.engines.flower import clientside
from securedream.engines.flower import messages as m
from securedream.engines.flower.client_app import make_client_app
from securedream.engines.flower.server_app import FlowerOptions, run_codream
from securedream.engines.inprocess import run_experiment
from securedream.runs import RunFolder

TINY = [
    "rounds=2",
    "dreams.global_steps=3",
    "dreams.batch_size=16",
    "data.samples_per_client=80",
    "distill.epochs=1",
    "threads=1",
]

_RUN_IDS = itertools.count(1000)
# secure and private runs withhold per-client metrics (tests/test_side_channels.py); the parity
# and dropout tests below read them, so their secure runs opt in
METRICS = "diagnostics.leak_per_client_metrics=true"


def tiny(*extra: str):
    return resolve_config(preset="smoke", overrides=[*TINY, *extra])


class LoopbackGrid:
    """A Flower Grid whose nodes are ClientApp calls in this process."""

    def __init__(self, cfg, *, die_after: dict[int, int] | None = None) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        # what a Flower runtime sets for the ServerApp process (Message() reads it)
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.text = config_to_toml(cfg)
        self.app = make_client_app(self.text)
        self.run_id = next(_RUN_IDS)
        self.node_ids = itertools.count(1)
        self.contexts: dict[int, Context] = {}
        self.partition: dict[int, int] = {}
        self.die_after = dict(die_after or {})  # partition -> messages it answers before dying
        self.handled: dict[int, int] = {}
        self.replies: dict[str, Message] = {}
        self.ids = itertools.count()
        for k in range(cfg.clients.count):
            self.add_node(k)

    def add_node(self, partition: int) -> int:
        node = next(self.node_ids)
        self.contexts[node] = Context(
            run_id=self.run_id,
            node_id=node,
            node_config={"partition-id": partition},
            state=RecordDict(),
            run_config={},
        )
        self.partition[node] = partition
        self.handled[node] = 0
        return node

    def kill(self, partition: int) -> None:
        for node, k in list(self.partition.items()):
            if k == partition:
                del self.contexts[node], self.partition[node]

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            mid = f"m{next(self.ids)}"
            msg.metadata.__dict__["_message_id"] = mid
            ids.append(mid)
            node = msg.metadata.dst_node_id
            if node not in self.contexts:
                continue  # dead node: never answers
            k = self.partition[node]
            if k in self.die_after and self.handled[node] >= self.die_after[k]:
                self.kill(k)
                continue
            self.handled[node] += 1
            try:
                self.replies[mid] = self.app(msg, self.contexts[node])
            except Exception as exc:  # the runtimes turn ClientApp exceptions into error replies
                from flwr.app import Error

                self.replies[mid] = Message(Error(code=0, reason=repr(exc)), reply_to=msg)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


def run_loopback(cfg, out, grid=None, timeout: float = 0.2):
    grid = grid or LoopbackGrid(cfg)
    options = FlowerOptions(timeout=timeout, connect_timeout=5.0, poll=0.0)
    return run_codream(grid, cfg, grid.text, out, progress=False, options=options), grid


def _same_run(a_dir, b_dir) -> None:
    a, b = RunFolder(a_dir).read_metrics(), RunFolder(b_dir).read_metrics()
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        for key in (
            "train_loss",
            "client_accuracy",
            "distill_loss",
            "dream_terms",
            "dream_confidence",
            "dream_label_histogram",
            "contribution_norms",
            "survivors",
        ):
            assert ra.get(key) == rb.get(key), key


# ----------------------------------------------------------------------------------------------
# encodings


def test_tensor_records_round_trip_and_count_bytes() -> None:
    x = torch.randn(4, 1, 8, 8)
    rd = m.content({"round": 3, "kind": m.GRADIENT}, tensors={"dreams": x}, proto=[b"ab", b"c"])
    assert torch.equal(m.read_tensor(rd["x"], "dreams"), x)
    assert m.proto_messages(rd, "in") == [b"ab", b"c"]
    assert m.proto_messages(rd, "out") == []
    # the dreams dominate: float32 payload plus the .npy header and the keys
    assert x.numel() * 4 < m.payload_bytes(rd) < x.numel() * 4 + 300


# ----------------------------------------------------------------------------------------------
# whole runs over the loopback grid


@pytest.mark.parametrize(
    "extra",
    [
        (),
        (
            "secure_aggregation.enabled=true",
            METRICS,
            "clients.count=3",
            'clients.models=["cnn-bn"]',
        ),
        (
            "secure_aggregation.enabled=true",
            METRICS,
            "clients.count=4",
            'clients.models=["cnn-bn"]',
            "secure_aggregation.threshold=2",
            'secure_aggregation.dropouts=["1:masked_input:1","2:advertise:0:1","3:unmask:2:0"]',
            "dreams.snapshots=2",
        ),
        (
            'privacy.placement="central"',
            "privacy.noise_multiplier=0.5",
            METRICS,
            "privacy.reproducible_noise=true",  # the same noise in both engines
        ),
        (  # the stack's finish() on Flower's remote secure sum: survivor floor, noise, ledger
            "secure_aggregation.enabled=true",
            'privacy.placement="central"',
            "privacy.noise_multiplier=0.5",
            METRICS,
            "privacy.reproducible_noise=true",
            "clients.count=3",
            'clients.models=["cnn-bn"]',
        ),
        ("dreams.w_target=1", "dreams.class_share=true"),
    ],
    ids=[
        "plain",
        "secure",
        "secure-planned-dropouts",
        "central-dp",
        "secure-central-dp",
        "class-share",
    ],
)
def test_loopback_run_equals_in_process(tmp_path, monkeypatch, extra) -> None:
    cfg = tiny(*extra)
    run_experiment(cfg, tmp_path / "inprocess", progress=False)
    summary, _ = run_loopback(cfg, tmp_path / "flower")
    _same_run(tmp_path / "inprocess", tmp_path / "flower")
    assert summary["engine"] == "flower"
    for name in ("config.toml", "metrics.jsonl", "summary.json", "accuracy.png", "splits.json"):
        assert (tmp_path / "flower" / name).is_file(), name


def test_class_shares_reach_the_data_free_dream_view(tmp_path, monkeypatch) -> None:
    """Rebuilt per message, a node answers dream requests without its trainer (DreamView): its
    class shares must still weight them, or the run would differ from in-process."""
    monkeypatch.setenv(clientside.NO_CACHE_ENV, "1")
    cfg = tiny("dreams.w_target=1", "dreams.class_share=true")
    run_experiment(cfg, tmp_path / "inprocess", progress=False)
    summary, _ = run_loopback(cfg, tmp_path / "flower")
    _same_run(tmp_path / "inprocess", tmp_path / "flower")
    inprocess = RunFolder(tmp_path / "inprocess").read_metrics()
    assert summary["final_client_accuracy"] == inprocess[-1]["client_accuracy"]


def test_nodes_rebuilt_from_context_state_every_message(tmp_path, monkeypatch) -> None:
    """What the deployment runtime does (a fresh process per message) gives the same run."""
    monkeypatch.setenv(clientside.NO_CACHE_ENV, "1")
    cfg = tiny(
        "secure_aggregation.enabled=true", METRICS, "clients.count=3", 'clients.models=["cnn-bn"]'
    )
    run_experiment(cfg, tmp_path / "inprocess", progress=False)
    summary, _ = run_loopback(cfg, tmp_path / "flower")
    _same_run(tmp_path / "inprocess", tmp_path / "flower")
    inprocess = RunFolder(tmp_path / "inprocess").read_metrics()
    assert summary["final_client_accuracy"] == inprocess[-1]["client_accuracy"]


def test_bytes_are_counted_from_message_payloads(tmp_path) -> None:
    cfg = tiny()
    run_loopback(cfg, tmp_path)
    record = RunFolder(tmp_path).read_metrics()[0]
    dreams = 16 * 1 * 8 * 8 * 4
    steps = cfg.dreams.global_steps + cfg.dreams.snapshots
    # every DREAM request carries the dreams; every reply a same-sized gradient or small logits
    assert all(b > steps * dreams for b in record["bytes_down"])
    assert record["bytes_by_channel"]["down/dreams"] > 2 * steps * dreams
    assert record["bytes_by_channel"]["up/dream_gradient"] > 2 * cfg.dreams.global_steps * dreams


def test_distributed_dp_releases_are_recorded_as_in_process(tmp_path) -> None:
    """Nodes add their Skellam shares; the server's stack records the same releases (ε, noise
    std, survivors) from Flower's remote secure sums as in-process from its own."""
    import json

    cfg = tiny(
        "secure_aggregation.enabled=true",
        'privacy.placement="distributed"',
        "privacy.noise_multiplier=1.0",
        "clients.count=3",
        'clients.models=["cnn-bn"]',
    )
    run_experiment(cfg, tmp_path / "inprocess", progress=False)
    run_loopback(cfg, tmp_path / "flower")
    want, got = (
        json.loads((tmp_path / engine / "privacy.json").read_text())
        for engine in ("inprocess", "flower")
    )
    assert got["epsilon_total"] == want["epsilon_total"] > 0
    assert got["epsilon_by_adversary"] == want["epsilon_by_adversary"]
    records = [RunFolder(tmp_path / e).read_metrics() for e in ("inprocess", "flower")]
    assert [r["survivors"] for r in records[0]] == [r["survivors"] for r in records[1]]


def test_next_round_training_rides_on_the_distill_message(tmp_path) -> None:
    """Round r+1's local training rides on round r's DISTILL: one round trip less per round,
    none for the last round (nothing follows it); the run still equals in-process (above)."""
    cfg = tiny("rounds=3")
    run_loopback(cfg, tmp_path)
    records = RunFolder(tmp_path).read_metrics()
    dreams = cfg.dreams.global_steps + cfg.dreams.snapshots  # one DREAM exchange each (plain)
    assert [r["flower"]["round_trips"] for r in records] == [dreams + 2, dreams + 1, dreams + 1]
    assert [r["flower"]["messages"] for r in records] == [
        cfg.clients.count * t for t in (dreams + 2, dreams + 1, dreams + 1)
    ]


@pytest.mark.parametrize("answers", [4, 5, 6], ids=["at-input", "at-unmask", "next-step"])
def test_client_dying_mid_round_is_a_dropout(tmp_path, answers) -> None:
    cfg = tiny(
        "secure_aggregation.enabled=true",
        METRICS,
        "clients.count=3",
        'clients.models=["cnn-bn"]',
        "secure_aggregation.threshold=2",
        "rounds=3",
    )
    # client 2 answers HELLO, TRAIN, two set-up messages (and a dream request, an unmask
    # request) and then dies: before its first masked input, before its unmask shares, or at
    # the second step
    grid = LoopbackGrid(cfg, die_after={2: answers})
    summary, grid = run_loopback(cfg, tmp_path, grid)
    records = RunFolder(tmp_path).read_metrics()
    assert "2" in records[0]["flower"]["dropped"]
    assert records[0]["client_accuracy"][2] is None
    assert records[0]["client_accuracy"][0] is not None
    assert records[1]["flower"]["clients"] == [0, 1]  # still gone in the next round
    assert summary["rounds"] == 3


def test_client_restarted_between_rounds_rejoins(tmp_path) -> None:
    cfg = tiny(
        "secure_aggregation.enabled=true",
        METRICS,
        "clients.count=3",
        'clients.models=["cnn-bn"]',
        "secure_aggregation.threshold=2",
        "rounds=3",
    )
    grid = LoopbackGrid(cfg, die_after={2: 5})
    state = {"restarted": False}
    from securedream.engines.flower import server_app

    real_round = server_app.FlowerCoDream.run_round

    def run_round(self, round_index, on_step=None):
        if round_index == 2 and not state["restarted"]:
            grid.die_after.pop(2, None)
            grid.add_node(2)  # the SuperNode comes back (a new node id, empty state)
            state["restarted"] = True
        return real_round(self, round_index, on_step)

    try:
        server_app.FlowerCoDream.run_round = run_round  # type: ignore[method-assign]
        run_loopback(cfg, tmp_path, grid)
    finally:
        server_app.FlowerCoDream.run_round = real_round  # type: ignore[method-assign]
    records = RunFolder(tmp_path).read_metrics()
    assert records[1]["flower"]["clients"] == [0, 1]
    assert records[2]["flower"]["clients"] == [0, 1, 2]
    assert records[2]["client_accuracy"][2] is not None
    assert records[2]["flower"]["dropped"] == {}


def test_too_few_survivors_aborts_with_the_reasons(tmp_path) -> None:
    from securedream.aggregation.secure import SecureAggregationAborted

    cfg = tiny(
        "secure_aggregation.enabled=true", "clients.count=2", "secure_aggregation.threshold=2"
    )
    grid = LoopbackGrid(cfg, die_after={1: 4})
    with pytest.raises(SecureAggregationAborted, match="client 1"):
        run_loopback(cfg, tmp_path, grid)


def test_state_dir_lets_a_restarted_node_resume_its_model(tmp_path) -> None:
    """A node started again with the same ``state-dir`` continues from its saved model."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    cfg = tiny()
    text = config_to_toml(cfg)
    app = make_client_app(text)
    node_config = {"partition-id": 1, "state-dir": str(tmp_path / "node")}

    def context(node: int) -> Context:
        return Context(
            run_id=next(_RUN_IDS),
            node_id=node,
            node_config=node_config,
            state=RecordDict(),
            run_config={},
        )

    def send(ctx: Context, mtype: str, cfg_values: dict) -> RecordDict:
        msg = Message(m.content(cfg_values), dst_node_id=ctx.node_id, message_type=mtype)
        msg.metadata.__dict__["_message_id"] = "x"
        return app(msg, ctx).content

    first = context(1)
    send(first, m.HELLO, {})
    send(first, m.TRAIN, {"round": 0, "epochs": 2})
    trained = clientside.NodeRuntime.for_context(text, first).model.state_dict()
    second = context(2)  # the restarted SuperNode: a new node id and an empty Context.state
    send(second, m.HELLO, {})
    restored = clientside.NodeRuntime.for_context(text, second).model.state_dict()
    assert all(torch.equal(trained[k], restored[k]) for k in trained)
    fresh = clientside.NodeRuntime(text, {"partition-id": 1}).model.state_dict()
    assert not all(torch.equal(trained[k], fresh[k]) for k in trained)
