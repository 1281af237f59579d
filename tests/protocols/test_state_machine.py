"""Stateful property test: parties drop between any two stages of a multi-aggregation session.

Hypothesis interleaves "client c goes silent", "the server closes the current stage" and "a
truncated message is thrown at the server". Whatever the interleaving:

* every completed aggregation is the exact integer sum of its survivors' inputs;
* the server aborts only with TooFewSurvivors, and for the complete graph exactly when fewer than t
  clients sent the message of some stage;
* rejected messages leave the server unchanged;
* no (client, step) ever has t self-mask shares *and* t mask-key shares revealed to the server.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from secagg_support import MECHANICS, Harness, snapshot

from protocols import SecAggConfig, TooFewSurvivors, decode_integer_sum, wire
from protocols.errors import MalformedMessage
from protocols.messages import MessageType
from protocols.state import State

MAX_STEPS = 4


class SecAggSession(RuleBasedStateMachine):
    """One session; rules drive it stage by stage."""

    @initialize(
        n=st.integers(3, 8),
        harary=st.booleans(),
        active=st.booleans(),
        t_frac=st.floats(0.1, 1.0),
        seed=st.integers(0, 2**32 - 1),
    )
    def setup(self, n: int, harary: bool, active: bool, t_frac: float, seed: int) -> None:
        degree = 2 if harary and n > 4 else None
        k = degree if degree else n - 1
        t = max(1, min(k + 1, round(t_frac * (k + 1))))
        if active:  # below this an equivocating server could collect both kinds: refused
            t = max(t, (k + 1) // 2 + 1)
        self.cfg = SecAggConfig(
            n,
            graph="harary" if degree else "complete",
            degree=degree,
            threshold=t,
            mode="active" if active else "semi-honest",
            **MECHANICS,
        )
        # graph seed and session id fixed by the example: the graph decides the control flow
        self.h = Harness(
            self.cfg, graph_seed=seed.to_bytes(32, "big"), session=seed.to_bytes(16, "big")
        )
        self.rng = np.random.default_rng(seed)
        self.silent: set[int] = set()
        self.pending: dict[int, list[bytes]] = {u: [c.start()] for u, c in self.h.clients.items()}
        self.inputs: dict[int, dict[int, np.ndarray]] = defaultdict(dict)
        self.revealed: dict[tuple[int, int], dict[str, set[int]]] = defaultdict(
            lambda: {"self": set(), "key": set()}
        )
        self.done = False
        self.completed = 0

    # ------------------------------------------------------------------ rules

    @rule(c=st.integers(0, 15))
    def client_goes_silent(self, c: int) -> None:
        if not self.done and c < self.cfg.num_clients:
            self.silent.add(c)

    def _send(self, u: int, data: bytes) -> None:
        self.h.server.receive(data, sender=u)
        if wire.peek_type(data) is MessageType.UNMASK_SHARES:
            msg = wire.decode(data, self.h.server._limits)
            for owner, _ in msg.self_shares:
                self.revealed[(msg.step, owner)]["self"].add(u)
            for owner, _ in msg.key_shares:
                self.revealed[(msg.step, owner)]["key"].add(u)

    @rule(times=st.integers(1, 6))
    def close_stages(self, times: int) -> None:
        for _ in range(times):
            self._close_stage()

    def _close_stage(self) -> None:
        if self.done:
            return
        server = self.h.server
        step = server.step
        senders = 0
        if server.state is State.COLLECT_INPUTS:
            for u, c in self.h.clients.items():
                if u in self.silent or c.state is not State.AWAIT_INPUT or c.step != step:
                    continue
                x = self.rng.integers(-(2**20), 2**20, 6)
                try:
                    data = c.submit_input(x)
                except TooFewSurvivors:
                    self.silent.add(u)
                    continue
                self.inputs[step][u] = x
                self._send(u, data)
                senders += 1
        else:
            for u, msgs in sorted(self.pending.items()):
                if u in self.silent:
                    continue
                for data in msgs:
                    self._send(u, data)
                    senders += 1
        self.pending = {}
        try:
            out = server.close_stage()
        except TooFewSurvivors as exc:
            self.done = True
            assert server.state is State.ABORTED
            assert "threshold is" in str(exc)
            if self.cfg.graph == "complete":
                assert senders < self.cfg.t, (senders, self.cfg.t, str(exc))
            return
        if self.cfg.graph == "complete":
            assert senders >= self.cfg.t
        for u, data in out.messages.items():
            if u in self.silent:
                continue
            try:
                self.pending[u] = self.h.clients[u].receive(data)
            except TooFewSurvivors:
                self.silent.add(u)
        if out.result is not None:
            res = out.result
            assert res.survivors <= set(self.inputs[res.step])
            expected = sum((self.inputs[res.step][v] for v in res.survivors), np.zeros(6, np.int64))
            assert np.array_equal(decode_integer_sum(res.total, self.cfg.bits), expected)
            self.completed += 1
            if self.completed >= MAX_STEPS:
                self.done = True

    @rule(data=st.data())
    def truncated_message_is_rejected(self, data: st.DataObject) -> None:
        if self.done or not any(self.pending.values()):
            return
        u = data.draw(st.sampled_from(sorted(u for u, m in self.pending.items() if m)))
        msg = self.pending[u][0]
        cut = data.draw(st.integers(0, len(msg) - 1))
        before = snapshot(self.h.server)
        try:
            self.h.server.receive(msg[:cut], sender=u)
        except MalformedMessage:
            pass
        else:  # pragma: no cover - would be a bug
            raise AssertionError("truncated message accepted")
        assert snapshot(self.h.server) == before

    def teardown(self) -> None:
        if hasattr(self, "h"):
            event(f"{self.cfg.graph} {self.cfg.mode}: {self.completed} aggregations")

    # ------------------------------------------------------------------ invariants

    @invariant()
    def server_never_holds_both_secrets(self) -> None:
        if not hasattr(self, "cfg"):
            return
        t = self.cfg.t
        for (step, owner), kinds in self.revealed.items():
            assert not (len(kinds["self"]) >= t and len(kinds["key"]) >= t), (step, owner)
            assert not (kinds["self"] and kinds["key"]), (step, owner, kinds)

    @invariant()
    def no_client_revealed_two_kinds(self) -> None:
        if not hasattr(self, "h"):
            return
        for c in self.h.clients.values():
            kinds = c.revealed
            assert all(k in ("self-mask", "mask-key") for k in kinds.values())


TestSecAggSession = SecAggSession.TestCase
TestSecAggSession.settings = settings(stateful_step_count=30, deadline=None)
