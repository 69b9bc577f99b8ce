"""Readers of the real vLLM runs: iteration rate from per-request timings, decode windows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sim.perf import measurements


def test_iteration_rate_recovers_a_known_step_time():
    # one step every 25 ms for 20 s; requests start and stop at random step boundaries
    rng = np.random.default_rng(0)
    step = 0.025
    first = rng.integers(0, 400, 200) * step
    n = rng.integers(40, 400, 200)
    last = first + n * step
    edges, rate = measurements.iteration_rate(first, last, n + 1, bin_s=2.0)
    covered = edges[1:] <= last.max()
    np.testing.assert_allclose(rate[covered], 1 / step, rtol=0.02)


def test_generated_per_window_counts_tokens_and_busy_time():
    first, last = np.array([0.0, 0.5]), np.array([2.0, 1.0])
    pace = np.array([0.1, 0.05])
    tokens, busy = measurements._generated_per_window(first, last, pace, np.array([1.0, 2.0]))
    np.testing.assert_allclose(tokens, [10 + 10, 10])
    np.testing.assert_allclose(busy, [1.5, 1.0])


@pytest.mark.shared
def test_drain_iterations_of_the_real_runs(shared_data):
    rows = measurements.load_vllm_drain_iterations(shared_data)
    assert set(rows.run) == {"RTX4090/Llama-3.1-8B", "RTXPRO6000/Llama-3.1-8B",
                             "RTXPRO6000/Qwen3-32B"}  # the DP/EP run is left out
    assert (rows.batch_size >= 4).all()
    # decode steps of an 8B model on these cards take 10-40 ms, a 32B TP2 one 25-80 ms
    small = rows[rows.model == "Llama-3.1-8B"].measured_s
    assert small.between(0.010, 0.040).all()
    assert rows[rows.model == "Qwen3-32B"].measured_s.between(0.025, 0.080).all()
    # fewer requests decoding, faster steps (within a run, roughly)
    for _, g in rows.groupby("run"):
        g = g.sort_values("batch_size")
        assert g.measured_s.iloc[0] < g.measured_s.iloc[-1]


@pytest.mark.shared
def test_decode_windows_are_on_the_requests_clock(shared_data):
    rows = measurements.load_vllm_decode_windows(shared_data)
    assert not rows.empty and (rows.batch_size >= 4).all()
    assert (rows.kv_cache_pct < 90).all()
    reqs = pd.read_json(shared_data / "vllm_runs/llmservingsim/RTXPRO6000/Llama-3.1-8B/vllm/"
                        "requests.jsonl", lines=True)
    ts = pd.read_csv(shared_data / "vllm_runs/llmservingsim/RTXPRO6000/Llama-3.1-8B/vllm/"
                     "timeseries.csv")
    assert -2.0 <= measurements.timeseries_clock_shift(reqs, ts) <= 0.0
