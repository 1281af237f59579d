"""A fast Flower SuperNode: event-driven waits and one long-lived ClientApp worker in its process.

Stock flwr 1.42 starts a ``flwr-clientapp`` process per message, sleeps 3 s after every empty pull,
waits for a reply in 0.5 s steps and retries a not-yet-arrived object after 1 s. Here the
SuperNode runs with ``--isolation process`` and a worker thread of this process serves its Runtime
API (the ClientApp loaded once per FAB, so ``NodeRuntime.for_context`` hits as in simulation; the
Context is still pushed after every reply, in Flower's order). The node's main loop and the worker
wake each other (:class:`NodeSignals`) instead of polling: the worker asks for a task only when the
main loop has stored a message, and the main loop pushes the reply as soon as the worker has
written it. Only the pull from the SuperLink (another process) still polls, backing off from 5 ms
to ``--poll-cap`` while nothing arrives; objects are retried after 10 ms. Idle, the fast
SuperNode costs a few polls per second, not the ~0.17 cores per node that 20 ms polling costs on a
loaded two-core machine. This reaches into flwr 1.42 internals, hence the pin
``flwr>=1.42,<1.43`` (checked at start); upstream features that would remove it, measurements and
commands: docs/distributed.md, "The fast SuperNode".

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
from typing import Any, ClassVar

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


class NodeSignals:
    """Wake-ups between a SuperNode's main loop and its worker thread (one process).

    flwr 1.42's main loop (``start_client_internal``) sleeps 3 s after an empty pull from the
    SuperLink and 0.5 s per check while it waits for the reply or its objects; those are the only
    sleeps in that module, so :meth:`sleep` tells them apart by length. The idle wait backs off
    from ``floor`` (reset by every pulled message) by x1.5 per empty pull up to ``cap``: a node
    that has waited W seconds answers at most about W/2 late, so it only lags behind nodes that
    were slower anyway.
    A reply wait returns as soon as the worker has pushed its reply (:meth:`replied`).
    """

    IDLE_SLEEP = 1.0  # flwr's sleeps this long or longer are the idle wait after an empty pull

    def __init__(self, cap: float, *, floor: float = 0.005) -> None:
        self.cap = cap
        self.floor = min(floor, cap)
        self.idle = self.floor
        self.state: Any = None  # the node's NodeState, as the main loop passes it
        self.task = threading.Event()  # the main loop stored a message: a task may be waiting
        self.reply = threading.Event()  # the worker pushed a reply into the node's state

    def sleep(self, seconds: float) -> None:
        if seconds >= self.IDLE_SLEEP:
            time.sleep(self.idle)
            self.idle = min(self.cap, self.idle * 1.5)
        else:
            self.reply.wait(min(seconds, self.cap))
            self.reply.clear()  # the caller re-checks its condition next

    def pulled(self, run_id: int | None, state: Any) -> int | None:
        """Called with what ``_pull_and_store_message`` returned (``None``: nothing pulled)."""
        self.state = state
        if run_id is not None:
            self.idle = self.floor
            self.task.set()
        return run_id

    def replied(self) -> None:
        self.reply.set()

    def time_module(self) -> types.SimpleNamespace:
        """The ``time`` module, except that ``sleep`` is :meth:`sleep`."""
        names = {k: getattr(time, k) for k in dir(time) if not k.startswith("_")}
        return types.SimpleNamespace(**{**names, "sleep": self.sleep})


def short_object_backoff(*modules: Any) -> None:
    """Make ``pull_objects`` in each module retry a not-yet-arrived object after 10 ms, not 1 s."""
    from flwr.supercore.inflatable import inflatable_utils

    for module in modules:
        for name in ("pull_objects", "pull_and_inflate_object_from_tree"):
            if hasattr(module, name):
                original = getattr(inflatable_utils, name)
                setattr(module, name, functools.partial(original, **OBJECT_BACKOFF))


def patch_supernode_loop(signals: NodeSignals) -> None:
    """Route the SuperNode main loop's sleeps and pulls through ``signals`` (in this process)."""
    from flwr.supernode import start_client_internal as sci

    pull = sci._pull_and_store_message
    sci.time = signals.time_module()  # type: ignore[assignment]
    sci._pull_and_store_message = lambda **kw: signals.pulled(pull(**kw), kw["state"])  # type: ignore[assignment]
    short_object_backoff(sci)


