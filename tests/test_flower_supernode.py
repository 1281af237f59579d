"""The fast SuperNode launcher: what it refuses, and the flwr 1.42 latencies it caps.

The worker itself runs for real in the localhost deployment tests (tests/test_flower_deploy.py,
tests/test_bench_engines.py, both ``-m slow``).
"""

from __future__ import annotations

import threading
import time
import types

import pytest

pytest.importorskip("flwr")

from securedream.engines.flower import supernode


@pytest.mark.parametrize("address", ["127.0.0.1:9092", "localhost:9092", "[::1]:9092"])
def test_insecure_is_allowed_towards_localhost(address) -> None:
    supernode.check_transport(address, insecure=True)


@pytest.mark.parametrize("address", ["10.0.0.2:9092", "superlink.example.org:9092", "[fe80::1]:1"])
def test_insecure_is_refused_towards_another_host(address) -> None:
    with pytest.raises(SystemExit, match="allowed only with a SuperLink on localhost"):
        supernode.check_transport(address, insecure=True)
    supernode.check_transport(address, insecure=False)  # TLS: fine


@pytest.mark.parametrize(
    "args",
    [
        ["--insecure", "--superlink", "10.1.2.3:9092", "--port", "9094"],
        ["--insecure", "--port", "9094", "--host", "0.0.0.0"],
        ["--root-certificates", "ca.crt", "--port", "9094", "--ssl-certfile", "c.pem"],
        ["--insecure", "--port", "9094", "--poll-cap", "5"],
    ],
)
def test_launcher_refuses_before_starting_anything(args) -> None:
    started = []
    with pytest.raises(SystemExit):
        supernode.main(args, start=lambda: started.append(True))
    assert started == []


def test_idle_wait_backs_off_to_the_cap_and_restarts_after_a_message() -> None:
    signals = supernode.NodeSignals(0.02, floor=0.005)
    waits = []
    for _ in range(6):
        waits.append(signals.idle)
        signals.sleep(3)  # flwr's idle sleep after an empty pull
    assert waits[0] == 0.005 and waits[1] == 0.0075 and max(waits) == 0.02
    assert signals.pulled(None, state="s") is None and not signals.task.is_set()
    assert signals.pulled(7, state="s") == 7 and signals.task.is_set()
    assert signals.idle == 0.005 and signals.state == "s"


def test_reply_wait_returns_when_the_worker_replies() -> None:
    signals = supernode.NodeSignals(3.0)
    threading.Timer(0.05, signals.replied).start()
    t0 = time.monotonic()
    signals.sleep(0.5)  # flwr's wait for the reply: ends at the reply, not after 0.5 s
    assert time.monotonic() - t0 < 0.4
    assert not signals.reply.is_set()  # consumed: the next wait waits again
    t0 = time.monotonic()
    signals.sleep(0.5)
    assert time.monotonic() - t0 >= 0.45
    fast = supernode.NodeSignals(0.01)
    t0 = time.monotonic()
    fast.time_module().sleep(0.5)  # capped at --poll-cap without a reply
    assert time.monotonic() - t0 < 0.4
    assert fast.time_module().monotonic is time.monotonic


def test_direct_runtime_calls_the_nodes_own_runtime_api_handlers() -> None:
    from flwr.supercore.servicer.runtime import runtime_handlers as core
    from flwr.supernode.servicer.runtime import runtime_handlers as node

    for name, handler in supernode.DirectRuntime._HANDLERS.items():
        assert hasattr(node, handler) or hasattr(core, handler), name
    calls = []
    original = node.pull_object
    node.pull_object = lambda request, state, task: calls.append((request, state, task)) or "ok"
    try:
        assert supernode.DirectRuntime("state", "task").PullObject("req") == "ok"
    finally:
        node.pull_object = original
    assert calls == [("req", "state", "task")]
    with pytest.raises(AttributeError):
        supernode.DirectRuntime("state", "task").GetNodes  # noqa: B018  (not a ClientApp call)


def test_short_object_backoff_patches_the_named_pull_functions() -> None:
    module = types.SimpleNamespace(pull_objects=None)
    supernode.short_object_backoff(module)
    assert module.pull_objects.keywords == supernode.OBJECT_BACKOFF
    assert not hasattr(module, "pull_and_inflate_object_from_tree")


def test_flwr_version_is_in_the_pinned_range() -> None:
    supernode.check_flwr_version()  # the installed flwr is the one the patches were written for
