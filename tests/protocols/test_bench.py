"""Timing logic of the secure-aggregation benchmark (small shapes)."""

from __future__ import annotations

import math

import pytest

from protocols.bench import measure_throughput, model_server_seconds, run_secagg_bench


def test_bench_result_is_exact_and_consistent() -> None:
    res = run_secagg_bench(12, 5000, 0.25, steps=3, seed=4)
    assert res.exact
    assert (res.survivors, res.dropped) == (9, 3)
    assert res.max_abs_error <= res.error_bound
    assert res.bytes_up_per_client > 4 * 5000 and 1.0 < res.expansion < 1.2
    assert res.client_seconds > 0 and res.server_seconds > 0
    assert res.steady_client_seconds is not None and res.steady_bytes_down_per_client is not None
    assert res.steady_bytes_down_per_client < res.bytes_down_per_client
    d = res.to_dict()
    for key in (
        "clients",
        "dim",
        "dropout",
        "client_seconds",
        "server_seconds",
        "bytes_up_per_client",
        "bytes_down_per_client",
        "aes_ctr_gbps",
        "mask_gbps",
        "max_abs_error",
        "exact",
    ):
        assert key in d


def test_bench_harary_and_64_bits() -> None:
    res = run_secagg_bench(30, 2000, 0.2, graph="harary", degree=8, threshold=4, bits=64)
    assert res.exact and res.degree == 8 and res.threshold == 4 and res.bits == 64
    assert 2.0 < res.expansion < 2.5  # 64-bit ring: twice float32


def test_throughput_probe_reports_ratio() -> None:
    tp = measure_throughput(dim=100_000, total_bytes=4 << 20, repeats=2)
    assert tp.aes_ctr_gbps > 0 and tp.mask_gbps > 0
    assert math.isclose(tp.ratio, tp.mask_gbps / tp.aes_ctr_gbps)


def test_cost_model_matches_anchors_figures() -> None:
    # 0.8 ns per 4-byte element of PRG: 10^7 elements -> 8 ms, plus additions
    assert model_server_seconds(1, 0, 0, 10**7, 32) == pytest.approx(0.008)
    assert model_server_seconds(0, 0, 1, 10**7, 32) == pytest.approx(0.004)


@pytest.mark.slow
def test_hundred_clients_large_vectors_exact() -> None:
    res = run_secagg_bench(100, 200_000, 0.3, seed=1)
    assert res.exact and res.survivors == 70
    assert res.max_abs_error <= res.error_bound


@pytest.mark.slow
def test_thousand_clients_harary_exact() -> None:
    res = run_secagg_bench(1000, 2000, 0.3, graph="harary", seed=2)
    assert res.exact and res.graph == "harary" and res.degree < 999
    assert res.max_abs_error <= res.error_bound
