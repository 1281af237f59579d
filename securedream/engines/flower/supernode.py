"""A fast Flower SuperNode: capped polls and one long-lived ClientApp worker in the node's process.

Stock flwr 1.42 starts a ``flwr-clientapp`` process per message, sleeps 3 s after every empty pull
and retries a not-yet-arrived object after 1 s. Here the SuperNode runs with ``--isolation
process`` and a worker thread of this process serves its Runtime API (the ClientApp loaded once per
FAB, so ``NodeRuntime.for_context`` hits as in simulation; the Context is still pushed after every
reply, in Flower's order); ``flwr.supernode.start_client_internal`` sees a ``time`` whose ``sleep``
is capped at ``--poll-cap``; objects are retried after 10 ms. This reaches into flwr 1.42
internals, hence the pin ``flwr>=1.42,<1.43`` (checked at start); upstream features that would
remove it, measurements and commands: docs/distributed.md, "The fast SuperNode".

    python -m securedream.engines.flower.supernode [--poll-cap S] <flower-supernode options>
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

FLWR_RANGE = ((1, 42), (1, 43))  # [low, high): the flwr internals below are those of 1.42
OBJECT_BACKOFF = {"initial_backoff": 0.01, "backoff_cap": 0.1}
HEARTBEAT_SECONDS = 10.0  # a claimed task expires after 30 s without one (flwr 1.42)

log = logging.getLogger("securedream.flower")


def check_flwr_version() -> None:
    import flwr

    version = tuple(int(p) for p in flwr.__version__.split(".")[:2])
    low, high = FLWR_RANGE
    if not low <= version < high:
        raise RuntimeError(
            f"securedream's fast SuperNode needs flwr {low[0]}.{low[1]}.x (internals it patches); "
            f"found {flwr.__version__}. Use plain `flower-supernode` instead (slower)."
        )


LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def check_transport(superlink: str, *, insecure: bool) -> None:
    """Refuse ``--insecure`` (plain HTTP to the SuperLink) unless the SuperLink is on this host."""
    host = superlink.rsplit(":", 1)[0] if superlink.count(":") == 1 else superlink.rsplit("]", 1)[0]
    if insecure and host.strip("[]") not in {h.strip("[]") for h in LOOPBACK}:
        raise SystemExit(
            f"securedream supernode: --insecure is allowed only with a SuperLink on localhost, "
            f"not {superlink}; use TLS (--root-certificates CA.pem), see docs/distributed.md"
        )


def _capped_time(cap: float) -> types.SimpleNamespace:
    """The ``time`` module, except that ``sleep`` waits at most ``cap`` seconds."""
    names = {k: getattr(time, k) for k in dir(time) if not k.startswith("_")}
    return types.SimpleNamespace(**{**names, "sleep": lambda s: time.sleep(min(s, cap))})


def short_object_backoff(*modules: Any) -> None:
    """Make ``pull_objects`` in each module retry a not-yet-arrived object after 10 ms, not 1 s."""
    from flwr.supercore.inflatable import inflatable_utils

    for module in modules:
        for name in ("pull_objects", "pull_and_inflate_object_from_tree"):
            if hasattr(module, name):
                original = getattr(inflatable_utils, name)
                setattr(module, name, functools.partial(original, **OBJECT_BACKOFF))


def cap_supernode_polls(cap: float) -> None:
    """Cap the SuperNode's idle and reply-wait sleeps at ``cap`` seconds (in this process)."""
    from flwr.supernode import start_client_internal

    start_client_internal.time = _capped_time(cap)  # type: ignore[assignment]
    short_object_backoff(start_client_internal)


