"""Timing logic of ``securedream bench secagg`` (argument parsing and printing live in
``securedream/bench/secagg.py``).

Why here: what is timed is protocol code, and the benchmark must not need the engine. Nothing is
shortcut: every client runs the real state machine on real wire bytes. Inputs are encoded by the
benchmark (timed as client work) and submitted as integers, so the decoded sum can be checked
*exactly* against the sum of the survivors' encoded vectors, and the float error against the
documented bound n * Delta.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from protocols.encoding import decode_sum, encode, uint_dtype
from protocols.params import SecAggConfig
from protocols.prg import expand_into, throughput_probe
from protocols.session import InProcessSession

#: ANCHORS.md cost model: PRG ~0.8 ns per 4-byte element, uint32 add ~0.4 ns per element.
MODEL_PRG_NS_PER_BYTE = 0.2
MODEL_ADD_NS_PER_BYTE = 0.1


@dataclass(frozen=True)
class Throughput:
    """Raw AES-CTR keystream speed vs the achieved mask expansion into an accumulator."""

    aes_ctr_gbps: float
    mask_gbps: float

    @property
    def ratio(self) -> float:
        """mask / raw (target >= 0.5)."""
        return self.mask_gbps / self.aes_ctr_gbps


def measure_throughput(
    dim: int = 1 << 24, bits: int = 32, total_bytes: int = 64 << 20, repeats: int = 7
) -> Throughput:
    """Best-of-``repeats`` GB/s of (a) raw AES-CTR keystream (one long stream into a reused chunk
    buffer) and (b) mask expansion as the protocol does it: fresh-key streams of ``dim`` elements
    added in place into a ``dim``-element accumulator, ``total_bytes`` in all. Measured
    alternately, in CPU time, so that load from other processes affects both alike."""
    itemsize = bits // 8
    dim = max(1, min(dim, total_bytes // itemsize))
    streams = max(1, min(total_bytes // (dim * itemsize), 4096))  # tiny vectors: fewer bytes
    nbytes = streams * dim * itemsize
    acc = np.zeros(dim, dtype=uint_dtype(bits))
    expand_into(acc, os.urandom(16))  # touch the pages once
    keys = [os.urandom(16) for _ in range(streams)]
    raw, masked = [], []
    for _ in range(repeats):
        t0 = time.process_time()
        throughput_probe(nbytes)
        raw.append(time.process_time() - t0)
        t0 = time.process_time()
        for key in keys:
            expand_into(acc, key)
        masked.append(time.process_time() - t0)
    return Throughput(nbytes / min(raw) / 1e9, nbytes / min(masked) / 1e9)


@dataclass(frozen=True)
class BenchResult:
    """Figures of one benchmarked aggregation (the first of the session, set-up included).

    ``client_seconds`` is the *mean per surviving client* of its compute (encoding + state
    machine); ``client_seconds_max`` the slowest one; ``server_seconds`` the server's compute
    (validation, accumulation, unmasking). Compute is CPU time (``time.process_time``), so other
    processes on the machine do not inflate it; ``wall_seconds`` is the aggregation's wall time.
    Byte counts are means over surviving clients.
    ``steady_*`` are the same figures for later aggregations of the session (pipelined keys),
    when ``steps > 1``.
    """

    clients: int
    dim: int
    dropout: float
    graph: str
    degree: int
    threshold: int
    bits: int
    survivors: int
    dropped: int
    client_seconds: float
    client_seconds_max: float
    server_seconds: float
    wall_seconds: float
    bytes_up_per_client: float
    bytes_down_per_client: float
    expansion: float
    aes_ctr_gbps: float
    mask_gbps: float
    mask_ratio: float
    model_server_seconds: float
    server_vs_model: float
    max_abs_error: float
    error_bound: float
    exact: bool
    steps: int
    steady_client_seconds: float | None
    steady_server_seconds: float | None
    steady_bytes_up_per_client: float | None
    steady_bytes_down_per_client: float | None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict."""
        return asdict(self)


def model_server_seconds(
    survivors: int, dropped_degrees: int, clients: int, dim: int, bits: int
) -> float:
    """ANCHORS cost model of the server's unmasking: (survivors + sum of dropped degrees) mask
    expansions plus n vector additions."""
    nbytes = dim * bits // 8
    prg = (survivors + dropped_degrees) * nbytes * MODEL_PRG_NS_PER_BYTE
    add = clients * nbytes * MODEL_ADD_NS_PER_BYTE
    return (prg + add) * 1e-9


