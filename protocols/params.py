"""The one configuration object of the protocol, validated up front.

Why: every later failure mode (overflow, impossible threshold, a graph that cannot be built) is
cheaper to report before any key is generated, with the field name and its allowed range.
Derived values -- the degree k and threshold t of the sharing graph, the scale, the encoding
parameters and the wire limits -- are computed once from the fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

from protocols.encoding import SUPPORTED_BITS, EncodingParams, max_safe_scale
from protocols.errors import ConfigError
from protocols.graph import (
    COMPLETE,
    GRAPH_KINDS,
    HARARY,
    corruption_count,
    evaluate_parameters,
    secagg_plus_parameters,
    threshold_for_degree,
)
from protocols.prg import DEFAULT_CHUNK_BYTES

SEMI_HONEST = "semi-honest"
ACTIVE = "active"
MODES = (SEMI_HONEST, ACTIVE)
#: Client ids are 32-bit on the wire; share indices are id + 1.
MAX_CLIENTS = 1 << 20
MAX_DIM_LIMIT = 1 << 31


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _check_rate(name: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class SecAggConfig:
    """Parameters of a secure-aggregation session.

    Fields (allowed range):

    * ``num_clients`` n in [2, 2^20]: clients in the session.
    * ``graph``: ``"complete"`` (Bonawitz et al.) or ``"harary"`` (SecAgg+).
    * ``degree`` k: even, in [2, n-1] (Harary only); ``None`` derives it from the rates.
    * ``threshold`` t in [1, k+1]: shares needed to reconstruct; ``None`` derives it. Explicit
      values outside the safe region are refused (docs/protocol.md section 7.1): in active mode
      the security bound must meet 2^-security_bits (complete graph: 2t > n + c), in semi-honest
      mode it must not be vacuous (complete graph: t > c), with c = ceil(gamma n) colluders.
    * ``dropout_rate`` delta and ``corruption_rate`` gamma in [0, 1), delta + gamma < 1: the
      fraction of clients expected to drop, resp. to collude with the server (rounded up to whole
      clients); used to derive (k, t) and to check explicit ones. ``corruption_rate=0`` is the
      explicit opt-in for "no client colludes".
    * ``security_bits`` sigma in [8, 128] and ``correctness_bits`` eta in [1, 128]: failure targets
      2^-sigma and 2^-eta of the derived (k, t).
    * ``mode``: ``"semi-honest"`` (default) or ``"active"`` (signed keys + consistency check).
    * ``bits`` b in {32, 64}; ``clip`` c > 0; ``scale`` s > 0 or ``None`` for the largest power of
      two that cannot overflow; ``max_weight`` W > 0 (see :mod:`protocols.encoding`).
    * ``dim``: fixed vector length, or ``None`` (set per aggregation by the first input).
    * ``max_dim`` in [1, 2^31): largest vector length accepted on the wire.
    * ``chunk_bytes``: mask expansion chunk (multiple of 64 in [4096, 64 MiB]).
    """

    num_clients: int
    graph: str = COMPLETE
    degree: int | None = None
    threshold: int | None = None
    dropout_rate: float = 0.1
    corruption_rate: float = 0.1
    security_bits: int = 40
    correctness_bits: int = 30
    mode: str = SEMI_HONEST
    bits: int = 32
    clip: float = 1.0
    scale: float | None = None
    max_weight: float = 1.0
    dim: int | None = None
    max_dim: int = 1 << 27
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    _derived: tuple[int, int] = field(init=False, repr=False, compare=False, default=(0, 0))

    def __post_init__(self) -> None:
        n = _check_int("num_clients", self.num_clients, 2, MAX_CLIENTS)
        if self.graph not in GRAPH_KINDS:
            raise ConfigError(f"graph must be one of {GRAPH_KINDS}, got {self.graph!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.bits not in SUPPORTED_BITS:
            raise ConfigError(f"bits must be one of {SUPPORTED_BITS}, got {self.bits!r}")
        delta = _check_rate("dropout_rate", self.dropout_rate)
        gamma = _check_rate("corruption_rate", self.corruption_rate)
        if delta + gamma >= 1:
            raise ConfigError(f"dropout_rate + corruption_rate must be < 1, got {delta} + {gamma}")
        _check_int("security_bits", self.security_bits, 8, 128)
        _check_int("correctness_bits", self.correctness_bits, 1, 128)
        _check_int("max_dim", self.max_dim, 1, MAX_DIM_LIMIT - 1)
        if self.dim is not None:
            _check_int("dim", self.dim, 1, self.max_dim)
        if (
            not isinstance(self.chunk_bytes, int)
            or not 4096 <= self.chunk_bytes <= 64 << 20
            or self.chunk_bytes % 64
        ):
            raise ConfigError(
                "chunk_bytes must be a multiple of 64 in [4096, 67108864], "
                f"got {self.chunk_bytes!r}"
            )
        for name in ("clip", "max_weight"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"{name} must be a finite number > 0, got {v!r}")
        if self.scale is not None and (
            not isinstance(self.scale, (int, float))
            or not math.isfinite(self.scale)
            or self.scale <= 0
        ):
            raise ConfigError(f"scale must be a finite number > 0 or None, got {self.scale!r}")
        object.__setattr__(self, "_derived", self._derive(n))
        self.encoding  # noqa: B018 - validates the overflow rule now

    def _derive(self, n: int) -> tuple[int, int]:
        active = self.mode == ACTIVE
        targets = {
            "security_bits": self.security_bits,
            "correctness_bits": self.correctness_bits,
            "active": active,
        }
        if self.graph == COMPLETE:
            if self.degree is not None and self.degree != n - 1:
                raise ConfigError(
                    f"degree must be None or num_clients - 1 = {n - 1} for the complete graph, "
                    f"got {self.degree!r}"
                )
            k = n - 1
        elif self.degree is None:
            k = secagg_plus_parameters(
                n, self.dropout_rate, self.corruption_rate, graph=HARARY, **targets
            ).degree
        else:
            k = _check_int("degree", self.degree, 2, n - 1)
            if k % 2 and k != n - 1:
                raise ConfigError(
                    f"degree must be even (Harary graph) or num_clients - 1 = {n - 1}, got {k}"
                )
        if self.threshold is not None:
            t = _check_int("threshold", self.threshold, 1, k + 1)
            self._check_secure(n, k, t)
        elif self.graph == COMPLETE or self.degree is None:
            t = secagg_plus_parameters(
                n,
                self.dropout_rate,
                self.corruption_rate,
                graph=self.graph if self.degree is None else COMPLETE,
                **targets,
            ).threshold
        else:  # explicit Harary degree, derived threshold
            found = threshold_for_degree(n, k, self.dropout_rate, self.corruption_rate, **targets)
            if found is None:
                raise ConfigError(
                    f"degree={k}: no threshold keeps the security bound below "
                    f"{'2^-' + str(self.security_bits) if active else '1'} for "
                    f"num_clients={n}, dropout_rate={self.dropout_rate}, corruption_rate="
                    f"{self.corruption_rate} in {self.mode} mode; raise degree, leave it None, or "
                    "lower corruption_rate / security_bits"
                )
            t = found
        return k, t

    def _check_secure(self, n: int, k: int, t: int) -> None:
        """Refuse an explicit threshold outside the safe region (docs/protocol.md, section 7.1).

        Active mode: the security bound must meet 2^-security_bits. For the complete graph that is
        exactly 2t > n + c with c = ceil(corruption_rate n): otherwise a server showing two groups
        of honest clients different survivor sets, each backed by t signatures, collects both share
        kinds of one client. Semi-honest mode: refused when the bound is vacuous (1.0): the
        configured colluders can then certainly reach t shares (e.g. t <= c on the complete graph).
        """
        sec, _ = evaluate_parameters(
            n, k, t, self.dropout_rate, self.corruption_rate, self.mode == ACTIVE
        )
        c = corruption_count(n, self.corruption_rate)
        if self.mode == ACTIVE and sec > 2.0**-self.security_bits:
            need = (
                f"2 * threshold > num_clients + c = {n} + {c}, i.e. threshold >= {(n + c) // 2 + 1}"
                if k >= n - 1
                else f"a security failure bound <= 2^-{self.security_bits}"
            )
            raise ConfigError(
                f"threshold={t} is unsafe in active mode for num_clients={n}, degree={k}, "
                f"c={c} colluders (corruption_rate={self.corruption_rate}): bound on "
                f"P[security fails] = {sec:.3g}; an equivocating server could recover an input. "
                f"Needs {need}; leave threshold None to derive a safe one"
            )
        if sec >= 1.0:
            raise ConfigError(
                f"threshold={t} is unsafe for num_clients={n}, degree={k}: c={c} colluders "
                f"(ceil(corruption_rate * n), corruption_rate={self.corruption_rate}) certainly "
                f"reach {t} shares of some client; raise threshold above {min(c, k)}, leave it "
                "None, or set corruption_rate=0 if no client can collude with the server"
            )

    @property
    def k(self) -> int:
        """Resolved degree (n - 1 for the complete graph)."""
        return self._derived[0]

    @property
    def t(self) -> int:
        """Resolved threshold."""
        return self._derived[1]

    @property
    def active(self) -> bool:
        """True in the active-adversary mode."""
        return self.mode == ACTIVE

    @cached_property
    def encoding(self) -> EncodingParams:
        """Encoding parameters (n, b, c, s, W) after resolving the default scale."""
        scale = self.scale
        if scale is None:
            scale = max_safe_scale(self.num_clients, self.bits, self.clip, self.max_weight)
        return EncodingParams(self.num_clients, self.bits, self.clip, float(scale), self.max_weight)

    def failure_bounds(self) -> tuple[float, float]:
        """(security, correctness) failure-probability bounds of (k, t) at the configured rates.

        Validation guarantees security < 1 (active mode: <= 2^-security_bits), so a configuration
        whose security bound is vacuous never exists.
        """
        return evaluate_parameters(
            self.num_clients, self.k, self.t, self.dropout_rate, self.corruption_rate, self.active
        )
