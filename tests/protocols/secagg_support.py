"""Test helpers: a manual harness around Server and Client (snapshots come from the kit)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from protocols import Client, SecAggConfig, Server, keys
from protocols.testing import freeze, snapshot  # noqa: F401 - re-exported for the tests

#: Rates for tests of protocol *mechanics* at arbitrary thresholds: no colluders assumed and no
#: dropouts planned, so validation refuses only what is unsafe even then (active mode: 2t <= k + 1).
MECHANICS = {"corruption_rate": 0.0, "dropout_rate": 0.0}


class Harness:
    """Drive one server and n clients by hand, stage by stage."""

    def __init__(
        self,
        config: SecAggConfig,
        *,
        active_keys: bool | None = None,
        graph_seed: bytes | None = None,
        session: bytes | None = None,
    ) -> None:
        self.config = config
        self.session = session if session is not None else os.urandom(16)
        n = config.num_clients
        signing: dict[int, Any] = {}
        verify = None
        if config.active if active_keys is None else active_keys:
            verify = {}
            for i in range(n):
                signing[i], verify[i] = keys.generate_signing_key()
        self.verify = verify
        self.signing = signing
        self.server = Server(config, self.session, verify_keys=verify, graph_seed=graph_seed)
        self.clients = {
            i: Client(config, i, self.session, signing_key=signing.get(i), verify_keys=verify)
            for i in range(n)
        }

    def setup(self, silent: set[int] | None = None) -> dict[int, bytes]:
        """Run advertise + share keys; returns the ForwardShares messages (delivered)."""
        silent = silent or set()
        for i, c in self.clients.items():
            if i not in silent:
                self.server.receive(c.start())
        rosters = self.server.close_stage().messages
        for u, data in rosters.items():
            for reply in self.clients[u].receive(data):
                self.server.receive(reply)
        forwards = self.server.close_stage().messages
        for u, data in forwards.items():
            self.clients[u].receive(data)
        return forwards

    def inputs(self, vectors: dict[int, np.ndarray]) -> dict[int, bytes]:
        """Clients submit; returns the MaskedInput bytes (already received by the server)."""
        sent = {}
        for u, x in vectors.items():
            sent[u] = self.clients[u].submit_input(x)
            self.server.receive(sent[u])
        return sent

    def unmask(self, responders: set[int] | None = None):
        """Close inputs, deliver unmask requests, collect replies, close; returns the result."""
        out = self.server.close_stage()
        if self.config.active:
            for u, data in out.messages.items():
                for reply in self.clients[u].receive(data):
                    self.server.receive(reply)
            out = self.server.close_stage()
        for u, data in out.messages.items():
            if responders is not None and u not in responders:
                continue
            for reply in self.clients[u].receive(data):
                self.server.receive(reply)
        return self.server.close_stage().result