class DirectRuntime:
    """A SuperNode's Runtime API for one claimed task, called in this process instead of over HTTP.

    flwr's ClientApp helpers (``run_clientapp.pull_task_input``, ``push_message``,
    ``push_task_output``) take a ``RuntimeHttpClient``; this object has the methods they call and
    passes each request to the handler the node's own HTTP server would run
    (``flwr.supernode.servicer.runtime.runtime_handlers``), on the node's own ``NodeState``. Same
    requests, same state changes, same order; no loopback HTTP round trip per request (on a loaded
    two-core machine each one waits for the scheduler, and a round trip makes about a dozen).
    """

    _HANDLERS: ClassVar[dict[str, str]] = {
        "PullTaskInput": "pull_task_input",
        "PullMessages": "pull_messages",
        "PullObject": "pull_object",
        "ConfirmMessageReceived": "confirm_message_received",
        "PushMessages": "push_messages",
        "PushObject": "push_object",
        "PushTaskOutput": "push_task_output",
        "SendTaskHeartbeat": "send_task_heartbeat",  # the node's module has none: the core one
    }

    def __init__(self, state: Any, task: Any) -> None:
        self.state = state
        self.task = task

    def __getattr__(self, name: str) -> Callable[[Any], Any]:
        from flwr.supercore.servicer.runtime import runtime_handlers as core
        from flwr.supernode.servicer.runtime import runtime_handlers as node

        if name not in self._HANDLERS:
            raise AttributeError(name)
        handler = getattr(node, self._HANDLERS[name], None) or getattr(core, self._HANDLERS[name])
        return lambda request: handler(request, self.state, self.task)

    def close(self) -> None:
        pass


class ClientAppWorker:
    """Serves the ClientApp tasks of the SuperNode in this process, one at a time, in a thread."""

    def __init__(self, signals: NodeSignals, *, fallback: float = 1.0) -> None:
        self.signals = signals
        self.fallback = fallback  # look for a task anyway after this long without a wake-up
        self.apps: dict[str, Any] = {}  # FAB hash -> ClientApp (loaded once)

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
        from flwr.supernode.servicer.runtime import runtime_handlers

        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        while True:
            self.signals.task.clear()  # a message stored from here on wakes the wait below
            state = self.signals.state
            res = None if state is None else runtime_handlers.acquire_task(request, state)
            if res is not None and res.HasField("task") and res.token:
                self.run_task(DirectRuntime(state, res.task))
            else:
                self.signals.task.wait(self.fallback)

    def run_task(self, client: DirectRuntime) -> None:
        """One ClientApp task, as ``flwr-clientapp`` runs it, without a process or HTTP."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest
        from flwr.supernode.runtime import run_clientapp as rc

        stop = threading.Event()

        def beat() -> None:  # a claimed task expires after 30 s without one (flwr 1.42)
            while not stop.wait(HEARTBEAT_SECONDS):
                try:
                    client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
                except Exception as err:
                    log.warning("task heartbeat failed: %s", err)

        threading.Thread(target=beat, daemon=True).start()
        context = message = reply = None
        status, details = SubStatus.FAILED, "ClientApp task failed"
        try:
            message, context, run, fab = rc.pull_task_input(client)
            reply = self._app(run, fab)(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as err:
            log.exception("ClientApp raised")
            details = f"{type(err)}:<'{err}'>"
            if message is not None:
                code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
                reply = Message(Error(code=code, reason=details), reply_to=message)
        finally:
            stop.set()
            try:
                if reply is not None and context is not None:
                    rc.push_message(client, reply, context)
                    self.signals.replied()
            finally:
                rc.push_task_output(client, context, status, details)


def main(argv: Sequence[str] | None = None, *, start: Callable[[], None] | None = None) -> None:
    """Parse ``--poll-cap``, patch flwr, start the worker thread and run ``flower-supernode``."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--poll-cap", type=float, default=0.2)
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
    signals = NodeSignals(ours.poll_cap)
    patch_supernode_loop(signals)
    from flwr.supernode.runtime import run_clientapp

    short_object_backoff(run_clientapp)
    # torch, flwr's app modules, securedream and the dataset loaders' libraries (imported lazily
    # by securedream.data) before the node registers with the SuperLink: a restarted node that the
    # server greets must answer its HELLO within the request timeout, not spend it importing
    import sklearn.datasets
    import sklearn.model_selection  # noqa: F401
    import torchvision.datasets  # noqa: F401

    import securedream.engines.flower.client_app  # noqa: F401

    worker = ClientAppWorker(signals)
    threading.Thread(target=worker.serve_forever, name="clientapp-worker", daemon=True).start()
    sys.argv = ["flower-supernode", *rest, "--isolation", "process"]
    from flwr.supernode.cli import flower_supernode

    (start or flower_supernode)()


if __name__ == "__main__":
    main()
