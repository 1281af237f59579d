"""Mask pseudo-random generator: AES-128-CTR keystream added straight into an accumulator.

Why this shape: a secure-aggregation server spends almost all of its time expanding masks. One big
keystream buffer costs allocation and page faults (~1 GB/s); expanding into a cache-sized chunk that
is reused and added in place into the uint32/uint64 accumulator runs at a large fraction of raw
AES-CTR speed. Every stream has its own 128-bit key (derived with HKDF from the seed, the session,
the aggregation index, the parties and the length, see :mod:`protocols.keys`), so a fixed all-zero
initial counter block is safe: no (key, counter) pair is ever reused.

The keystream is interpreted as little-endian unsigned integers, so it is platform independent.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocols.errors import ConfigError

#: Default expansion chunk: fits in L2 on common x86 cores and measured best in ANCHORS.md.
DEFAULT_CHUNK_BYTES = 256 * 1024
_BLOCK = 16
_ZERO_IV = bytes(16)
_KEY_BYTES = 16
_ALLOWED_DTYPES = (np.dtype(np.uint32), np.dtype(np.uint64))


def _encryptor(key: bytes, iv: bytes = _ZERO_IV):  # type: ignore[no-untyped-def]
    if len(key) not in (16, 32):
        raise ConfigError(f"AES key must be 16 or 32 bytes, got {len(key)}")
    if len(iv) != _BLOCK:
        raise ConfigError(f"AES-CTR initial counter block must be 16 bytes, got {len(iv)}")
    return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()


def aes_ctr_keystream(key: bytes, nbytes: int, iv: bytes = _ZERO_IV) -> bytes:
    """Return ``nbytes`` of raw AES-CTR keystream (for test vectors and small draws)."""
    if nbytes < 0:
        raise ConfigError(f"nbytes must be >= 0, got {nbytes}")
    return _encryptor(key, iv).update(bytes(nbytes))


def _check_chunk(chunk_bytes: int) -> None:
    if chunk_bytes < 4096 or chunk_bytes > (64 << 20) or chunk_bytes % 64:
        raise ConfigError(
            f"chunk_bytes must be a multiple of 64 in [4096, {64 << 20}], got {chunk_bytes}"
        )


def expand_into(
    acc: np.ndarray, key: bytes, sign: int = 1, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> None:
    """Add (``sign=+1``) or subtract (``sign=-1``) the mask stream of ``key`` into ``acc``.

    ``acc`` is a contiguous uint32 or uint64 vector; arithmetic wraps modulo 2^32 / 2^64, which is
    exactly the group the protocol works in. The stream for a given key is the same whatever the
    chunk size, so client and server may use different chunk sizes.
    """
    if acc.dtype not in _ALLOWED_DTYPES or acc.ndim != 1 or not acc.flags.c_contiguous:
        raise ConfigError("acc must be a 1-D C-contiguous uint32 or uint64 array")
    if not acc.flags.writeable:
        raise ConfigError("acc must be writeable")
    if sign not in (1, -1):
        raise ConfigError(f"sign must be +1 or -1, got {sign}")
    if len(key) != _KEY_BYTES:
        raise ConfigError(f"mask key must be {_KEY_BYTES} bytes, got {len(key)}")
    _check_chunk(chunk_bytes)
    itemsize = acc.dtype.itemsize
    total = acc.shape[0]
    chunk = min(chunk_bytes, max(total * itemsize, _BLOCK))  # small vectors: small buffers
    per = chunk // itemsize
    enc = _encryptor(key)
    zeros = _zeros(chunk)
    buf = bytearray(chunk + _BLOCK)  # update_into needs len(data) + block - 1 bytes
    view = np.frombuffer(buf, dtype=acc.dtype.newbyteorder("<"), count=per)
    op = np.add if sign == 1 else np.subtract
    for start in range(0, total, per):
        m = min(per, total - start)
        if m == per:
            enc.update_into(zeros, buf)
            part = view
        else:
            enc.update_into(zeros[: m * itemsize], buf)
            part = view[:m]
        target = acc[start : start + m]
        op(target, part, out=target)


_ZERO_POOL: list[bytes] = [bytes(DEFAULT_CHUNK_BYTES)]


def _zeros(n: int) -> memoryview:
    """A read-only view of ``n`` zero bytes: the AES-CTR input, shared and never written, so
    expanding a mask allocates no zero buffer (grown on demand for larger chunk sizes)."""
    if n > len(_ZERO_POOL[0]):
        _ZERO_POOL[0] = bytes(n)
    return memoryview(_ZERO_POOL[0])[:n]


def expand(key: bytes, length: int, dtype: np.dtype | type = np.uint32) -> np.ndarray:
    """Return the mask stream of ``key`` as a new vector (convenience for tests and small uses)."""
    if length < 0:
        raise ConfigError(f"length must be >= 0, got {length}")
    out = np.zeros(length, dtype=np.dtype(dtype))
    expand_into(out, key)
    return out


def random_uint32(count: int) -> np.ndarray:
    """``count`` uniform uint32 values from AES-CTR keyed with a fresh ``os.urandom`` key.

    Used for stochastic rounding: cryptographically strong and fast, never numpy's RNG.
    """
    if count < 0:
        raise ConfigError(f"count must be >= 0, got {count}")
    stream = aes_ctr_keystream(os.urandom(_KEY_BYTES), 4 * count)
    out = np.frombuffer(stream, dtype="<u4")
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        out = out.astype(np.uint32)
    return out


def random_below(key: bytes, bounds: list[int]) -> list[int]:
    """Unbiased integers ``r_i`` in ``[0, bounds[i])`` drawn from the AES-CTR stream of ``key``.

    Rejection sampling on 64-bit words; used for the CSPRNG graph relabelling.
    """
    enc = _encryptor(key)
    out: list[int] = []
    pool = b""
    pos = 0
    for bound in bounds:
        if bound <= 0 or bound > 1 << 63:
            raise ConfigError(f"bound must be in [1, 2^63], got {bound}")
        limit = (1 << 64) - ((1 << 64) % bound)
        while True:
            if pos + 8 > len(pool):
                pool = enc.update(bytes(8 * 1024))
                pos = 0
            word = int.from_bytes(pool[pos : pos + 8], "little")
            pos += 8
            if word < limit:
                out.append(word % bound)
                break
    return out


def throughput_probe(nbytes: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
    """Generate ``nbytes`` of keystream into a reused buffer without adding (raw-speed probe)."""
    _check_chunk(chunk_bytes)
    enc = _encryptor(os.urandom(_KEY_BYTES))
    zeros = _zeros(chunk_bytes)
    buf = bytearray(chunk_bytes + _BLOCK)
    done = 0
    while done < nbytes:
        m = min(chunk_bytes, nbytes - done)
        enc.update_into(zeros if m == chunk_bytes else zeros[:m], buf)
        done += m
