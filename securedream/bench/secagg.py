"""``securedream bench secagg``: time the secure-aggregation protocol, optionally next to Flower.

Usage (the CLI calls :func:`main` with the arguments after ``secagg``)::

    securedream bench secagg --clients 100 --dim 1000000 --dropout 0.3 [--graph complete|harary]
        [--threshold T] [--degree K] [--bits 32|64] [--seed S] [--steps S] [--compare-flower]
        [--flower-rounds R] [--run-dir DIR] [--json]

The timed code lives in :mod:`protocols.bench`; this module parses arguments, prints, and runs the
Flower comparison (optional extra ``bench``: ``pip install 'securedream[bench]'``):

* *primitives*: Flower's SecAgg+ building blocks (P-384 ECDH + HKDF key agreement, Fernet share
  encryption, PyCryptodome Shamir, the ``pseudo_rand_gen`` mask generator) doing the work of one
  representative client and of the server for the same n, d, k, t, dropouts. The client is timed in
  full; the server's many identical mask expansions and Shamir reconstructions are timed on a
  sample and multiplied out (the output says how many were sampled);
* *workflow*: Flower's full ``SecAggPlusWorkflow`` in its simulation engine (Ray) for a small
  shape (default n = 10, d = 10^5), stage times taken inside the ServerApp, median over rounds
  2..R (round 1 pays Ray start-up), in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from protocols.bench import BenchResult, measure_throughput, run_secagg_bench
from protocols.errors import ConfigError
from protocols.params import MAX_CLIENTS, MAX_DIM_LIMIT, SecAggConfig

FLOWER_WORKFLOW_SHAPE = (10, 100_000)


# --------------------------------------------------------------------------- arguments


def _int_in(name: str, lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be an integer in [{lo}, {hi}], got {text!r}"
            ) from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(
                f"{name} must be an integer in [{lo}, {hi}], got {value}"
            )
        return value

    return parse


def _rate(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a number in [0, 1), got {text!r}"
            ) from None
        if not 0 <= value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be a number in [0, 1), got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``securedream bench secagg``."""
    p = argparse.ArgumentParser(
        prog="securedream bench secagg",
        description="Benchmark secure aggregation (client/server compute, bytes, PRG throughput).",
    )
    p.add_argument(
        "--clients",
        type=_int_in("--clients", 2, MAX_CLIENTS),
        required=True,
        help=f"number of clients n, in [2, {MAX_CLIENTS}]",
    )
    p.add_argument(
        "--dim",
        type=_int_in("--dim", 1, MAX_DIM_LIMIT - 1),
        required=True,
        help="vector length d, in [1, 2^31 - 1]",
    )
    p.add_argument(
        "--dropout",
        type=_rate("--dropout"),
        required=True,
        help="fraction of clients dropping after sharing keys, in [0, 1)",
    )
    p.add_argument(
        "--graph",
        choices=("complete", "harary"),
        default="complete",
        help="sharing graph (default complete)",
    )
    p.add_argument(
        "--threshold",
        type=_int_in("--threshold", 1, MAX_CLIENTS),
        default=None,
        help="Shamir threshold t (default: derived from n, dropout, corruption)",
    )
    p.add_argument(
        "--degree",
        type=_int_in("--degree", 2, MAX_CLIENTS),
        default=None,
        help="Harary degree k, even (default: derived)",
    )
    p.add_argument(
        "--corruption",
        type=_rate("--corruption"),
        default=0.1,
        help="corruption rate used to derive (k, t), in [0, 1) (default 0.1)",
    )
    p.add_argument("--bits", type=int, choices=(32, 64), default=32, help="ring Z_2^b (default 32)")
    p.add_argument(
        "--seed",
        type=_int_in("--seed", 0, 2**32 - 1),
        default=0,
        help="seed for inputs and the dropout set, in [0, 2^32 - 1] (default 0)",
    )
    p.add_argument(
        "--steps",
        type=_int_in("--steps", 1, 1000),
        default=1,
        help="aggregations in the session, in [1, 1000] (default 1)",
    )
    p.add_argument(
        "--compare-flower",
        action="store_true",
        help="also measure Flower's SecAgg+ primitives and workflow (needs flwr)",
    )
    p.add_argument(
        "--flower-rounds",
        type=_int_in("--flower-rounds", 2, 20),
        default=4,
        help="rounds of the Flower workflow run, in [2, 20] (default 4)",
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="folder for Flower/Ray temporary files (default: a new temp folder)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


# --------------------------------------------------------------------------- Flower: primitives


def _flower_available() -> bool:
    try:
        import flwr  # noqa: F401
    except ImportError:
        return False
    return True


def flower_primitives(
    clients: int,
    dim: int,
    degree: int,
    threshold: int,
    survivors: int,
    dropped: int,
    seed: int = 0,
    server_samples: int = 6,
) -> dict[str, Any]:
    """Flower SecAgg+ primitives doing one client's work and (sampled) the server's work."""
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
        decrypt,
        encrypt,
        generate_shared_key,
    )
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import quantize
    from flwr.common.secure_aggregation.secaggplus_utils import (
        pseudo_rand_gen,
        share_keys_plaintext_concat,
    )
    from flwr.supercore.primitives.asymmetric import (
        bytes_to_private_key,
        bytes_to_public_key,
        generate_key_pairs,
        private_key_to_bytes,
        public_key_to_bytes,
    )

    mod_range = 1 << 32
    shape = [(dim,)]
    rng = np.random.default_rng(seed)
    k = min(degree, clients - 1)
    peers = [generate_key_pairs() for _ in range(k)]  # neighbours' (sk, pk): not timed
    peer_pk = [public_key_to_bytes(pk) for _, pk in peers]
    x = [rng.uniform(-1, 1, dim).astype(np.float32)]
    timings: dict[str, float] = {}

    t0 = time.process_time()
    sk1, pk1 = generate_key_pairs()
    sk2, pk2 = generate_key_pairs()
    sk1_b, sk2_b = private_key_to_bytes(sk1), private_key_to_bytes(sk2)
    public_key_to_bytes(pk1), public_key_to_bytes(pk2)
    timings["setup"] = time.process_time() - t0

    t0 = time.process_time()
    rd_seed = os.urandom(32)
    b_shares = create_shares(rd_seed, threshold, k + 1)
    sk1_shares = create_shares(sk1_b, threshold, k + 1)
    cts = []
    for j in range(k):
        key = generate_shared_key(bytes_to_private_key(sk2_b), bytes_to_public_key(peer_pk[j]))
        cts.append(
            (
                key,
                encrypt(
                    key, share_keys_plaintext_concat(0, j + 1, b_shares[j + 1], sk1_shares[j + 1])
                ),
            )
        )
    timings["share_keys"] = time.process_time() - t0

    t0 = time.process_time()
    for key, ct in cts:  # stand-in for the neighbours' ciphertexts: same size, same work
        decrypt(key, ct)
    q = quantize(x, 8.0, 1 << 22)
    masked = parameters_addition(q, pseudo_rand_gen(rd_seed, mod_range, shape))
    for j in range(k):
        shared = generate_shared_key(bytes_to_private_key(sk1_b), bytes_to_public_key(peer_pk[j]))
        mask = pseudo_rand_gen(shared, mod_range, shape)
        masked = (
            parameters_addition(masked, mask) if j % 2 else parameters_subtraction(masked, mask)
        )
    parameters_mod(masked, mod_range)
    timings["masked_input"] = time.process_time() - t0
    client_seconds = sum(timings.values())

    # server: sample the per-secret and per-mask costs, multiply by the counts Flower performs
    # (it regenerates the pairwise masks of a dropped client with *all* its neighbours)
    samples = max(1, server_samples)
    t0 = time.process_time()
    for _ in range(samples):
        combine_shares(b_shares[:threshold])
    per_seed = (time.process_time() - t0) / samples
    t0 = time.process_time()
    for _ in range(max(1, samples // 3)):
        combine_shares(sk1_shares[:threshold])
    per_key = (time.process_time() - t0) / max(1, samples // 3)
    acc = masked
    t0 = time.process_time()
    for j in range(samples):
        shared = generate_shared_key(
            bytes_to_private_key(sk1_b), bytes_to_public_key(peer_pk[j % k])
        )
        acc = parameters_subtraction(acc, pseudo_rand_gen(shared, mod_range, shape))
    per_mask = (time.process_time() - t0) / samples
    n_masks = survivors + dropped * k
    server_seconds = survivors * per_seed + dropped * per_key + n_masks * per_mask
    return {
        "client_seconds": client_seconds,
        "client_breakdown": timings,
        "server_seconds": server_seconds,
        "server_masks": n_masks,
        "server_seconds_per_mask": per_mask,
        "shamir_combine_seed_seconds": per_seed,
        "shamir_combine_key_seconds": per_key,
        "server_samples": samples,
        "note": "client measured in full for one representative client; server extrapolated "
        f"from {samples} sampled mask expansions and Shamir reconstructions",
    }


# --------------------------------------------------------------------------- Flower: workflow


_WORKFLOW_CHILD = r"""
import json, os, sys, time
import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.simulation import run_simulation

N, D, ROUNDS, T = (int(a) for a in sys.argv[1:5])
TIMES = []

class Timed(SecAggPlusWorkflow):
    def _t(self, name, fn, *a):
        t0 = time.perf_counter(); out = fn(*a); TIMES.append((name, time.perf_counter() - t0))
        return out
    def setup_stage(self, *a): return self._t("setup", super().setup_stage, *a)
    def share_keys_stage(self, *a): return self._t("share_keys", super().share_keys_stage, *a)
    def collect_masked_vectors_stage(self, *a):
        return self._t("masked_vectors", super().collect_masked_vectors_stage, *a)
    def unmask_stage(self, *a): return self._t("unmask", super().unmask_stage, *a)

class Client(NumPyClient):
    def fit(self, parameters, config):
        return [np.random.default_rng().uniform(-1, 1, D).astype(np.float32)], 1, {}

client_app = ClientApp(client_fn=lambda context: Client().to_client(), mods=[secaggplus_mod])
server_app = ServerApp()

@server_app.main()
def main(grid, context):
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=N,
                      min_available_clients=N,
                      initial_parameters=ndarrays_to_parameters([np.zeros(D, np.float32)]))
    ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=ROUNDS), strategy=strategy)
    DefaultWorkflow(fit_workflow=Timed(num_shares=N, reconstruction_threshold=T))(grid, ctx)

t0 = time.perf_counter()
run_simulation(server_app=server_app, client_app=client_app, num_supernodes=N,
               backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
print("SECAGG_JSON " + json.dumps({"times": TIMES, "total": time.perf_counter() - t0}))
"""


def flower_workflow(
    clients: int, dim: int, threshold: int, rounds: int, run_dir: Path, timeout: float = 900
) -> dict[str, Any]:
    """Run Flower's SecAgg+ workflow in simulation in a subprocess; per-stage medians over rounds
    2..``rounds`` (the first round includes Ray start-up)."""
    # Ray puts unix sockets under RAY_TMPDIR; their paths must stay below ~107 bytes, so a deep
    # run folder falls back to a short folder in the system temp dir.
    base = run_dir if len(str(run_dir.resolve())) <= 40 else None
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir=base))
    env = dict(os.environ, RAY_TMPDIR=str(ray_tmp), RAY_DEDUP_LOGS="0")
    cmd = [sys.executable, "-c", _WORKFLOW_CHILD, str(clients), str(dim), str(rounds)]
    cmd.append(str(threshold))
    # own process group, so that a timeout also ends the Ray daemons the child started
    child = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=run_dir,
        start_new_session=True,
    )
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return {"error": f"Flower workflow did not finish within {timeout:.0f} s"}
    proc = subprocess.CompletedProcess(cmd, child.returncode, stdout, stderr)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("SECAGG_JSON ")), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr or proc.stdout)[-2000:]
        return {"error": f"Flower workflow failed (exit {proc.returncode}): {tail}"}
    data = json.loads(line[len("SECAGG_JSON ") :])
    stages: dict[str, list[float]] = {}
    for name, seconds in data["times"]:
        stages.setdefault(name, []).append(seconds)
    per_round = [sum(v) for v in zip(*stages.values(), strict=False)]
    later = per_round[1:] or per_round
    return {
        "clients": clients,
        "dim": dim,
        "threshold": threshold,
        "rounds": rounds,
        "round_seconds": statistics.median(later),
        "stage_seconds": {k: statistics.median(v[1:] or v) for k, v in stages.items()},
        "first_round_seconds": per_round[0] if per_round else None,
        "process_seconds": data["total"],
        "ray_tmpdir": str(ray_tmp),
    }


