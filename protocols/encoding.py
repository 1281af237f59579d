"""Float vectors <-> integers modulo 2^b, with an overflow rule and an error bound.

Why: masks live in Z_{2^b} (uint32/uint64 arithmetic wraps for free), so every contribution must be
an integer. A client clips its vector to [-c, c], multiplies by its weight w in [0, W] and by the
scale s, and rounds *stochastically* (floor or ceil with probability given by the fraction), so the
rounding is unbiased; the randomness is an AES-CTR stream keyed with ``os.urandom``.

Decoding: the server's sum S (mod 2^b) is read as a signed integer and divided by s.

* Overflow rule: each contribution is an integer of magnitude at most B = ceil(c * W * s), so a
  sum of n contributions is exact iff n * B <= 2^(b-1) - 1. Configurations violating it are
  refused with the numbers in the message.
* Error bound: each client's rounding error is below one unit, so the decoded sum differs from
  sum_u w_u * clip(x_u) by less than n * Delta with Delta = 1/s (plus float64 round-off of the final
  division). We require c * W * s <= 2^40 so that float64 represents x * w * s with error well below
  one unit (2^-12 units), which keeps the per-client error strictly below one unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from protocols.errors import ConfigError, EncodingError
from protocols.prg import random_uint32

SUPPORTED_BITS = (32, 64)
#: Largest c * W * s accepted (float64 headroom for exact rounding).
MAX_SCALED_MAGNITUDE = float(1 << 40)
#: Accepted range of clip * max_weight: keeps the scale (and Delta = 1/scale) a normal float.
MIN_RANGE = 2.0**-64
MAX_RANGE = 2.0**64


def uint_dtype(bits: int) -> np.dtype:
    """The unsigned dtype of the ring Z_{2^bits}."""
    if bits == 32:
        return np.dtype(np.uint32)
    if bits == 64:
        return np.dtype(np.uint64)
    raise ConfigError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")


def _int_dtype(bits: int) -> np.dtype:
    return np.dtype(np.int32) if bits == 32 else np.dtype(np.int64)


@dataclass(frozen=True)
class EncodingParams:
    """Validated encoding parameters.

    Fields: ``num_clients`` (n, the most contributions a sum can hold), ``bits`` (b), ``clip`` (c),
    ``scale`` (s; Delta = 1/s) and ``max_weight`` (W).
    """

    num_clients: int
    bits: int = 32
    clip: float = 1.0
    scale: float = float(1 << 16)
    max_weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.num_clients, int) or self.num_clients < 1:
            raise ConfigError(f"num_clients must be an integer >= 1, got {self.num_clients!r}")
        uint_dtype(self.bits)
        _check_range(self.clip, self.max_weight)
        v = self.scale
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"scale must be a finite number > 0, got {v!r}")
        if not 2.0**-1000 <= v <= 2.0**1000:
            raise ConfigError(f"scale must be in [2^-1000, 2^1000], got {v!r}")
        magnitude = self.clip * self.max_weight * self.scale
        if magnitude > MAX_SCALED_MAGNITUDE:
            raise ConfigError(
                f"clip * max_weight * scale = {self.clip} * {self.max_weight} * {self.scale} = "
                f"{magnitude:.6g} exceeds 2^40 (float64 rounding headroom); lower scale"
            )
        limit = (1 << (self.bits - 1)) - 1
        total = self.num_clients * self.per_client_bound
        if total > limit:
            safe = max_safe_scale(self.num_clients, self.bits, self.clip, self.max_weight)
            raise ConfigError(
                f"sum could overflow: num_clients * ceil(clip * max_weight * scale) = "
                f"{self.num_clients} * {self.per_client_bound} = {total} > 2^{self.bits - 1} - 1 = "
                f"{limit}; lower scale (at most {safe:.6g}), "
                "clip or max_weight, or use bits=64"
            )

    @property
    def delta(self) -> float:
        """Quantisation step Delta = 1/scale."""
        return 1.0 / self.scale

    @property
    def per_client_bound(self) -> int:
        """B = ceil(c * W * s): the largest magnitude of one encoded contribution."""
        return math.ceil(self.clip * self.max_weight * self.scale)

    @property
    def integer_bound(self) -> int:
        """Largest magnitude accepted for one pre-encoded integer contribution."""
        return ((1 << (self.bits - 1)) - 1) // self.num_clients

    def error_bound(self, contributors: int | None = None) -> float:
        """Documented bound on |decoded - exact| per coordinate: contributors * Delta."""
        n = self.num_clients if contributors is None else contributors
        return n * self.delta


def _check_range(clip: float, max_weight: float) -> float:
    """clip * max_weight as a normal, finite float, or a ConfigError naming both fields."""
    for name, v in (("clip", clip), ("max_weight", max_weight)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"{name} must be a finite number > 0, got {v!r}")
    product = float(clip) * float(max_weight)
    if not MIN_RANGE <= product <= MAX_RANGE:
        raise ConfigError(
            f"clip * max_weight = {clip!r} * {max_weight!r} = {product:.6g} must be in "
            f"[2^-64, 2^64] (the encoding scales it into integers); rescale the inputs"
        )
    return product


def max_safe_scale(num_clients: int, bits: int, clip: float, max_weight: float = 1.0) -> float:
    """Largest power-of-two scale for which the overflow rule holds.

    Computed in the log domain so that no intermediate overflows or underflows; extreme
    ``clip``/``max_weight`` give a :class:`ConfigError`, never an arithmetic exception.
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise ConfigError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    uint_dtype(bits)
    product = _check_range(clip, max_weight)
    limit = (1 << (bits - 1)) - 1
    per = limit // num_clients  # need ceil(c W s) <= per
    if per < 1:
        raise ConfigError(f"num_clients={num_clients} is too large for bits={bits}")
    log_s = min(math.log2(per), math.log2(MAX_SCALED_MAGNITUDE)) - math.log2(product)

    def fits(e: int) -> bool:
        scaled = product * math.ldexp(1.0, e)
        return scaled <= MAX_SCALED_MAGNITUDE and math.ceil(scaled) <= per

    exp = math.floor(log_s)  # then correct the last step of log2 rounding either way
    while fits(exp + 1):
        exp += 1
    while not fits(exp):
        exp -= 1
    return math.ldexp(1.0, exp)


