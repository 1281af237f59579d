"""Client.to_bytes / Client.from_bytes: whole sessions with every client saved and restored
around every message (both modes, both graphs), canonical bytes, and typed refusals."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import Client, InvalidState, SecAggConfig, Server, TooFewSurvivors, keys
from protocols.session import STAGES
from protocols.testing import TransportResult, check_transport, configs
from protocols.vectors import insecure_deterministic_randomness


class PersistedClients:
    """A transport whose clients exist only as bytes between messages (as on Flower)."""

    def __init__(self, config: SecAggConfig) -> None:
        self.config = config
        session = keys.random_bytes(16)
        signing: dict[int, object] = {}
        verify = None
        if config.active:
            verify = {}
            for i in range(config.num_clients):
                signing[i], verify[i] = keys.generate_signing_key()
        self._server = Server(config, session, verify_keys=verify)
        self.blobs = {
            u: Client(config, u, session, signing_key=signing.get(u), verify_keys=verify).to_bytes()
            for u in range(config.num_clients)
        }
        self.out: set[int] = set()
        self.started = False
        self.round_trips = 0

    @property
    def server(self) -> Server:
        return self._server

    def _call(self, u: int, fn):
        client = Client.from_bytes(self.config, self.blobs[u])
        assert client.to_bytes() == self.blobs[u]  # canonical
        try:
            return fn(client)
        finally:
            self.blobs[u] = client.to_bytes()
            self.round_trips += 1

    def _close(self):
        try:
            return self._server.close_stage()
        except TooFewSurvivors as exc:
            for u, data in exc.notifications.items():
                if u not in self.out:
                    self._call(u, lambda c, d=data: c.receive(d))
            raise

    def _send_all(self, messages: Mapping[int, bytes], stage: str, drop: Mapping[int, str]):
        for u, data in sorted(messages.items()):
            if u in self.out:
                continue
            if u in drop and STAGES.index(drop[u]) <= STAGES.index(stage):
                self.out.add(u)
                continue
            try:
                replies = self._call(u, lambda c, d=data: c.receive(d))
            except TooFewSurvivors:
                self.out.add(u)
                continue
            for reply in replies:
                self._server.receive(reply, sender=u)

    def aggregate(
        self, inputs: Mapping[int, np.ndarray], drop: Mapping[int, str]
    ) -> TransportResult:
        drop = {
            u: ("unmask" if s == "consistency" and not self.config.active else s)
            for u, s in drop.items()
        }
        if not self.started:
            self.started = True
            for u in range(self.config.num_clients):
                if drop.get(u) == "advertise":
                    self.out.add(u)
                else:
                    self._server.receive(self._call(u, lambda c: c.start()), sender=u)
            self._send_all(self._close().messages, "share", drop)
            self._send_all(self._close().messages, "masked_input", drop)
        for u in range(self.config.num_clients):
            if u in self.out:
                continue
            if drop.get(u) in ("advertise", "share", "masked_input"):
                self.out.add(u)
                continue
            try:
                msg = self._call(u, lambda c, x=inputs[u]: c.submit_input(x))
            except TooFewSurvivors:
                self.out.add(u)
                continue
            self._server.receive(msg, sender=u)
        out = self._close()
        if self.config.active:
            self._send_all(out.messages, "consistency", drop)
            out = self._close()
        self._send_all(out.messages, "unmask", drop)
        result = self._close().result
        from protocols import decode_integer_sum

        total = decode_integer_sum(result.total, self.config.bits)
        return TransportResult(total, frozenset(result.survivors))

    def close(self) -> None:
        self._server.close()


def test_sessions_survive_save_and_restore_around_every_message() -> None:
    report = check_transport(PersistedClients, configs_strategy=configs(dim=4), max_examples=12)
    assert report.aggregations > 0 and report.with_dropouts > 0


def test_active_mode_state_keeps_the_signing_key() -> None:
    config = SecAggConfig(4, threshold=3, mode="active")
    t = PersistedClients(config)
    res = t.aggregate({u: np.arange(3) + u for u in range(4)}, {})
    assert res.integer_sum.tolist() == [6, 10, 14]
    restored = Client.from_bytes(config, t.blobs[0])
    assert restored.config.active and restored.to_bytes() == t.blobs[0]


def test_state_from_another_configuration_is_refused() -> None:
    blob = Client(SecAggConfig(4, threshold=3), 0, bytes(16)).to_bytes()
    with pytest.raises(InvalidState, match="another configuration"):
        Client.from_bytes(SecAggConfig(4, threshold=4), blob)


def _saved_states() -> list[bytes]:
    """Four mid-session client states, the same in every run (public test seed)."""
    with insecure_deterministic_randomness(bytes(32)):
        t = PersistedClients(CONFIG)
        t.aggregate({u: np.arange(3) for u in range(4)}, {})
    return [t.blobs[u] for u in range(4)]


CONFIG = SecAggConfig(4, threshold=3)
SAVED = _saved_states()


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mutated_state_decodes_or_raises_invalid_state(data: st.DataObject) -> None:
    config = CONFIG
    blob = bytearray(SAVED[data.draw(st.integers(0, 3))])
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.sampled_from(b'0123456789abcdef"[]{},:-x '))
    try:
        client = Client.from_bytes(config, bytes(blob))
    except InvalidState:
        return
    assert isinstance(client.to_bytes(), bytes)


@pytest.mark.parametrize("junk", [b"", b"\xff", b"[]", b"{}", b'{"format": 1}', "text"])
def test_junk_is_invalid_state(junk: object) -> None:
    with pytest.raises(InvalidState):
        Client.from_bytes(SecAggConfig(4, threshold=3), junk)  # type: ignore[arg-type]