# --------------------------------------------------------------------------- printing


def _fmt_bytes(n: float) -> str:
    return f"{n:,.0f} B"


def _print_human(res: BenchResult, flower: dict[str, Any] | None) -> None:
    print(
        f"secure aggregation: n={res.clients} d={res.dim} dropout={res.dropout:.2f} "
        f"({res.dropped} drop after sharing keys) graph={res.graph} k={res.degree} "
        f"t={res.threshold} bits={res.bits}"
    )
    rows = [
        (
            "client compute, mean per surviving client",
            f"{res.client_seconds:.4f} s (max {res.client_seconds_max:.4f} s)",
        ),
        ("server compute", f"{res.server_seconds:.4f} s"),
        (
            "server cost model (ANCHORS)",
            f"{res.model_server_seconds:.4f} s (measured/model {res.server_vs_model:.2f})",
        ),
        (
            "bytes up per client",
            f"{_fmt_bytes(res.bytes_up_per_client)} (expansion over float32 {res.expansion:.3f}x)",
        ),
        ("bytes down per client", _fmt_bytes(res.bytes_down_per_client)),
        ("raw AES-CTR keystream", f"{res.aes_ctr_gbps:.2f} GB/s"),
        (
            "mask expansion into accumulator",
            f"{res.mask_gbps:.2f} GB/s ({100 * res.mask_ratio:.0f}% of raw)",
        ),
        (
            "decoded sum",
            f"{'exact' if res.exact else 'WRONG'}; max |error| {res.max_abs_error:.3g} "
            f"(bound n*Delta {res.error_bound:.3g})",
        ),
        ("wall time of the aggregation", f"{res.wall_seconds:.3f} s"),
    ]
    if res.steps > 1:
        rows += [
            (
                f"later aggregations ({res.steps - 1}), client mean",
                f"{res.steady_client_seconds:.4f} s",
            ),
            ("later aggregations, server", f"{res.steady_server_seconds:.4f} s"),
            (
                "later aggregations, bytes up/down",
                f"{_fmt_bytes(res.steady_bytes_up_per_client or 0)} / "
                f"{_fmt_bytes(res.steady_bytes_down_per_client or 0)}",
            ),
        ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    if flower is None:
        return
    prim = flower.get("primitives")
    if prim:
        print(f"Flower SecAgg+ primitives, same n, d, k, t ({prim['note']}):")
        print(f"  {'':<28}{'securedream':>14}{'Flower':>14}{'Flower/ours':>13}")
        for label, ours, theirs in [
            ("client, per client (s)", res.client_seconds, prim["client_seconds"]),
            ("server (s)", res.server_seconds, prim["server_seconds"]),
        ]:
            print(f"  {label:<28}{ours:>14.4f}{theirs:>14.4f}{theirs / ours:>12.1f}x")
    wf = flower.get("workflow")
    if wf and "error" not in wf:
        ours = flower.get("ours_small")
        print(
            f"Flower SecAggPlusWorkflow in simulation, n={wf['clients']} d={wf['dim']} "
            f"t={wf['threshold']} (median of rounds 2..{wf['rounds']}):"
        )
        stages = ", ".join(f"{k} {v:.3f} s" for k, v in wf["stage_seconds"].items())
        print(f"  Flower round {wf['round_seconds']:.3f} s ({stages})")
        if ours:
            print(
                f"  securedream in-process aggregation, same shape: {ours['wall_seconds']:.4f} s "
                f"(Flower/ours {wf['round_seconds'] / ours['wall_seconds']:.1f}x)"
            )
    elif wf:
        print(f"Flower workflow: {wf['error']}")
    if flower.get("skipped"):
        print(f"Flower comparison skipped: {flower['skipped']}")


# --------------------------------------------------------------------------- main


def memory_estimate_bytes(clients: int, dim: int, bits: int) -> int:
    """Peak memory of one benchmark run, roughly: the encoded vector of every client plus the
    session's masked copy of it, and the float/integer sums and decoded result (~32 B/element)."""
    return dim * (2 * clients * (bits // 8) + 32)


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None (no check)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``securedream bench secagg``; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the message naming the argument
        return int(exc.code or 0)
    if args.threshold is not None and args.threshold > args.clients:
        parser.print_usage(sys.stderr)
        print(
            f"error: --threshold must be in [1, {args.clients}] (--clients), got {args.threshold}",
            file=sys.stderr,
        )
        return 2
    if args.degree is not None and (
        args.graph != "harary" or args.degree % 2 or args.degree > args.clients - 1
    ):
        parser.print_usage(sys.stderr)
        print(
            f"error: --degree needs --graph harary and an even value in [2, {args.clients - 1}], "
            f"got {args.degree}",
            file=sys.stderr,
        )
        return 2
    if round(args.dropout * args.clients) > args.clients - 1:
        print("error: --dropout leaves no survivor", file=sys.stderr)
        return 2
    try:  # validate the protocol configuration before spending time on measurements
        SecAggConfig(
            args.clients,
            graph=args.graph,
            degree=args.degree,
            threshold=args.threshold,
            dropout_rate=args.dropout,
            corruption_rate=args.corruption,
            bits=args.bits,
            max_dim=args.dim,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    need = memory_estimate_bytes(args.clients, args.dim, args.bits)
    have = available_memory_bytes()
    if have is not None and need > have:
        print(
            f"error: --dim {args.dim} with --clients {args.clients} needs about {need / 2**30:.1f} "
            f"GiB of memory (every client's {args.bits}-bit vector held twice, plus sums), but "
            f"{have / 2**30:.1f} GiB is available; lower --dim or --clients",
            file=sys.stderr,
        )
        return 2
    throughput = measure_throughput(args.dim, args.bits)
    try:
        res = run_secagg_bench(
            args.clients,
            args.dim,
            args.dropout,
            graph=args.graph,
            threshold=args.threshold,
            degree=args.degree,
            bits=args.bits,
            seed=args.seed,
            steps=args.steps,
            corruption_rate=args.corruption,
            throughput=throughput,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    flower: dict[str, Any] | None = None
    if args.compare_flower:
        flower = {}
        if not _flower_available():
            flower["skipped"] = "flwr is not installed (pip install 'securedream[bench]')"
        else:
            flower["primitives"] = flower_primitives(
                res.clients,
                res.dim,
                res.degree,
                res.threshold,
                res.survivors,
                res.dropped,
                args.seed,
            )
            flower["primitives"]["client_ratio"] = (
                flower["primitives"]["client_seconds"] / res.client_seconds
            )
            flower["primitives"]["server_ratio"] = (
                flower["primitives"]["server_seconds"] / res.server_seconds
            )
            n_small, d_small = FLOWER_WORKFLOW_SHAPE
            t_small = 7
            small = run_secagg_bench(
                n_small,
                d_small,
                0.0,
                threshold=t_small,
                seed=args.seed,
                steps=1,
                throughput=throughput,
            )
            run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="secagg-bench-"))
            run_dir.mkdir(parents=True, exist_ok=True)
            flower["workflow"] = flower_workflow(
                n_small, d_small, t_small, args.flower_rounds, run_dir
            )
            flower["ours_small"] = {
                "wall_seconds": small.wall_seconds,
                "exact": small.exact,
                "server_seconds": small.server_seconds,
                "client_seconds": small.client_seconds,
            }
            if "round_seconds" in flower["workflow"]:
                flower["workflow"]["ratio_flower_over_ours"] = (
                    flower["workflow"]["round_seconds"] / small.wall_seconds
                )
    if args.json:
        out = res.to_dict()
        if flower is not None:
            out["flower"] = flower
        print(json.dumps(out))
    else:
        _print_human(res, flower)
    return 0 if res.exact else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
