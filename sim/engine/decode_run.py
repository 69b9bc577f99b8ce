"""Closed-form timing of a decode-only run: k iterations with a fixed batch.

In a decode-only stretch each iteration adds one token to every sequence, so the batch's
attended context grows by ``num_seqs`` per iteration and the backends give iteration ``j``
(0-based) the time::

    t_j = max(floor, a + slope * j) + const          (slope >= 0)

(``floor`` is the host's kernel-launch floor without CUDA graphs, 0 otherwise). This module
sums that series and inverts the sum, so the engine advances a run in O(1) instead of one
event per token.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class DecodeLine(NamedTuple):
    """Iteration time ``t_j = max(floor_s, a_s + slope_s * j) + const_s``, seconds."""

    a_s: float
    slope_s: float
    floor_s: float
    const_s: float


def _floor_iters(line: DecodeLine) -> int:
    """Iterations at the start of the run during which the floor binds."""
    a, s, f, _ = line
    if a >= f:
        return 0
    if s <= 0.0:
        return 1 << 62
    return max(0, math.ceil((f - a) / s))


def cum_time_s(line: DecodeLine, k: int) -> float:
    """Seconds taken by the first ``k`` iterations of the run."""
    if k <= 0:
        return 0.0
    a, s, f, c = line
    if a >= f:  # the floor never binds (same arithmetic as the general case with jf = 0)
        return k * (a + c) + s * (k * (k - 1)) * 0.5
    jf = _floor_iters(line)
    if k <= jf:
        return k * (f + c)
    m = k - jf
    # sum_{j=jf}^{k-1} (a + s j) = m a + s (k(k-1)/2 - jf(jf-1)/2)
    return jf * (f + c) + m * (a + c) + s * (k * (k - 1) - jf * (jf - 1)) * 0.5


def iters_within(line: DecodeLine, dt_s: float) -> int:
    """Largest k with ``cum_time_s(line, k) <= dt_s`` (iterations finished after dt_s)."""
    if dt_s <= 0.0:
        return 0
    a, s, f, c = line
    if a >= f:  # no floor segment: invert the quadratic, then fix rounding inline
        ac = a + c
        if s <= 0.0:
            k = int(dt_s // ac) if ac > 0 else 1 << 62
        else:
            half = 0.5 * s
            p = ac - half
            k = int((-p + math.sqrt(p * p + 4.0 * half * dt_s)) / (2.0 * half))
        if k < 0:
            k = 0
        while k > 0 and k * ac + s * (k * (k - 1)) * 0.5 > dt_s:
            k -= 1
        while (k + 1) * ac + s * ((k + 1) * k) * 0.5 <= dt_s:
            k += 1
        return k
    jf = _floor_iters(line)
    step_f = f + c
    if jf > 0:
        k = int(dt_s // step_f) if step_f > 0 else jf
        if k < jf:
            return _fix(line, k, dt_s)
        dt_s -= jf * step_f
    b0 = a + c + s * jf  # cost of the first iteration after the floor segment
    if s <= 0.0:
        m = int(dt_s // b0) if b0 > 0 else 1 << 62
    else:
        # s/2 m^2 + (b0 - s/2) m - dt <= 0
        half = 0.5 * s
        p = b0 - half
        m = int((-p + math.sqrt(p * p + 4.0 * half * dt_s)) / (2.0 * half))
    return _fix(line, jf + max(m, 0), dt_s + jf * step_f if jf > 0 else dt_s)


def _fix(line: DecodeLine, k: int, dt_s: float) -> int:
    """Correct a float estimate of ``iters_within`` by a step or two."""
    while k > 0 and cum_time_s(line, k) > dt_s:
        k -= 1
    while cum_time_s(line, k + 1) <= dt_s:
        k += 1
    return k
