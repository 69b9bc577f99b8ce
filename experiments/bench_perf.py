"""Benchmark the performance model's hot paths: scalar and vectorised evaluations per second.

``python -m experiments.bench_perf [--n 1000000] [--repeats 5]`` times

* the scalar path :meth:`AnalyticBackend.iteration_time_s` on a stream of random mixed batches
  (what the simulator calls once per iteration), in microseconds per call;
* the vectorised path :meth:`AnalyticBackend.iteration_times_s` on ``n`` batches at once, in
  million estimates per second;
* how far the two paths disagree on the same batches (they must agree to rounding).

Targets (issue #2): scalar <= 5 us per call, vectorised >= 2 M estimates/s. Reports the best of
``--repeats`` runs, since these shared machines are noisy.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sim.perf import AnalyticBackend, BatchArrays


def random_batches(n: int, seed: int = 0) -> BatchArrays:
    """``n`` random vLLM-like batches: up to 4 prefill chunks and 256 decodes each."""
    rng = np.random.default_rng(seed)
    b = BatchArrays.zeros(n)
    ps = rng.integers(0, 3, n)
    chunk = rng.integers(1, 2048, n)
    ctx = rng.integers(0, 4096, n) * (rng.random(n) < 0.3)
    b.num_prefill_seqs[:] = ps
    b.num_prefill_tokens[:] = ps * chunk
    b.prefill_ctx_tokens[:] = ps * ctx
    b.prefill_new_x_ctx[:] = ps * chunk * ctx
    b.prefill_new_sq[:] = ps * chunk * chunk
    ds = rng.integers(0, 256, n)
    b.num_decode_seqs[:] = ds
    b.decode_ctx_tokens[:] = ds * rng.integers(1, 4096, n)
    return b


def bench_scalar(backend, batches: BatchArrays, repeats: int) -> float:
    """Best seconds per scalar call over ``repeats`` passes."""
    rows = list(zip(*(a.tolist() for a in batches), strict=True))
    f = backend.iteration_time_s
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for r in rows:
            f(*r)
        best = min(best, (time.perf_counter() - t0) / len(rows))
    return best


def bench_vector(backend, batches: BatchArrays, repeats: int) -> float:
    """Best estimates per second of the vectorised path."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        backend.iteration_times_s(batches)
        best = min(best, time.perf_counter() - t0)
    return len(batches.num_decode_seqs) / best


def main(argv: list[str] | None = None) -> None:
    """Print the benchmark table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="batches for the vectorised path")
    ap.add_argument("--n-scalar", type=int, default=100_000, help="calls for the scalar path")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    analytic = AnalyticBackend("Llama-3.1-8B", "A100-80GB-SXM", tp=1)
    build_s = time.perf_counter() - t0
    big = random_batches(args.n)
    small = random_batches(args.n_scalar, seed=1)
    s_us = bench_scalar(analytic, small, args.repeats) * 1e6
    v_mps = bench_vector(analytic, big, args.repeats) / 1e6
    # agreement of the two paths on the same batches
    vec = analytic.iteration_times_s(small)
    rows = list(zip(*(a.tolist() for a in small), strict=True))
    sca = np.array([analytic.iteration_time_s(*r) for r in rows[:10000]])
    ref = vec[:10000]
    # empty batches cost 0 on both paths (no fixed host time with async scheduling)
    max_rel = float(np.max(np.abs(sca - ref) / np.where(ref > 0, ref, 1.0)))
    print(f"analytic backend build (tables, Llama-3.1-8B TP1 A100): {build_s * 1e3:.1f} ms")
    print(f"scalar path:     {s_us:.2f} us/call   (target <= 5 us)")
    print(f"vectorised path: {v_mps:.1f} M estimates/s   (target >= 2 M/s)")
    print(f"scalar vs vectorised max relative difference: {max_rel:.2e}")


if __name__ == "__main__":
    main()
