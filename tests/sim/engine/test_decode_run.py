"""Closed-form decode runs: sums and inverses of ``t_j = max(floor, a + slope j) + const``."""

from __future__ import annotations

import numpy as np
import pytest

from sim.engine.decode_run import DecodeLine, cum_time_s, iters_within


def brute_times(line: DecodeLine, k: int) -> np.ndarray:
    """Iteration times 0..k-1 one by one."""
    a, s, f, c = line
    return np.array([max(f, a + s * j) + c for j in range(k)])


def random_lines(seed: int, n: int = 40):
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = float(rng.uniform(1e-3, 2e-2))
        s = float(rng.choice([0.0, rng.uniform(1e-8, 1e-4)]))
        c = float(rng.uniform(0, 5e-3))
        kind = i % 3  # floor never, briefly or long binding
        f = 0.0 if kind == 0 else a * float(rng.uniform(1.0, 1.5 if kind == 1 else 20.0))
        yield DecodeLine(a, s, f, c)


@pytest.mark.parametrize("seed", range(3))
def test_cum_time_matches_brute_force_sum(seed):
    for line in random_lines(seed):
        k_max = 3000
        cum = np.concatenate(([0.0], np.cumsum(brute_times(line, k_max))))
        for k in (0, 1, 2, 7, 100, 999, k_max):
            assert cum_time_s(line, k) == pytest.approx(cum[k], rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_iters_within_matches_brute_force(seed):
    for line in random_lines(seed):
        cum = np.concatenate(([0.0], np.cumsum(brute_times(line, 3000))))
        rng = np.random.default_rng(seed)
        for k in rng.integers(0, 2999, 25).tolist() + [0, 1]:
            mid = 0.5 * (cum[k] + cum[k + 1])  # strictly between k and k + 1 finished
            assert iters_within(line, mid) == k


def test_iters_within_inverts_cum_time_exactly():
    for line in random_lines(7):
        for k in (1, 2, 3, 50, 1234):
            t = cum_time_s(line, k)
            assert iters_within(line, t) == k
            assert iters_within(line, np.nextafter(t, 0.0)) == k - 1


def test_floor_binding_segment():
    line = DecodeLine(a_s=0.010, slope_s=0.001, floor_s=0.015, const_s=0.002)
    # floor binds for j < 5 (0.010 + 0.001 j < 0.015), then the line takes over
    assert cum_time_s(line, 5) == pytest.approx(5 * 0.017)
    assert cum_time_s(line, 7) == pytest.approx(5 * 0.017 + 0.017 + 0.018)
    assert iters_within(line, 5 * 0.017 + 0.0171) == 6


def test_flat_line_and_permanent_floor():
    flat = DecodeLine(0.01, 0.0, 0.0, 0.0)
    assert cum_time_s(flat, 1000) == pytest.approx(10.0)
    assert iters_within(flat, 10.005) == 1000
    floored = DecodeLine(0.01, 0.0, 0.02, 0.001)  # floor above a flat line: binds forever
    assert cum_time_s(floored, 10) == pytest.approx(10 * 0.021)
    assert iters_within(floored, 0.2) == 9


def test_zero_and_negative_inputs():
    line = DecodeLine(0.01, 1e-5, 0.0, 0.0)
    assert cum_time_s(line, 0) == 0.0 and cum_time_s(line, -3) == 0.0
    assert iters_within(line, 0.0) == 0 and iters_within(line, -1.0) == 0
    assert iters_within(line, 0.00999) == 0
