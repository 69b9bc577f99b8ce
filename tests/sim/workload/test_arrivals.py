"""Arrival processes: rate, burstiness and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from sim.workload import ARRIVAL_PROCESSES, diurnal, gamma, mmpp_onoff, poisson

N = 20_000


def _cv(arrival_s: np.ndarray) -> float:
    gaps_s = np.diff(arrival_s)
    return float(gaps_s.std() / gaps_s.mean())


def _rate(arrival_s: np.ndarray) -> float:
    return (arrival_s.size - 1) / (arrival_s[-1] - arrival_s[0])


PARAMS = {
    "poisson": {"rate_per_s": 3.0},
    "gamma": {"rate_per_s": 3.0, "cv": 4.0},
    "mmpp_onoff": {"rate_on_per_s": 10.0, "rate_off_per_s": 1.0, "mean_on_s": 5.0,
                   "mean_off_s": 15.0},
    "diurnal": {"mean_rate_per_s": 3.0, "amplitude_frac": 0.8, "period_s": 100.0},
}


@pytest.mark.parametrize("name", sorted(ARRIVAL_PROCESSES))
def test_shape_sorted_and_deterministic(name):
    fn = ARRIVAL_PROCESSES[name]
    a = fn(N, np.random.default_rng(1), **PARAMS[name])
    b = fn(N, np.random.default_rng(1), **PARAMS[name])
    c = fn(N, np.random.default_rng(2), **PARAMS[name])
    assert a.shape == (N,) and a.dtype == np.float64
    assert a[0] >= 0 and np.all(np.diff(a) >= 0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert fn(0, np.random.default_rng(1), **PARAMS[name]).shape == (0,)


def test_poisson_rate_and_cv():
    a = poisson(N, np.random.default_rng(0), rate_per_s=3.0)
    assert _rate(a) == pytest.approx(3.0, rel=0.03)
    assert _cv(a) == pytest.approx(1.0, rel=0.03)


@pytest.mark.parametrize("cv", [0.5, 1.0, 4.0])
def test_gamma_rate_and_cv(cv):
    a = gamma(N, np.random.default_rng(0), rate_per_s=3.0, cv=cv)
    # Sample CV of heavy-tailed gaps (cv 4: kurtosis 96) varies more: wider tolerance.
    assert _rate(a) == pytest.approx(3.0, rel=0.03 * max(cv, 1.0))
    assert _cv(a) == pytest.approx(cv, rel=0.03 if cv <= 1 else 0.12)


def test_gamma_does_not_clip_long_gaps():
    # Vidur's "Poisson" clips gaps at 3x the mean; an exponential has e^-3 = 5 % above that.
    a = poisson(N, np.random.default_rng(0), rate_per_s=1.0)
    assert np.mean(np.diff(a) > 3.0) == pytest.approx(np.exp(-3.0), rel=0.15)


def test_mmpp_mean_rate_and_burstiness():
    p = PARAMS["mmpp_onoff"]
    a = mmpp_onoff(N, np.random.default_rng(0), **p)
    mean_rate = ((p["rate_on_per_s"] * p["mean_on_s"] + p["rate_off_per_s"] * p["mean_off_s"])
                 / (p["mean_on_s"] + p["mean_off_s"]))
    assert _rate(a) == pytest.approx(mean_rate, rel=0.15)  # ~300 on/off cycles
    assert _cv(a) > 1.2  # over-dispersed compared with Poisson


def test_mmpp_off_state_silent():
    a = mmpp_onoff(N, np.random.default_rng(0), rate_on_per_s=5.0, rate_off_per_s=0.0,
                   mean_on_s=2.0, mean_off_s=2.0)
    assert _rate(a) == pytest.approx(2.5, rel=0.1)


def test_diurnal_mean_rate_and_shape():
    p = PARAMS["diurnal"]
    a = diurnal(N, np.random.default_rng(0), **p)
    span_s = (a[-1] // p["period_s"]) * p["period_s"]  # whole periods only
    assert np.sum(a < span_s) / span_s == pytest.approx(3.0, rel=0.03)
    phase = (a % p["period_s"]) / p["period_s"]
    peak, trough = np.mean((phase > 0.0) & (phase < 0.5)), np.mean(phase >= 0.5)
    # Expected share in the rising half: (1 + 2 * amp / pi) / 2 = 0.755 for amp 0.8.
    assert peak == pytest.approx((1 + 2 * 0.8 / np.pi) / 2, abs=0.02)
    assert peak + trough == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("fn", "kwargs", "pattern"),
    [
        (poisson, {"rate_per_s": 0.0}, "rate_per_s"),
        (gamma, {"rate_per_s": 1.0, "cv": -1.0}, "cv"),
        (mmpp_onoff, {"rate_on_per_s": 1.0, "rate_off_per_s": -1.0, "mean_on_s": 1.0,
                      "mean_off_s": 1.0}, "rate_off_per_s"),
        (diurnal, {"mean_rate_per_s": 1.0, "amplitude_frac": 1.5, "period_s": 1.0},
         "amplitude_frac"),
    ],
)
def test_bad_parameters_name_themselves(fn, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        fn(10, np.random.default_rng(0), **kwargs)
