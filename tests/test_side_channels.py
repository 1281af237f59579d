"""A secure or private run sends the server nothing per client but the protected sums and the
protocol's own messages.

Flower: every reply the ServerApp pulls from the Grid is captured (record by record, key by key)
and checked against an allow-list of protocol fields per message type. The fast variant runs the
real ServerApp against the real ClientApp over the loopback grid of tests/test_flower_units.py;
the slow one does the same on Flower's simulation runtime (Ray), the path of test_flower_sim.py.
"Protecting" runs: secure aggregation alone, central DP without secure aggregation, distributed DP
with secure aggregation and planned dropouts.

In-process: the server loop keeps nothing of a client's response but what it hands to the
aggregator, and the run folder (metrics.jsonl, summary.json, splits.json) records no per-client
quantity; only the harness's mean and spread of the client accuracies, which docs/distributed.md
describes as the experimenter's evaluation.

A plain run (privacy off) is the negative control: its clients send exactly the diagnostics that
docs/distributed.md lists, and the same checker finds each of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest
import torch

pytest.importorskip("flwr")

from test_flower_units import LoopbackGrid, tiny

import protocols
from protocols.messages import MessageType
from securedream.aggregation import Aggregator
from securedream.config import resolve_config
from securedream.diagnostics import Disclosure, opt_in_leaks
from securedream.engines.flower import messages as m
from securedream.engines.flower import server_app
from securedream.engines.flower.server_app import FlowerOptions, run_codream
from securedream.engines.inprocess import run_experiment
from securedream.errors import ConfigError
from securedream.rounds.experiment import Experiment
from securedream.rounds.server import collaborative_dreaming
from securedream.runs import RunFolder

# What a client may send in a secure or private run with no opt-in: message type -> record ->
# keys. Every entry is protocol (routing, buffer bookkeeping, dropout signalling, masked wire
# messages) or a public property of the configured run; nothing here is computed from a client's
# private data except the protected contribution itself.
PROTOCOL_FIELDS: dict[str, dict[str, set[str]]] = {
    m.HELLO: {
        "cfg": {
            "partition",  # which configured client the node is
            "model",  # architecture name (configured)
            "config",  # digest of the run config
            "channels",  # dataset shape and normalisation: public, equal on every node
            "image_size",
            "num_classes",
            "mean",
            "std",
            "buffer",  # distillation-buffer ids the node already holds (server-chosen ids)
        }
    },
    m.TRAIN: {"cfg": set()},
    m.DREAM: {"cfg": {"withheld"}, "proto": {"out"}},
    m.SECAGG: {"cfg": {"aborted"}, "proto": {"out"}},
    # "trained": the round index the node trained for when the next round's training rode on
    # this message (server-chosen, bookkeeping)
    m.DISTILL: {"cfg": {"buffer", "trained"}},
}
# without secure aggregation the contribution itself is the protected-sum input (central DP: the
# server clips and noises it); with secure aggregation it only ever travels masked, in "proto"
PLAIN_TRANSPORT_FIELDS = {(m.DREAM, "x", "value")}
CLIENT_WIRE_TYPES = {
    MessageType.ADVERTISE_KEYS,
    MessageType.SHARE_KEYS,
    MessageType.MASKED_INPUT,
    MessageType.CONSISTENCY_SIGNATURE,
    MessageType.UNMASK_SHARES,
}
DREAM_TERMS = ("entropy", "tv", "l2", "bn", "feature", "target", "diversity", "total")
# the per-client diagnostics of a plain run: the table in docs/distributed.md
PER_CLIENT_METRIC_FIELDS = {
    (m.TRAIN, "cfg", "loss"),
    (m.DREAM, "cfg", "norm"),
    *[(m.DREAM, "terms", t) for t in DREAM_TERMS],
    (m.DISTILL, "cfg", "loss"),
    (m.DISTILL, "cfg", "accuracy"),
    (m.DISTILL, "cfg", "train_loss"),  # the next round's training, riding on DISTILL
}
LABEL_HISTOGRAM_FIELDS = {(m.HELLO, "cfg", "samples"), (m.HELLO, "cfg", "histogram")}

# round-record keys with no per-client un-noised quantity: protocol and release bookkeeping,
# post-processing of the released soft labels, the server student, constant message sizes, timing
ROUND_KEYS = {
    "round",
    "method",
    "aggregations",
    "survivors",
    "epsilon",
    "dream_label_histogram",  # of the noised soft labels
    "dream_confidence",  # of the noised soft labels
    "server_accuracy",  # the server's own student, trained on dreams and soft labels
    "bytes_up",
    "bytes_down",
    "bytes_by_channel",
    "stage_seconds",
}
FLOWER_ROUND_KEYS = ROUND_KEYS | {"flower"}  # roster, dropouts and message count
# the in-process harness's own evaluation of every client model (mean and spread only)
INPROCESS_ROUND_KEYS = ROUND_KEYS | {"mean_accuracy", "std_accuracy"}

PROTECTED_RUNS = {
    "secagg-only": (
        "secure_aggregation.enabled=true",
        "clients.count=3",
        'clients.models=["cnn-bn"]',
    ),
    "central-plain-transport": ('privacy.placement="central"', "privacy.noise_multiplier=0.5"),
    "distributed-secagg-dropouts": (
        "secure_aggregation.enabled=true",
        'privacy.placement="distributed"',
        "privacy.noise_multiplier=0.5",
        "clients.count=4",
        'clients.models=["cnn-bn"]',
        "secure_aggregation.threshold=2",
        'secure_aggregation.dropouts=["1:masked_input:1","3:unmask:2:0"]',
    ),
}


class GridRecorder:
    """Wraps a Flower Grid; keeps every reply the ServerApp pulls, with its request's type."""

    def __init__(self, grid: Any) -> None:
        self.grid = grid
        self.types: dict[str, str] = {}
        self.replies: list[tuple[str, Any]] = []

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Any]) -> list[str]:
        messages = list(messages)
        ids = list(self.grid.push_messages(messages))
        for msg, mid in zip(messages, ids, strict=True):
            self.types[mid] = msg.metadata.message_type
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Any]:
        replies = list(self.grid.pull_messages(message_ids))
        for reply in replies:
            self.replies.append((self.types[reply.metadata.reply_to_message_id], reply))
        return replies