class ClientAppWorker:
    """Serves the ClientApp tasks of one SuperNode's Runtime API, one at a time, in one process."""

    def __init__(self, runtime_api_address: str, *, poll: float = 0.02) -> None:
        self.address = runtime_api_address
        self.poll = poll
        self.apps: dict[str, Any] = {}  # FAB hash -> ClientApp (loaded once)

    def _client(self, token: str | None) -> Any:
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        return RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=True,  # the Runtime API of a SuperNode started by this module: loopback
            root_certificates=None,
            interceptors=[RuntimeTokenHttpInterceptor(token)] if token else [],
            retry_invoker=make_simple_http_retry_invoker(),
        )

    def _app(self, run: Any, fab: Any) -> Any:
        from flwr.cli.install import install_from_fab
        from flwr.clientapp.utils import get_load_client_app_fn

        if fab.hash_str not in self.apps:
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            self.apps[fab.hash_str] = load(run.fab_id, run.fab_version, fab.hash_str)
        return self.apps[fab.hash_str]

    def serve_forever(self) -> None:
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        import securedream.engines.flower.client_app  # noqa: F401  (torch etc.: before any task)

        acquirer = self._client(None)
        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        while True:
            try:
                res = acquirer.AcquireTask(request)
            except Exception as err:  # the SuperNode's API is not up yet, or restarting
                log.debug("AcquireTask failed: %s", err)
                time.sleep(0.2)
                continue
            if res.HasField("task") and res.token:
                self.run_task(res.token)
            else:
                time.sleep(self.poll)

    def run_task(self, token: str) -> None:
        """One ClientApp task, as ``flwr-clientapp`` runs it, without starting a process."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest
        from flwr.supernode.runtime import run_clientapp as rc

        client = self._client(token)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_SECONDS):
                try:
                    client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
                except Exception as err:
                    log.debug("task heartbeat failed: %s", err)

        threading.Thread(target=beat, daemon=True).start()
        context = message = reply = None
        status, details = SubStatus.FAILED, "ClientApp task failed"
        try:
            message, context, run, fab = rc.pull_task_input(client)
            reply = self._app(run, fab)(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as err:
            logging.getLogger("securedream.flower").exception("ClientApp raised")
            details = f"{type(err)}:<'{err}'>"
            if message is not None:
                code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
                reply = Message(Error(code=code, reason=details), reply_to=message)
        finally:
            stop.set()
            try:
                if reply is not None and context is not None:
                    rc.push_message(client, reply, context)
            finally:
                rc.push_task_output(client, context, status, details)
                client.close()


def main(argv: Sequence[str] | None = None, *, start: Callable[[], None] | None = None) -> None:
    """Parse ``--poll-cap``, patch flwr, start the worker thread and run ``flower-supernode``."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--poll-cap", type=float, default=0.05)
    ours, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    node = argparse.ArgumentParser(add_help=False)
    node.add_argument("--port", type=int, required=True)
    node.add_argument("--superlink", default="127.0.0.1:9092")
    node.add_argument("--insecure", action="store_true")
    node.add_argument("--host", default="127.0.0.1")
    node.add_argument("--ssl-certfile")
    seen = node.parse_known_args(rest)[0]
    check_transport(seen.superlink, insecure=seen.insecure)
    if seen.host not in LOOPBACK or seen.ssl_certfile:
        raise SystemExit(
            "securedream supernode: the Runtime API serves only this process's ClientApp worker; "
            "keep it on loopback without TLS (no --host, no --ssl-*)"
        )
    if not 0.001 <= ours.poll_cap <= 3.0:
        raise SystemExit("securedream supernode: --poll-cap must be in [0.001, 3] seconds")
    check_flwr_version()
    cap_supernode_polls(ours.poll_cap)
    from flwr.supernode.runtime import run_clientapp

    short_object_backoff(run_clientapp)
    worker = ClientAppWorker(f"127.0.0.1:{seen.port}")
    threading.Thread(target=worker.serve_forever, name="clientapp-worker", daemon=True).start()
    sys.argv = ["flower-supernode", *rest, "--isolation", "process"]
    from flwr.supernode.cli import flower_supernode

    (start or flower_supernode)()


if __name__ == "__main__":
    main()
