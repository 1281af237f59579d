"""Multi-aggregation sessions: the engine-facing API and the session security invariant."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import (
    ConfigError,
    EncodingError,
    InProcessSession,
    LocalProtocolError,
    SecAggConfig,
    TooFewSurvivors,
    keys,
    shamir,
    simulate,
    wire,
)
from protocols.messages import MaskedInput, ShareKeys, UnmaskRequest, UnmaskShares

STAGES = ["advertise", "share", "masked_input", "consistency", "unmask"]


def test_engine_api_multi_step_session() -> None:
    ids = ["alice", "bob", "carol", "dave", "erin"]
    cfg = SecAggConfig(5, threshold=3, clip=1.0)
    rng = np.random.default_rng(0)
    with InProcessSession(cfg, ids) as session:
        first = session.aggregate({c: rng.uniform(-1, 1, 50) for c in ids})
        assert first.step == 0 and first.survivors == set(ids)
        second_inputs = {c: rng.uniform(-1, 1, 50) for c in ids}
        second = session.aggregate(second_inputs, drop={"bob": "masked_input", "erin": "unmask"})
        assert second.survivors == {"alice", "carol", "dave", "erin"}
        assert second.dropped == {"bob", "erin"}
        exact = sum(second_inputs[c] for c in second.survivors)
        assert np.max(np.abs(second.sum - exact)) <= second.error_bound
        # later steps need no key set-up round trips: far fewer bytes down than the first step
        assert second.bytes_down["alice"] < first.bytes_down["alice"]
        assert second.bytes_up["bob"] == 0 and second.bytes_down["bob"] == 0
        third = session.aggregate({c: np.ones(50) for c in ("alice", "carol", "dave")})
        assert third.survivors == {"alice", "carol", "dave"}
        assert np.allclose(third.sum, 3.0, atol=third.error_bound)
        assert session.active_clients == {"alice", "carol", "dave"}
        assert session.step == 3
        assert set(session.total_bytes_up) == set(ids)
    with pytest.raises(LocalProtocolError, match="closed"):
        session.aggregate({c: np.ones(50) for c in ids})


def test_integer_inputs_and_weights() -> None:
    cfg = SecAggConfig(4, threshold=2, max_weight=10.0, clip=1.0)
    with InProcessSession(cfg) as session:
        ints = {i: np.arange(6, dtype=np.int64) * (i + 1) for i in range(4)}
        res = session.aggregate(ints)
        assert res.sum.dtype == np.int64 and np.array_equal(res.sum, np.arange(6) * 10)
        assert res.error_bound == 0.0
        floats = {i: np.full(6, 0.5) for i in range(4)}
        res = session.aggregate(floats, weights={0: 10.0, 1: 0.0})
        assert np.allclose(res.sum, 0.5 * (10 + 0 + 1 + 1), atol=res.error_bound)


def test_session_validates_inputs_before_sending_anything() -> None:
    cfg = SecAggConfig(3, threshold=2)
    session = InProcessSession(cfg)
    ok = {i: np.zeros(4) for i in range(3)}
    for bad, exc, match in [
        ({0: np.zeros(4), 1: np.zeros(4)}, ConfigError, "no vector for active clients \\[2\\]"),
        ({**ok, 9: np.zeros(4)}, ConfigError, "unknown client id 9"),
        ({**ok, 2: np.array([np.nan, 0, 0, 0])}, EncodingError, "NaN"),
        ({**ok, 2: np.zeros(5)}, EncodingError, "one length"),
        ({**ok, 2: np.zeros(4, dtype=np.int64)}, EncodingError, "all float or all integer"),
    ]:
        with pytest.raises(exc, match=match):
            session.aggregate(bad)
    with pytest.raises(ConfigError, match="dropout stage"):
        session.aggregate(ok, drop={0: "lunch"})
    with pytest.raises(EncodingError, match="weight"):
        session.aggregate(ok, weights={0: 2.0})
    assert session.aggregate(ok).survivors == {0, 1, 2}  # nothing was sent by the failures
    with pytest.raises(ConfigError, match="client_ids"):
        InProcessSession(cfg, ["a", "a", "b"])


def test_too_few_survivors_ends_the_session() -> None:
    cfg = SecAggConfig(4, threshold=3)
    session = InProcessSession(cfg)
    session.aggregate({i: np.zeros(2) for i in range(4)})
    with pytest.raises(TooFewSurvivors):
        session.aggregate({i: np.zeros(2) for i in range(4)}, drop={0: "unmask", 1: "unmask"})
    with pytest.raises(LocalProtocolError, match="aborted"):
        session.aggregate({i: np.zeros(2) for i in range(2, 4)})


def test_simulate_session_with_step_schedule() -> None:
    cfg = SecAggConfig(6, threshold=3, graph="harary", degree=4)
    rng = np.random.default_rng(5)
    rounds = [{i: rng.integers(-100, 100, 8) for i in range(6)} for _ in range(4)]
    res = simulate(rounds, cfg, {0: (1, "masked_input"), 3: (2, "unmask")})
    assert [sorted(s.survivors) for s in res.steps] == [
        [0, 1, 2, 3, 4, 5],
        [1, 2, 3, 4, 5],
        [1, 2, 3, 4, 5],
        [1, 2, 4, 5],
    ]
    for r, s in zip(rounds, res.steps, strict=True):
        assert np.array_equal(s.sum, sum(r[i] for i in s.survivors))
    assert res.bytes_up[0] > 0 and res.bytes_down[0] > 0
    with pytest.raises(ConfigError, match="dropouts"):
        simulate(rounds, cfg, {0: (9, "unmask")})


# --------------------------------------------------------------------------- security replay


class ServerView:
    """Everything the server sees in a session transcript, and what it can reconstruct."""

    def __init__(self, transcript: list, config: SecAggConfig) -> None:
        limits = wire.WireLimits.for_config(config.num_clients, config.max_dim, config.bits)
        self.t = config.t
        self.self_shares: dict[tuple[int, int], dict[int, int]] = defaultdict(dict)
        self.key_shares: dict[tuple[int, int], dict[int, int]] = defaultdict(dict)
        self.mask_pks: dict[tuple[int, int], bytes] = {}
        self.masked: dict[tuple[int, int], MaskedInput] = {}
        self.requests: list[UnmaskRequest] = []
        for _step, direction, u, data in transcript:
            msg = wire.decode(data, limits)
            if isinstance(msg, ShareKeys):
                self.mask_pks[(u, 0)] = msg.bundle.mask_pk
            elif isinstance(msg, MaskedInput):
                self.masked[(u, msg.step)] = msg
                self.mask_pks[(u, msg.step + 1)] = msg.next_bundle.mask_pk
            elif isinstance(msg, UnmaskShares):
                for owner, blob in msg.self_shares:
                    self.self_shares[(owner, msg.step)][u + 1] = shamir.share_from_bytes(blob)
                for owner, blob in msg.key_shares:
                    self.key_shares[(owner, msg.step)][u + 1] = shamir.share_from_bytes(blob)
            elif isinstance(msg, UnmaskRequest) and direction == "down":
                self.requests.append(msg)

    def can_get_seed(self, owner: int, step: int) -> bool:
        return len(self.self_shares.get((owner, step), {})) >= self.t

    def can_get_mask_key(self, owner: int, step: int) -> bool:
        return len(self.key_shares.get((owner, step), {})) >= self.t


@given(seed=st.integers(0, 2**32 - 1), data=st.data())
def test_server_never_holds_both_secrets_of_any_client_step(seed: int, data: st.DataObject) -> None:
    """Replay a session as the server: for every (client, step), the shares it received never
    reach t for both the self-mask seed and the mask private key. Also check the situation that
    breaks the naive 'one long-term mask key' design occurs here and is harmless: a client whose
    seed was reconstructed at step j and whose mask key was reconstructed at a later step has
    *different* mask keys at the two steps."""
    n, steps = 7, 5
    cfg = SecAggConfig(
        n,
        threshold=3,
        graph=data.draw(st.sampled_from(["complete", "harary"])),
        degree=None,
        dropout_rate=0.3,
        corruption_rate=0.0,
    )
    if cfg.graph == "harary":
        cfg = SecAggConfig(n, threshold=3, graph="harary", degree=4)
    schedule = data.draw(
        st.dictionaries(
            st.integers(0, n - 1),
            st.tuples(st.integers(0, steps - 1), st.sampled_from(STAGES[2:])),
            max_size=3,
        )
    )
    rng = np.random.default_rng(seed)
    session = InProcessSession(cfg, record=True)
    results = []
    try:
        for j in range(steps):
            drop = {
                c: st_
                for c, (s, st_) in schedule.items()
                if s == j and c not in session.dropped_clients
            }
            live = [i for i in range(n) if i not in session.dropped_clients]
            results.append(session.aggregate({i: rng.integers(-9, 9, 16) for i in live}, drop=drop))
    except TooFewSurvivors:
        pass
    view = ServerView(session.transcript, cfg)
    owners_steps = set(view.self_shares) | set(view.key_shares)
    for owner, step in owners_steps:
        assert not (view.can_get_seed(owner, step) and view.can_get_mask_key(owner, step)), (
            owner,
            step,
        )
        # honest clients never reveal the two kinds for one (owner, step), not even below t
        assert not (view.self_shares.get((owner, step)) and view.key_shares.get((owner, step)))
    # every completed step was unmasked with exactly the secrets it needed
    for res in results:
        for v in res.survivors:
            assert view.can_get_seed(v, res.step)
    # the naive-design attack pattern: seed at step j, mask key at a later step j' > j
    for owner, j in list(view.self_shares):
        for o2, j2 in list(view.key_shares):
            if (
                o2 == owner
                and j2 > j
                and view.can_get_seed(owner, j)
                and view.can_get_mask_key(owner, j2)
            ):
                sk = keys.x25519_from_private(
                    shamir.reconstruct(view.key_shares[(owner, j2)], cfg.t)
                )
                assert keys.public_bytes(sk) == view.mask_pks[(owner, j2)]
                assert view.mask_pks[(owner, j)] != view.mask_pks[(owner, j2)]


def test_naive_long_term_key_attack_pattern_is_exercised() -> None:
    """Deterministic instance of the pattern above: client 2 survives step 0 (seed revealed),
    then drops at step 1 after sharing keys (mask key revealed)."""
    cfg = SecAggConfig(5, threshold=3)
    session = InProcessSession(cfg, record=True)
    session.aggregate({i: np.arange(4) for i in range(5)})
    session.aggregate({i: np.arange(4) for i in range(5)}, drop={2: "masked_input"})
    view = ServerView(session.transcript, cfg)
    assert view.can_get_seed(2, 0) and not view.can_get_mask_key(2, 0)
    assert view.can_get_mask_key(2, 1) and not view.can_get_seed(2, 1)
    # with a long-term key the server could now strip every mask from client 2's step-0 vector;
    # here the step-1 key is unrelated to step 0's:
    sk1 = keys.x25519_from_private(shamir.reconstruct(view.key_shares[(2, 1)], cfg.t))
    assert keys.public_bytes(sk1) == view.mask_pks[(2, 1)] != view.mask_pks[(2, 0)]