def received_fields(replies: Iterable[tuple[str, Any]]) -> set[tuple[str, str, str]]:
    """(message type, record, key) of everything the server received, after value checks."""
    fields: set[tuple[str, str, str]] = set()
    for mtype, reply in replies:
        assert not reply.has_error(), reply.error.reason
        for name, record in reply.content.items():
            for key in record:
                fields.add((mtype, name, key))
                value = record[key]
                if name == "proto":  # framed protocol messages, client-to-server types only
                    for frame in value if isinstance(value, list) else [value]:
                        assert protocols.wire.peek_type(bytes(frame)) in CLIENT_WIRE_TYPES
                elif (name, key) in {("cfg", "withheld"), ("cfg", "aborted")}:
                    assert value is True
    return fields


def leaks(fields: set[tuple[str, str, str]], secure: bool) -> set[tuple[str, str, str]]:
    """Fields outside the allow-list of a secure or private run."""
    allowed = {(t, r, k) for t, records in PROTOCOL_FIELDS.items() for r, ks in records.items()
               for k in ks}  # fmt: skip
    if not secure:
        allowed |= PLAIN_TRANSPORT_FIELDS
    return fields - allowed


def run_recorded(cfg, out) -> GridRecorder:
    loop = LoopbackGrid(cfg)
    grid = GridRecorder(loop)
    options = FlowerOptions(timeout=0.2, connect_timeout=5.0, poll=0.0)
    run_codream(grid, cfg, loop.text, out, progress=False, options=options)
    return grid


def check_run_folder(path, round_keys: set[str], engine: str) -> list[dict[str, Any]]:
    folder = RunFolder(path)
    records = folder.read_metrics()
    for record in records:
        assert set(record) <= round_keys, set(record) - round_keys
        assert len(record["survivors"]) == record["aggregations"]
    summary = json.loads((path / "summary.json").read_text())
    assert summary["final_client_accuracy"] is None
    assert summary["opt_in_leaks"] == []
    splits = json.loads((path / "splits.json").read_text())
    assert not {"label_histograms", "sizes"} & set(splits)
    if (path / "privacy.json").is_file():  # DP runs (secure aggregation alone writes none)
        privacy = json.loads((path / "privacy.json").read_text())
        assert privacy["opt_in_leaks"] == []
    if engine == "flower":  # the server never learns an accuracy
        assert summary["final_mean_accuracy"] is None
    return records


