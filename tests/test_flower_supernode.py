"""The fast SuperNode launcher: what it refuses, and the flwr 1.42 latencies it caps.

The worker itself runs for real in the localhost deployment tests (tests/test_flower_deploy.py,
tests/test_bench_engines.py, both ``-m slow``).
"""

from __future__ import annotations

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


def test_capped_time_caps_only_sleep() -> None:
    capped = supernode._capped_time(0.01)
    t0 = time.monotonic()
    capped.sleep(3)
    assert time.monotonic() - t0 < 1.0
    assert capped.monotonic is time.monotonic and capped.time is time.time


def test_short_object_backoff_patches_the_named_pull_functions() -> None:
    module = types.SimpleNamespace(pull_objects=None)
    supernode.short_object_backoff(module)
    assert module.pull_objects.keywords == supernode.OBJECT_BACKOFF
    assert not hasattr(module, "pull_and_inflate_object_from_tree")


def test_flwr_version_is_in_the_pinned_range() -> None:
    supernode.check_flwr_version()  # the installed flwr is the one the patches were written for
