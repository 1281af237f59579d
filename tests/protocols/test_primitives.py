"""Primitive wrappers: published test vectors, domain separation, PRG and AEAD properties."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from protocols import keys, prg
from protocols.errors import AuthenticationError, ConfigError, InconsistentMessage

# ----------------------------------------------------------------------------- test vectors


def test_hkdf_rfc5869_case1() -> None:
    okm = keys.hkdf_sha256(
        bytes.fromhex("0b" * 22),
        salt=bytes.fromhex("000102030405060708090a0b0c"),
        info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_hkdf_rfc5869_case3_no_salt_no_info() -> None:
    okm = keys.hkdf_sha256(bytes.fromhex("0b" * 22), salt=None, info=b"", length=42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


def test_aes128_ctr_nist_sp800_38a_f51() -> None:
    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    iv = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    pt = bytes.fromhex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
    ct = bytes.fromhex("874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff")
    stream = prg.aes_ctr_keystream(key, len(pt), iv)
    assert bytes(a ^ b for a, b in zip(stream, pt, strict=True)) == ct


def test_x25519_rfc7748_vector() -> None:
    alice = X25519PrivateKey.from_private_bytes(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob_pub = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    assert keys.public_bytes(alice).hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert keys.x25519_shared(alice, bob_pub).hex() == (
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    )


def test_x25519_rejects_low_order_point() -> None:
    sk, _ = keys.generate_x25519()
    with pytest.raises(InconsistentMessage):
        keys.x25519_shared(sk, bytes(32))
    with pytest.raises(InconsistentMessage):
        keys.x25519_shared(sk, bytes(31))


def test_ed25519_rfc8032_test1_through_verify() -> None:
    sk = Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    )
    vk = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert vk.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    sig = keys.sign(sk, b"")
    assert sig.hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc6"
        "1e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    keys.verify(vk, sig, b"", what="rfc8032")
    with pytest.raises(AuthenticationError, match="rfc8032"):
        keys.verify(vk, sig, b"x", what="rfc8032")


def test_aes_gcm_nist_test_case_2_via_cryptography() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    out = AESGCM(bytes(16)).encrypt(bytes(12), bytes(16), None)
    assert out.hex() == "0388dace60b6a392f328c2b971b2fe78" + "ab6e47d42cec13bdf53a67b21257bddf"


# ----------------------------------------------------------------------------- KDF


def test_kdf_info_is_injective_over_fields() -> None:
    s1, s2 = bytes(16), bytes(15) + b"\x01"
    infos = {
        keys.kdf_info(p, s, step, a, b, extra)
        for p in keys.Purpose
        for s in (s1, s2)
        for step in (0, 1, 2**40)
        for a in (0, 1, 7)
        for b in (0, 1, 7)
        for extra in (b"", b"\x00", b"\x00\x00")
    }
    assert len(infos) == len(keys.Purpose) * 2 * 3 * 3 * 3 * 3


def test_kdf_rejects_bad_context() -> None:
    with pytest.raises(ConfigError, match="session"):
        keys.kdf_info(keys.Purpose.SELF_MASK, b"short", 0, 0, 0)
    with pytest.raises(ConfigError, match="sender"):
        keys.kdf_info(keys.Purpose.SELF_MASK, bytes(16), 0, -1, 0)
    with pytest.raises(ConfigError, match="step"):
        keys.kdf_info(keys.Purpose.SELF_MASK, bytes(16), -1, 0, 0)


def test_pair_mask_key_is_symmetric_and_step_bound() -> None:
    shared = bytes(range(32))
    sess = bytes(16)
    k01 = keys.pair_mask_key(shared, sess, 3, 0, 1, 100, 32)
    assert k01 == keys.pair_mask_key(shared, sess, 3, 1, 0, 100, 32)
    assert k01 != keys.pair_mask_key(shared, sess, 4, 0, 1, 100, 32)
    assert k01 != keys.pair_mask_key(shared, sess, 3, 0, 1, 101, 32)
    assert k01 != keys.pair_mask_key(shared, sess, 3, 0, 1, 100, 64)
    assert k01 != keys.self_mask_key(shared, sess, 3, 0, 100, 32)


# ----------------------------------------------------------------------------- PRG


def test_expand_is_chunk_size_independent_and_matches_keystream() -> None:
    key = bytes(range(16))
    ref = np.frombuffer(prg.aes_ctr_keystream(key, 4 * 50_000), dtype="<u4")
    for chunk in (4096, 65536, 256 * 1024):
        acc = np.zeros(50_000, dtype=np.uint32)
        prg.expand_into(acc, key, 1, chunk)
        assert np.array_equal(acc, ref)


def test_expand_add_then_subtract_cancels_mod_2b() -> None:
    rng = np.random.default_rng(1)
    for dtype in (np.uint32, np.uint64):
        base = rng.integers(0, np.iinfo(dtype).max, 10_001, dtype=dtype, endpoint=True)
        acc = base.copy()
        prg.expand_into(acc, b"k" * 16, 1)
        assert not np.array_equal(acc, base)
        prg.expand_into(acc, b"k" * 16, -1)
        assert np.array_equal(acc, base)


def test_expand_validates_arguments() -> None:
    with pytest.raises(ConfigError, match="uint32 or uint64"):
        prg.expand_into(np.zeros(4, dtype=np.int32), bytes(16))
    with pytest.raises(ConfigError, match="sign"):
        prg.expand_into(np.zeros(4, dtype=np.uint32), bytes(16), 2)
    with pytest.raises(ConfigError, match="mask key"):
        prg.expand_into(np.zeros(4, dtype=np.uint32), bytes(15))
    with pytest.raises(ConfigError, match="chunk_bytes"):
        prg.expand_into(np.zeros(4, dtype=np.uint32), bytes(16), 1, 100)


@given(
    key=st.binary(min_size=16, max_size=16),
    bits=st.sets(st.integers(0, 127), min_size=1, max_size=2),
)
def test_flipping_one_or_two_key_bits_changes_the_stream(key: bytes, bits: set[int]) -> None:
    flipped = bytearray(key)
    for b in bits:
        flipped[b // 8] ^= 1 << (b % 8)
    a, b2 = prg.expand(key, 64), prg.expand(bytes(flipped), 64)
    assert not np.array_equal(a, b2)
    # and the difference is not confined to a few words
    assert np.count_nonzero(a != b2) > 48


@given(
    ctx1=st.tuples(st.binary(min_size=16, max_size=16), st.integers(0, 2**32), st.integers(1, 300)),
    ctx2=st.tuples(st.binary(min_size=16, max_size=16), st.integers(0, 2**32), st.integers(1, 300)),
)
def test_different_session_step_or_length_give_different_streams(ctx1, ctx2) -> None:
    seed = b"s" * 32
    (s1, j1, n1), (s2, j2, n2) = ctx1, ctx2
    k1 = keys.self_mask_key(seed, s1, j1, 5, n1, 32)
    k2 = keys.self_mask_key(seed, s2, j2, 5, n2, 32)
    m = min(n1, n2)
    if ctx1 == ctx2:
        assert k1 == k2
    else:
        assert k1 != k2
        assert not np.array_equal(prg.expand(k1, n1)[:m], prg.expand(k2, n2)[:m]) or m < 2


def test_random_below_is_in_range_and_deterministic() -> None:
    bounds = [1, 2, 3, 10, 1000, 2**40]
    a = prg.random_below(b"x" * 16, bounds)
    assert a == prg.random_below(b"x" * 16, bounds)
    assert all(0 <= r < b for r, b in zip(a, bounds, strict=True))
    assert a != prg.random_below(b"y" * 16, bounds)


def test_random_uint32_is_fresh_each_call() -> None:
    a, b = prg.random_uint32(1000), prg.random_uint32(1000)
    assert a.dtype == np.uint32 and a.shape == (1000,)
    assert not np.array_equal(a, b)
    assert 0.45 < float(np.mean(a / 2**32)) < 0.55


# ----------------------------------------------------------------------------- AEAD


def _pair() -> tuple[bytes, bytes]:
    sa, pa = keys.generate_x25519()
    sb, pb = keys.generate_x25519()
    sess = bytes(16)
    ka = keys.channel_key(sa, pb, sess, 1, 2)
    kb = keys.channel_key(sb, pa, sess, 2, 1)
    assert ka == kb
    return ka, sess


@given(
    other=st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 3)).filter(
        lambda t: t != (1, 2, 0)
    )
)
def test_aead_ciphertext_fails_when_replayed_elsewhere(other: tuple[int, int, int]) -> None:
    key, sess = _pair()
    ct = keys.seal_shares(key, sess, 0, 1, 2, b"secret share bundle")
    assert keys.open_shares(key, sess, 0, 1, 2, ct) == b"secret share bundle"
    sender, recipient, step = other
    with pytest.raises(AuthenticationError, match="failed authentication"):
        keys.open_shares(key, sess, step, sender, recipient, ct)


def test_aead_fails_under_another_session_or_channel() -> None:
    key, sess = _pair()
    ct = keys.seal_shares(key, sess, 0, 1, 2, b"x")
    with pytest.raises(AuthenticationError):
        keys.open_shares(key, b"\x01" * 16, 0, 1, 2, ct)
    other_key, _ = _pair()
    with pytest.raises(AuthenticationError):
        keys.open_shares(other_key, sess, 0, 1, 2, ct)
    tampered = bytes([ct[0] ^ 1]) + ct[1:]
    with pytest.raises(AuthenticationError):
        keys.open_shares(key, sess, 0, 1, 2, tampered)
