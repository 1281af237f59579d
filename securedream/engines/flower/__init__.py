"""CoDream on Flower (flwr >= 1.42, Message API): ServerApp, ClientApp, simulation, deployment.

``run_flower(cfg, out)`` runs a config on Flower's simulation runtime in this process (what
``securedream run --engine flower`` calls); :mod:`securedream.engines.flower.deploy` writes a Flower
App folder for the deployment runtime (SuperLink + SuperNodes) and can start a local federation.
See docs/distributed.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from securedream.config import RunConfig, config_to_toml


def run_flower(
    cfg: RunConfig,
    out: str | Path,
    *,
    progress: bool = True,
    timeout: float = 600.0,
    backend_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` on Flower's simulation runtime (one virtual SuperNode per client).

    Writes the same run folder as the in-process engine into ``out`` and returns the same summary
    (plus ``"engine": "flower"``). By default Ray gets one CPU and one ClientApp actor, so clients
    compute one after the other as they do in-process; pass ``backend_config`` to change that.
    Ray's temporary files go to a fresh short folder under /tmp unless ``RAY_TMPDIR`` is set.
    """
    from flwr.simulation import run_simulation

    from securedream.engines.flower.client_app import make_client_app
    from securedream.engines.flower.server_app import (
        FlowerOptions,
        check_supported,
        make_server_app,
    )

    check_supported(cfg)
    config_text = config_to_toml(cfg)
    result: dict[str, Any] = {}
    server = make_server_app(
        config_text,
        out=out,
        progress=progress,
        options=FlowerOptions(timeout=timeout, connect_timeout=max(timeout, 60.0)),
        result=result,
    )
    client = make_client_app(config_text)
    backend = backend_config or {
        "init_args": {"num_cpus": 1, "num_gpus": 0, "include_dashboard": False},
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    }
    own_tmp = None
    if not os.environ.get("RAY_TMPDIR"):
        own_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        os.environ["RAY_TMPDIR"] = own_tmp
    try:
        run_simulation(
            server_app=server,
            client_app=client,
            num_supernodes=cfg.clients.count,
            backend_config=backend,  # type: ignore[arg-type]
        )
    finally:
        if own_tmp is not None:
            os.environ.pop("RAY_TMPDIR", None)
            shutil.rmtree(own_tmp, ignore_errors=True)
    if "summary" not in result:
        raise RuntimeError("the Flower simulation ended without a summary (see the log above)")
    return result["summary"]


__all__ = ["run_flower"]
