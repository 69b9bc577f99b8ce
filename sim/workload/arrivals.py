"""Arrival processes: sorted arrival times for ``num_requests`` requests.

Every process has the signature ``f(num_requests, rng, **params) -> (n,) float64`` seconds,
non-decreasing, starting after t = 0 (the first arrival is one random gap after 0). Gaps are
never clipped, so the tail of each distribution is exactly the one named.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ArrivalProcess = Callable[..., np.ndarray]


def check_count(num_requests: int) -> int:
    """Validate a request count (an int >= 0); shared by arrivals and lengths."""
    if isinstance(num_requests, bool) or not isinstance(num_requests, int | np.integer):
        raise ValueError(f"num_requests must be an int, got {num_requests!r}")
    if num_requests < 0:
        raise ValueError(f"num_requests must be >= 0, got {num_requests}")
    return int(num_requests)


def _check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    value = float(value)
    ok = np.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"arrival parameter {name} must be finite and {bound}, got {value}")
    return value


def poisson(num_requests: int, rng: np.random.Generator, *, rate_per_s: float) -> np.ndarray:
    """Homogeneous Poisson arrivals (exponential gaps, CV 1).

    Args:
        num_requests: number of arrivals n.
        rng: the only source of randomness.
        rate_per_s: mean arrival rate, requests/s.

    Returns:
        (n,) float64 arrival times, seconds.
    """
    n = check_count(num_requests)
    rate_per_s = _check_positive("rate_per_s", rate_per_s)
    return np.cumsum(rng.exponential(1.0 / rate_per_s, n))


def gamma(num_requests: int, rng: np.random.Generator, *, rate_per_s: float,
          cv: float) -> np.ndarray:
    """Renewal process with Gamma gaps of mean ``1 / rate_per_s`` and coefficient of variation cv.

    Shape ``k = 1 / cv**2``, scale ``1 / (rate_per_s * k)``. ``cv = 1`` is Poisson; ``cv > 1``
    gives bursts of near-zero gaps separated by long silences.

    Args:
        num_requests: number of arrivals n.
        rng: the only source of randomness.
        rate_per_s: mean arrival rate, requests/s.
        cv: std / mean of the gaps, > 0.

    Returns:
        (n,) float64 arrival times, seconds.
    """
    n = check_count(num_requests)
    rate_per_s = _check_positive("rate_per_s", rate_per_s)
    cv = _check_positive("cv", cv)
    shape = 1.0 / cv**2
    return np.cumsum(rng.gamma(shape, 1.0 / (rate_per_s * shape), n))


def mmpp_onoff(num_requests: int, rng: np.random.Generator, *, rate_on_per_s: float,
               rate_off_per_s: float, mean_on_s: float, mean_off_s: float) -> np.ndarray:
    """Two-state Markov-modulated Poisson process (on/off bursts).

    The state alternates between *on* (Poisson at ``rate_on_per_s``) and *off* (Poisson at
    ``rate_off_per_s``, may be 0) with exponential sojourns of means ``mean_on_s`` and
    ``mean_off_s``. The start state is drawn from the stationary distribution, so the mean
    rate is ``(rate_on * mean_on + rate_off * mean_off) / (mean_on + mean_off)`` from t = 0.

    Args:
        num_requests: number of arrivals n.
        rng: the only source of randomness.
        rate_on_per_s: arrival rate in the on state, requests/s, > 0.
        rate_off_per_s: arrival rate in the off state, requests/s, >= 0.
        mean_on_s: mean on-sojourn, seconds, > 0.
        mean_off_s: mean off-sojourn, seconds, > 0.

    Returns:
        (n,) float64 arrival times, seconds.
    """
    n = check_count(num_requests)
    rate_on = _check_positive("rate_on_per_s", rate_on_per_s)
    rate_off = _check_positive("rate_off_per_s", rate_off_per_s, allow_zero=True)
    mean_on = _check_positive("mean_on_s", mean_on_s)
    mean_off = _check_positive("mean_off_s", mean_off_s)
    per_cycle = rate_on * mean_on + rate_off * mean_off
    start_on = rng.random() < mean_on / (mean_on + mean_off)
    chunks: list[np.ndarray] = []
    count, t0_s = 0, 0.0
    while count < n:
        num_cycles = min(int(1.2 * (n - count) / per_cycle) + 8, 1_000_000)
        # Sojourns alternate on/off (or off/on); column 0 is the state we start the chunk in.
        means = np.array([mean_on, mean_off] if start_on else [mean_off, mean_on])
        rates = np.array([rate_on, rate_off] if start_on else [rate_off, rate_on])
        lengths_s = rng.exponential(1.0, (num_cycles, 2)) * means
        ends_s = t0_s + np.cumsum(lengths_s.ravel())
        starts_s = ends_s - lengths_s.ravel()
        counts = rng.poisson(np.tile(rates, num_cycles) * lengths_s.ravel())
        idx = np.repeat(np.arange(counts.size), counts)
        times_s = starts_s[idx] + rng.random(idx.size) * lengths_s.ravel()[idx]
        # Uniform points in each sojourn, sorted within it; sojourns are already in order.
        times_s = times_s[np.lexsort((times_s, idx))]
        chunks.append(times_s)
        count += times_s.size
        t0_s = float(ends_s[-1])
    return np.concatenate(chunks)[:n] if chunks else np.zeros(0)


def diurnal(num_requests: int, rng: np.random.Generator, *, mean_rate_per_s: float,
            amplitude_frac: float, period_s: float) -> np.ndarray:
    """Non-homogeneous Poisson with ``rate(t) = mean * (1 + amplitude * sin(2 pi t / period))``.

    Sampled by thinning a Poisson process of rate ``mean * (1 + amplitude)`` (Lewis-Shedler).

    Args:
        num_requests: number of arrivals n.
        rng: the only source of randomness.
        mean_rate_per_s: rate averaged over a period, requests/s.
        amplitude_frac: relative swing in [0, 1]; 0 is Poisson, 1 reaches rate 0 at the trough.
        period_s: period of the cycle, seconds (86400 for a day).

    Returns:
        (n,) float64 arrival times, seconds.
    """
    n = check_count(num_requests)
    mean_rate = _check_positive("mean_rate_per_s", mean_rate_per_s)
    period_s = _check_positive("period_s", period_s)
    amplitude_frac = float(amplitude_frac)
    if not 0.0 <= amplitude_frac <= 1.0:
        raise ValueError(f"arrival parameter amplitude_frac must be in [0, 1], got "
                         f"{amplitude_frac}")
    max_rate = mean_rate * (1.0 + amplitude_frac)
    chunks: list[np.ndarray] = []
    count, t0_s = 0, 0.0
    while count < n:
        num_candidates = int(1.3 * (n - count) * (1.0 + amplitude_frac)) + 16
        candidates_s = t0_s + np.cumsum(rng.exponential(1.0 / max_rate, num_candidates))
        rate = mean_rate * (1.0 + amplitude_frac * np.sin(2.0 * np.pi * candidates_s / period_s))
        kept_s = candidates_s[rng.random(num_candidates) * max_rate < rate]
        chunks.append(kept_s)
        count += kept_s.size
        t0_s = float(candidates_s[-1])
    return np.concatenate(chunks)[:n] if chunks else np.zeros(0)


ARRIVAL_PROCESSES: dict[str, ArrivalProcess] = {
    "poisson": poisson,
    "gamma": gamma,
    "mmpp_onoff": mmpp_onoff,
    "diurnal": diurnal,
}
"""Arrival process name -> function ``f(num_requests, rng, **params)``."""
