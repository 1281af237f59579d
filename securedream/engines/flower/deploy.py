"""Deployment runtime helpers: write a Flower App folder, run a local SuperLink + SuperNodes.

A Flower App is a folder with a ``pyproject.toml`` (``[tool.flwr.app]``: publisher, components,
run config defaults) and the module the components point to. :func:`write_app` writes one for a
resolved securedream config: ``securedream_flower_app.py`` (two lines: build the ServerApp and
ClientApp from ``securedream.toml``) and ``securedream.toml`` itself, so ``flwr run`` ships the
config in the FAB to the SuperLink and to every SuperNode, and all of them run the same config
(the HELLO exchange checks its digest). ``securedream`` must be installed where the SuperLink and
the SuperNodes run (``flwr run`` does not install it).

:class:`LocalFederation` starts ``flower-superlink --insecure`` and one ``flower-supernode
--insecure --node-config partition-id=K`` per client on localhost (free ports, a private
``FLWR_HOME``), submits the app with ``flwr run`` and waits for ``summary.json``. It is what the
deployment test and the timing table use; across machines the same commands run by hand with TLS
(docs/distributed.md).

Command line::

    python -m securedream.engines.flower.deploy app DIR --preset smoke [--set KEY=VALUE ...]
    python -m securedream.engines.flower.deploy local --preset smoke --out runs/x [--set ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from securedream.config import RunConfig, config_to_toml, resolve_config

APP_MODULE = "securedream_flower_app"

_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "securedream-codream"
version = "1.0.0"
description = "CoDream with secure aggregation (securedream) on Flower"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "securedream"

[tool.flwr.app.components]
serverapp = "{module}:server"
clientapp = "{module}:client"

[tool.flwr.app.config]
out = ""
timeout = {timeout}
connect-timeout = {connect_timeout}
poll = 0.05
progress-file = ""
"""

_MODULE = '''\
"""Flower App entry points of a securedream run (written by securedream.engines.flower.deploy)."""

from pathlib import Path

from securedream.engines.flower.client_app import make_client_app
from securedream.engines.flower.server_app import make_server_app

CONFIG = (Path(__file__).parent / "securedream.toml").read_text(encoding="utf-8")
server = make_server_app(CONFIG)
client = make_client_app(CONFIG)
'''