def _as_vector(x: object, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise EncodingError(f"{what} must be a 1-D vector, got shape {arr.shape}")
    return arr


def encode(x: object, params: EncodingParams, weight: float = 1.0) -> np.ndarray:
    """Encode a float vector (times ``weight``) into Z_{2^b}; NaN/inf are rejected."""
    arr = _as_vector(x, "input")
    if arr.dtype.kind not in "fiub":
        raise EncodingError(f"input must be numeric, got dtype {arr.dtype}")
    v = arr.astype(np.float64, copy=True)
    if not np.all(np.isfinite(v)):
        raise EncodingError("input contains NaN or infinite values")
    if not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise EncodingError(f"weight must be a finite number, got {weight!r}")
    if not 0 <= weight <= params.max_weight:
        raise EncodingError(f"weight must be in [0, max_weight={params.max_weight}], got {weight}")
    np.clip(v, -params.clip, params.clip, out=v)
    v *= weight * params.scale
    floor = np.floor(v)
    frac = v - floor
    u = random_uint32(v.shape[0]).astype(np.float64) * (1.0 / 4294967296.0)
    q = floor.astype(np.int64) + (u < frac)
    return q.astype(_int_dtype(params.bits)).view(uint_dtype(params.bits))


def encode_integers(x: object, params: EncodingParams) -> np.ndarray:
    """Encode a pre-quantised integer vector (e.g. discrete DP noise already added).

    Each |value| must be at most ``params.integer_bound`` so that n contributions cannot overflow.
    """
    arr = _as_vector(x, "input")
    if arr.dtype.kind not in "iu":
        raise EncodingError(f"integer input must have an integer dtype, got {arr.dtype}")
    bound = params.integer_bound
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < -bound or hi > bound:
            raise EncodingError(
                f"integer input range [{lo}, {hi}] exceeds +-{bound} = (2^{params.bits - 1} - 1) "
                f"// num_clients={params.num_clients}"
            )
    # one cast, always a copy (the caller's array is never masked in place); exact for values
    # within the bound
    return arr.astype(_int_dtype(params.bits)).view(uint_dtype(params.bits))


def decode_integer_sum(total: np.ndarray, bits: int) -> np.ndarray:
    """Read a sum in Z_{2^b} as signed integers (int64)."""
    dt = uint_dtype(bits)
    arr = np.ascontiguousarray(np.asarray(total, dtype=dt))
    return arr.view(_int_dtype(bits)).astype(np.int64)


def decode_sum(total: np.ndarray, params: EncodingParams) -> np.ndarray:
    """Decode the sum of encoded contributions to float64: signed integer sum / scale."""
    return decode_integer_sum(total, params.bits).astype(np.float64) / params.scale