def run_secagg_bench(
    clients: int,
    dim: int,
    dropout: float,
    *,
    graph: str = "complete",
    threshold: int | None = None,
    degree: int | None = None,
    bits: int = 32,
    seed: int = 0,
    steps: int = 1,
    corruption_rate: float = 0.1,
    clip: float = 1.0,
    throughput: Throughput | None = None,
) -> BenchResult:
    """Run a session of ``steps`` aggregations; ``round(dropout * clients)`` clients (chosen with
    ``seed``) drop after sharing keys in the first one -- the most expensive place to drop, since
    the server must then regenerate their pairwise masks with every surviving neighbour."""
    cfg = SecAggConfig(
        clients,
        graph=graph,
        degree=degree,
        threshold=threshold,
        dropout_rate=dropout,
        corruption_rate=corruption_rate,
        bits=bits,
        clip=clip,
        max_dim=max(dim, 1),
    )
    params = cfg.encoding
    rng = np.random.default_rng(seed)
    n_drop = round(dropout * clients)
    dropping = {int(i) for i in rng.choice(clients, n_drop, replace=False)} if n_drop else set()
    int_dtype = np.int32 if bits == 32 else np.int64

    encoded: dict[int, np.ndarray] = {}
    encode_seconds: dict[int, float] = {}
    float_sum = np.zeros(dim, dtype=np.float64)
    int_sum = np.zeros(dim, dtype=np.int64)
    for i in range(clients):
        if i in dropping:
            continue
        x = rng.uniform(-clip, clip, dim).astype(np.float32)
        t0 = time.process_time()
        enc = encode(x, params).view(int_dtype)
        encode_seconds[i] = time.process_time() - t0
        encoded[i] = enc
        float_sum += x
        int_sum += enc
    t_start = time.perf_counter()
    session = InProcessSession(cfg)
    res = session.aggregate(encoded, drop=dict.fromkeys(dropping, "masked_input"))
    wall = time.perf_counter() - t_start
    survivors = sorted(res.survivors)
    exact = bool(np.array_equal(res.integer_sum, int_sum)) and set(survivors) == set(encoded)
    decoded = decode_sum(res.integer_sum.astype(int_dtype).view(uint_dtype(bits)), params)
    max_err = float(np.max(np.abs(decoded - float_sum))) if dim else 0.0
    per_client = [res.client_seconds[i] + encode_seconds[i] for i in survivors]
    up = float(np.mean([res.bytes_up[i] for i in survivors]))
    down = float(np.mean([res.bytes_down[i] for i in survivors]))
    graph_obj = session.server.graph
    assert graph_obj is not None
    dropped_degrees = sum(len(graph_obj.neighbours(v) & set(survivors)) for v in dropping)
    model = model_server_seconds(len(survivors), dropped_degrees, clients, dim, bits)

    steady = None
    if steps > 1:
        client_t, server_t, ups, downs = [], [], [], []
        for _ in range(steps - 1):
            r = session.aggregate({i: encoded[i] for i in survivors})
            client_t.append(np.mean([r.client_seconds[i] for i in survivors]))
            server_t.append(r.server_seconds)
            ups.append(np.mean([r.bytes_up[i] for i in survivors]))
            downs.append(np.mean([r.bytes_down[i] for i in survivors]))
            exact = exact and bool(np.array_equal(r.integer_sum, int_sum))
        steady = tuple(float(np.mean(v)) for v in (client_t, server_t, ups, downs))
    session.close()
    tp = throughput if throughput is not None else measure_throughput(dim, bits)
    return BenchResult(
        clients=clients,
        dim=dim,
        dropout=dropout,
        graph=graph,
        degree=cfg.k,
        threshold=cfg.t,
        bits=bits,
        survivors=len(survivors),
        dropped=len(dropping),
        client_seconds=float(np.mean(per_client)),
        client_seconds_max=float(np.max(per_client)),
        server_seconds=res.server_seconds,
        wall_seconds=wall,
        bytes_up_per_client=up,
        bytes_down_per_client=down,
        expansion=up / (4 * dim),
        aes_ctr_gbps=tp.aes_ctr_gbps,
        mask_gbps=tp.mask_gbps,
        mask_ratio=tp.ratio,
        model_server_seconds=model,
        server_vs_model=res.server_seconds / model if model else float("nan"),
        max_abs_error=max_err,
        error_bound=params.error_bound(len(survivors)),
        exact=exact,
        steps=steps,
        steady_client_seconds=steady[0] if steady else None,
        steady_server_seconds=steady[1] if steady else None,
        steady_bytes_up_per_client=steady[2] if steady else None,
        steady_bytes_down_per_client=steady[3] if steady else None,
    )