def write_app(
    folder: str | Path, cfg: RunConfig, *, timeout: float = 600.0, connect_timeout: float = 300.0
) -> Path:
    """Write a Flower App folder running ``cfg``; returns the folder."""
    from securedream.privacy.engine import refuse_for_deployment

    refuse_for_deployment(cfg)  # every node holds the seed: no seed-derived noise keys
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    (path / "pyproject.toml").write_text(
        _PYPROJECT.format(
            module=APP_MODULE, timeout=float(timeout), connect_timeout=float(connect_timeout)
        ),
        encoding="utf-8",
    )
    (path / f"{APP_MODULE}.py").write_text(_MODULE, encoding="utf-8")
    (path / "securedream.toml").write_text(config_to_toml(cfg), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


class LocalFederation:
    """A SuperLink and ``num_nodes`` SuperNodes on localhost, insecure mode (tests, timing).

    Every process is started in its own session so that :meth:`kill_node` ends a SuperNode with
    the SuperExec and ClientApp processes it started, and :meth:`close` ends everything it started.
    """

    def __init__(self, workdir: str | Path, num_nodes: int, *, poll_cap: float = 0.2) -> None:
        self.workdir = Path(workdir)
        self.poll_cap = poll_cap
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.num_nodes = num_nodes
        self.port = free_port()
        self.home = self.workdir / "flwr-home"
        self.home.mkdir(exist_ok=True)
        bindir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
            "FLWR_TELEMETRY_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
        }
        self.superlink: subprocess.Popen[bytes] | None = None
        self.nodes: dict[int, subprocess.Popen[bytes]] = {}
        self.run_process: subprocess.Popen[bytes] | None = None

    # --- processes ----------------------------------------------------------------------------
    def _spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        return subprocess.Popen(
            list(args),
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self, timeout: float = 60.0) -> LocalFederation:
        (self.home / "config.toml").write_text(
            "[superlink]\n"
            'default = "securedream-local"\n\n'
            "[superlink.securedream-local]\n"
            f'address = "127.0.0.1:{self.port}"\n'
            "insecure = true\n",
            encoding="utf-8",
        )
        self.superlink = self._spawn(
            "superlink",
            [
                "flower-superlink",
                "--insecure",
                "--host",
                "127.0.0.1",  # insecure mode: loopback only, whatever flwr's default becomes
                "--port",
                str(self.port),
                "--database",
                ":flwr-in-memory:",
            ],
        )
        _wait_port(self.port, timeout)
        for k in range(self.num_nodes):
            self.start_node(k)
        return self

    def start_node(self, partition: int, **node_config: Any) -> None:
        """Start the SuperNode holding ``partition`` (again, after :meth:`kill_node`)."""
        pairs = {"partition-id": partition, **node_config}
        text = " ".join(
            f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}" for k, v in pairs.items()
        )
        self.nodes[partition] = self._spawn(
            f"supernode-{partition}",
            [
                sys.executable,
                "-m",
                "securedream.engines.flower.supernode",
                "--poll-cap",
                str(self.poll_cap),
                "--insecure",
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--port",
                str(free_port()),
                "--node-config",
                text,
            ],
        )

    def kill_node(self, partition: int) -> None:
        """SIGKILL the SuperNode of ``partition`` and every process it started."""
        process = self.nodes.pop(partition)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def submit(self, app: str | Path, run_config: dict[str, Any]) -> subprocess.Popen[bytes]:
        """``flwr run APP securedream-local --stream --run-config ...`` (returns the process)."""
        overrides = " ".join(
            f"{k}={json.dumps(v)}" if isinstance(v, str) else f"{k}={v}"
            for k, v in run_config.items()
        )
        self.run_process = self._spawn(
            "flwr-run",
            ["flwr", "run", str(app), "securedream-local", "--stream", "--run-config", overrides],
        )
        return self.run_process

    def run(
        self,
        cfg: RunConfig,
        out: str | Path,
        *,
        timeout: float = 600.0,
        wait: float = 3600.0,
        progress_file: str | Path | None = None,
    ) -> dict[str, Any]:
        """Write the app, submit it and wait for the run folder's ``summary.json``."""
        out = Path(out).resolve()
        app = write_app(self.workdir / "app", cfg, timeout=timeout)
        run_config: dict[str, Any] = {"out": str(out), "timeout": float(timeout)}
        if progress_file is not None:
            run_config["progress-file"] = str(Path(progress_file).resolve())
        self.submit(app, run_config)
        return self.wait_summary(out, wait)

    def wait_summary(self, out: str | Path, wait: float) -> dict[str, Any]:
        summary = Path(out) / "summary.json"
        deadline = time.monotonic() + wait
        log = self.workdir / "flwr-run.log"
        while time.monotonic() < deadline:
            if summary.is_file():
                return json.loads(summary.read_text(encoding="utf-8"))
            # the run goes on in the SuperLink whether or not `flwr run --stream` still follows
            # it; its log tells when the ServerApp failed
            text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
            if "ServerApp raised an exception" in text:
                time.sleep(2.0)  # let the traceback land in the log
                tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
                raise RuntimeError(f"the ServerApp failed (log {log}):\n{tail}")
            time.sleep(0.5)
        raise TimeoutError(f"no {summary} after {wait:g} s; see logs in {self.workdir}")

    def close(self) -> None:
        for process in [self.run_process, *self.nodes.values(), self.superlink]:
            if process is None or process.poll() is not None:
                continue
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        self.nodes.clear()

    def __enter__(self) -> LocalFederation:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(
    argv: Sequence[str] | None = None, prog: str = "python -m securedream.engines.flower.deploy"
) -> int:
    """`local`: a SuperLink and one SuperNode per client on localhost, then the run; `app`: a
    Flower App folder to run against a SuperLink of your own (docs/distributed.md)."""
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("app", "local"):
        p = sub.add_parser(name)
        p.add_argument("--preset")
        p.add_argument("--config")
        p.add_argument("--set", action="append", default=[], dest="overrides")
        p.add_argument("--timeout", type=float, default=600.0)
    sub.choices["app"].add_argument("folder")
    sub.choices["local"].add_argument("--out", required=True)
    sub.choices["local"].add_argument("--workdir", default="")
    args = parser.parse_args(argv)
    cfg = resolve_config(
        config_path=args.config,
        preset=None if args.config else (args.preset or "smoke"),
        overrides=args.overrides,
    )
    if args.command == "app":
        path = write_app(args.folder, cfg, timeout=args.timeout)
        print(
            f"wrote Flower App {path}; run it with: flwr run {path} <superlink> "
            "--run-config 'out=\"/abs/run/folder\"'"
        )
        return 0
    workdir = args.workdir or tempfile.mkdtemp(prefix="sd-flower-")
    with LocalFederation(workdir, cfg.clients.count) as fed:
        started = time.perf_counter()
        summary = fed.run(cfg, args.out, timeout=args.timeout)
        print(
            json.dumps(
                {
                    "seconds": time.perf_counter() - started,
                    "final_mean_accuracy": summary["final_mean_accuracy"],
                    "workdir": workdir,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