# ----------------------------------------------------------------------------------------------
# Flower, fast: the real ServerApp and ClientApp over the loopback grid


@pytest.mark.parametrize("extra", list(PROTECTED_RUNS.values()), ids=list(PROTECTED_RUNS))
def test_protected_flower_clients_send_only_protocol_fields(tmp_path, extra) -> None:
    cfg = tiny(*extra)
    grid = run_recorded(cfg, tmp_path / "flower")
    fields = received_fields(grid.replies)
    secure = cfg.secure_aggregation.enabled
    assert leaks(fields, secure) == set()
    # every message type of the run was answered and checked
    assert {t for t, _ in grid.replies} == set(PROTOCOL_FIELDS) - (set() if secure else {m.SECAGG})
    if secure:
        assert (m.DREAM, "proto", "out") in fields and (m.DREAM, "x", "value") not in fields
    records = check_run_folder(tmp_path / "flower", FLOWER_ROUND_KEYS, "flower")

    # the in-process engine records the same keys (plus the harness's accuracy) and survivors
    run_experiment(cfg, tmp_path / "inprocess", progress=False)
    reference = check_run_folder(tmp_path / "inprocess", INPROCESS_ROUND_KEYS, "inprocess")
    for got, want in zip(records, reference, strict=True):
        assert set(got) - {"flower"} == set(want) - {"mean_accuracy", "std_accuracy"}
        assert got["survivors"] == want["survivors"]
    if cfg.secure_aggregation.dropouts:  # the planned drops show (4 clients, drops of 1 and 3)
        assert min(records[0]["survivors"]) == 2 and max(records[0]["survivors"]) == 4


def test_plain_flower_run_sends_the_documented_diagnostics(tmp_path) -> None:
    """Nothing protected: the checker finds exactly the channels docs/distributed.md lists."""
    grid = run_recorded(tiny(), tmp_path / "plain")
    found = leaks(received_fields(grid.replies), secure=False)
    assert found == PER_CLIENT_METRIC_FIELDS | LABEL_HISTOGRAM_FIELDS


def test_opt_in_opens_exactly_the_named_channel(tmp_path) -> None:
    cfg = tiny(
        *PROTECTED_RUNS["central-plain-transport"], "diagnostics.leak_per_client_metrics=true"
    )
    grid = run_recorded(cfg, tmp_path / "flower")
    assert leaks(received_fields(grid.replies), secure=False) == PER_CLIENT_METRIC_FIELDS
    privacy = json.loads((tmp_path / "flower" / "privacy.json").read_text())
    assert privacy["opt_in_leaks"] == ["diagnostics.leak_per_client_metrics"]
    summary = json.loads((tmp_path / "flower" / "summary.json").read_text())
    assert summary["opt_in_leaks"] == ["diagnostics.leak_per_client_metrics"]
    assert any("diagnostics.leak_per_client_metrics" in n for n in privacy["not_protected"])
    record = RunFolder(tmp_path / "flower").read_metrics()[-1]
    assert len(record["client_accuracy"]) == cfg.clients.count
    assert "label_histograms" not in json.loads((tmp_path / "flower" / "splits.json").read_text())


# ----------------------------------------------------------------------------------------------
# Flower on the simulation runtime (Ray): the same capture at the Grid the ServerApp is given


@pytest.fixture
def ray_tmp(monkeypatch):
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    monkeypatch.setenv("RAY_TMPDIR", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_protected_flower_simulation_sends_only_protocol_fields(tmp_path, ray_tmp, monkeypatch):
    from securedream.engines.flower import run_flower

    recorders: list[GridRecorder] = []
    link_class = server_app.FlowerLink

    def recording_link(grid, *args, **kwargs):
        recorders.append(GridRecorder(grid))
        return link_class(recorders[-1], *args, **kwargs)

    monkeypatch.setattr(server_app, "FlowerLink", recording_link)
    cfg = tiny(*PROTECTED_RUNS["distributed-secagg-dropouts"], "rounds=1")
    run_flower(cfg, tmp_path / "flower", progress=False)
    (grid,) = recorders
    assert {t for t, _ in grid.replies} == set(PROTOCOL_FIELDS)
    assert leaks(received_fields(grid.replies), secure=True) == set()
    check_run_folder(tmp_path / "flower", FLOWER_ROUND_KEYS, "flower")


# ----------------------------------------------------------------------------------------------
# In-process: what crosses the client -> server seam


class RecordingAggregator(Aggregator):
    """Passes every aggregation to the real aggregator; remembers which clients' values it got."""

    def __init__(self, inner: Aggregator) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[tuple[int, ...]] = []

    def start_round(self, round_index, client_ids) -> None:
        self.inner.start_round(round_index, client_ids)

    def end_round(self) -> None:
        self.inner.end_round()

    def active_clients(self, client_ids):
        return self.inner.active_clients(client_ids)

    def aggregate(self, contributions, *, channel, step):
        self.calls.append(tuple(sorted(contributions)))
        return self.inner.aggregate(contributions, channel=channel, step=step)


@pytest.mark.parametrize("leak", [False, True], ids=["private", "opted-in"])
def test_inprocess_server_loop_keeps_only_the_sums(leak) -> None:
    """Responses reach the aggregator only; the loop keeps no norm or loss term unless opted in."""
    extra = ["diagnostics.leak_per_client_metrics=true"] if leak else []
    cfg = tiny(*PROTECTED_RUNS["central-plain-transport"], *extra)
    exp = Experiment(cfg)
    aggregator = RecordingAggregator(exp.aggregator)
    settings = exp.dreaming_settings(0)
    init = torch.zeros(exp.dream_shape())
    aggregator.start_round(0, [c.client_id for c in exp.clients])
    outcome = collaborative_dreaming(
        init,
        exp.clients,
        aggregator,
        settings,
        public_count=len(exp.clients),
        ledger=exp.ledger,
        per_client_diagnostics=Disclosure.of(cfg).per_client_metrics,
    )
    aggregator.end_round()
    assert len(aggregator.calls) == outcome.aggregations + len(outcome.snapshots)
    assert outcome.survivors == [len(c) for c in aggregator.calls]
    kept = (outcome.final_terms, outcome.contribution_norms, outcome.norm_counts)
    assert all(bool(k) is leak for k in kept)


def test_protected_inprocess_run_folder_has_no_per_client_quantity(tmp_path) -> None:
    cfg = tiny(*PROTECTED_RUNS["central-plain-transport"])
    run_experiment(cfg, tmp_path, progress=False)
    check_run_folder(tmp_path, INPROCESS_ROUND_KEYS, "inprocess")
    privacy = json.loads((tmp_path / "privacy.json").read_text())
    assert any("simulation harness" in n for n in privacy["not_protected"])
    assert (tmp_path / "accuracy.png").is_file()  # the harness's mean, no per-client curve


def test_label_histograms_are_an_opt_in_of_their_own() -> None:
    cfg = tiny(*PROTECTED_RUNS["central-plain-transport"], "diagnostics.leak_label_histograms=true")
    assert opt_in_leaks(cfg) == ["diagnostics.leak_label_histograms"]
    disclosure = Disclosure.of(cfg)
    assert disclosure.label_histograms and not disclosure.per_client_metrics
    assert Disclosure.of(tiny()) == Disclosure(False, True, True)


@pytest.mark.parametrize("key", ["leak_per_client_metrics", "leak_label_histograms"])
def test_opt_in_without_protection_is_an_error(key) -> None:
    with pytest.raises(ConfigError, match=f"diagnostics.{key}.*secure_aggregation.enabled"):
        resolve_config(preset="smoke", overrides=[f"diagnostics.{key}=true"])
    # any protection makes the key meaningful
    resolve_config(
        preset="smoke", overrides=[f"diagnostics.{key}=true", "secure_aggregation.enabled=true"]
    )
