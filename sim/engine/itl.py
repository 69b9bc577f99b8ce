"""Exact inter-token-latency (ITL) statistics from the compact record, without expanding it.

:meth:`sim.engine.Simulator.itl_parts` keeps the pooled inter-token gaps as single values
with counts plus one line per decode run (iteration ``j`` lasted
``max(floor, a + slope * j) + const``, ``slope >= 0``). Expanding the runs
(:meth:`~sim.engine.Simulator.itl_gaps`) costs one value per run iteration, several GB for a
million requests. :class:`InterTokenGaps` answers the questions a summary asks directly from
the record, in O(singles + runs) memory:

* the count and the mean (closed-form sum of each run's iterations, floor segment apart);
* how many gaps are ``<= x``: each run's iterations are nondecreasing in ``j`` (``slope >= 0``
  and rounding is monotone), so a run contributes a prefix, whose length is estimated from
  the line and then settled by evaluating the exact float expression at its neighbours (a
  bisection on ``j`` for the rare run the estimate misses);
* the ``r``-th smallest gap, by bisection over float64 values (their bit patterns order like
  integers), each step one count; percentiles then interpolate exactly as ``np.percentile``
  (linear), so they equal :func:`sim.metrics.weighted_percentile` of the expansion bit for bit.
"""

from __future__ import annotations

import numpy as np

_SIGN = np.int64(-(1 << 63))
_CHUNK_PAIRS = 1 << 18
"""(run, grid point) pairs evaluated at once by :meth:`InterTokenGaps.count_le`."""


def linear_rank(n: int, q: float) -> tuple[int, int, np.float64]:
    """Ranks and weight of ``np.percentile(x, q)`` (method ``linear``) for ``n`` values.

    Args:
        n: how many values (> 0).
        q: percentile in [0, 100].

    Returns:
        ``(lo, hi, g)``: the result interpolates the ``lo``-th and ``hi``-th smallest values
        (0-based) with weight ``g`` in [0, 1) (see :func:`lerp`).
    """
    qf = np.true_divide(q, 100)
    h = (n - 1) * qf  # numpy's virtual index for the linear method
    lo = min(max(int(np.floor(h)), 0), n - 1)
    hi = min(lo + 1, n - 1)
    return lo, hi, h - np.floor(h)


def lerp(a: float, b: float, g: float) -> float:
    """``a + (b - a) * g`` rounded as numpy's ``_lerp`` does (from ``b`` when ``g >= 0.5``)."""
    d = b - a
    return float(b - d * (1 - g) if g >= 0.5 else a + d * g)


def _key(x: float) -> int:
    """Integer that orders like the float ``x`` (finite; ``-0.0`` and ``0.0`` both 0)."""
    i = int(np.array(x, np.float64).view(np.int64))
    return i if i >= 0 else -(i & 0x7FFF_FFFF_FFFF_FFFF)


def _value(key: int) -> np.float64:
    """Inverse of :func:`_key`."""
    bits = np.int64(key) if key >= 0 else np.int64(-key) | _SIGN
    return np.array(bits).view(np.float64)[()]


class _Runs:
    """Decode runs as contiguous columns, all ``(m,)``; every run holds at least one gap.

    Times in seconds: ``t_j = max(f, a + s * j) + c`` for iterations ``0 <= j < k``;
    iteration 0 ends ``first`` gaps, the others ``seqs`` each. Derived: ``ac = a + c`` and
    ``inv_s = 1 / s`` (``inf`` where ``s == 0``) for the estimate, ``fc = f + c`` (every
    ``t_j >= fc``), ``jmax`` the last iteration ending a gap, ``tmin``/``tmax`` the shortest and
    longest gap, ``total`` the run's gaps.
    """

    FIELDS = ("a", "s", "f", "c", "k", "seqs", "first", "ac", "inv_s", "fc", "jmax", "tmin",
              "tmax", "total")

    def __init__(self, **cols: np.ndarray) -> None:
        for name in self.FIELDS:
            setattr(self, name, cols[name])

    @classmethod
    def build(cls, lines: np.ndarray, ints: np.ndarray) -> _Runs:
        """From ``run_lines (m, 4) float64`` and ``run_ints (m, 3) int64``.

        Weightless runs (``k == 0``, or no gap ended) are dropped; the order is kept.
        """
        k, seqs, first = (np.ascontiguousarray(ints[:, i], np.int64) for i in range(3))
        total = np.where(k > 0, first + np.maximum(k - 1, 0) * seqs, 0)
        keep = total > 0
        if not keep.all():
            k, seqs, first, total = k[keep], seqs[keep], first[keep], total[keep]
            lines = lines[keep]
        a, s, f, c = (np.ascontiguousarray(lines[:, i], np.float64) for i in range(4))
        with np.errstate(divide="ignore"):
            inv_s = np.where(s > 0, 1.0 / s, np.inf)
        jmin = np.where(first > 0, 0, 1)
        jmax = np.where((k > 1) & (seqs > 0), k - 1, 0)
        runs = cls(a=a, s=s, f=f, c=c, k=k, seqs=seqs, first=first, ac=a + c, inv_s=inv_s,
                   fc=f + c, jmax=jmax, tmin=None, tmax=None, total=total)
        runs.tmin, runs.tmax = runs.time(jmin), runs.time(jmax)
        return runs

    @property
    def size(self) -> int:
        return self.k.size

    def compress(self, keep: np.ndarray) -> _Runs:
        """The runs where ``keep`` (bool ``(m,)``)."""
        return _Runs(**{name: getattr(self, name)[keep] for name in self.FIELDS})

    def take(self, idx: np.ndarray) -> _Runs:
        """The runs at ``idx`` (int ``(p,)``, repeats allowed)."""
        return _Runs(**{name: getattr(self, name)[idx] for name in self.FIELDS})

    def time(self, j: np.ndarray) -> np.ndarray:
        """``(m,) float64``: duration of iteration ``j`` (int ``(m,)``) of each run, seconds.

        The very float expression of :meth:`~sim.engine.Simulator.itl_gaps`.
        """
        return np.maximum(self.f, self.a + self.s * j) + self.c

    def num_le(self, x) -> np.ndarray:
        """``(m,) int64``: iterations of each run lasting ``<= x`` (a scalar or ``(m,)``, s).

        A prefix ``0..J-1`` since ``t_j`` is nondecreasing. ``J`` is estimated from the line
        (``x < f + c``: none), then checked against the exact ``t_{J-1} <= x < t_J``; the runs
        the estimate misses (rounding, a flat run at ``x`` exactly) bisect on ``j``.
        """
        with np.errstate(invalid="ignore", over="ignore"):
            e = np.floor((x - self.ac) * self.inv_s) + 1.0  # NaN (s == 0, x == a + c) -> 0
        e = np.where(self.fc > x, 0.0, e)
        j = np.fmin(np.fmax(e, 0.0), self.k).astype(np.int64)
        k = self.k
        bad_lo = (j > 0) & (self.time(np.maximum(j - 1, 0)) > x)
        bad_hi = (j < k) & (self.time(np.minimum(j, k - 1)) <= x)
        bad = np.flatnonzero(bad_lo | bad_hi)
        if bad.size:
            sub = self.take(bad)
            xs = x if np.ndim(x) == 0 else np.asarray(x)[bad]
            jb, low = j[bad], bad_lo[bad]
            # the answer is in [lo, hi]; first try the neighbour (the usual miss: x equal to
            # an iteration's time), then bisect
            t = sub.time(np.where(low, np.maximum(jb - 2, 0), np.minimum(jb + 1, sub.k - 1)))
            done = np.where(low, (jb == 1) | (t <= xs), (jb + 1 == sub.k) | (t > xs))
            ans = np.where(low, jb - 1, jb + 1)
            lo = np.where(done, ans, np.where(low, 0, jb + 2))
            hi = np.where(done, ans, np.where(low, jb - 2, sub.k))
            while (open_ := lo < hi).any():
                mid = (lo + hi) // 2  # < hi <= k
                above = sub.time(mid) > xs
                hi = np.where(open_ & above, mid, hi)
                lo = np.where(open_ & ~above, mid + 1, lo)
            j[bad] = lo
        return j

    def gaps_le(self, x) -> np.ndarray:
        """``(m,) int64``: gaps of each run lasting ``<= x`` (a scalar or ``(m,)``, s)."""
        j = self.num_le(x)
        return np.where(j > 0, self.first + (j - 1) * self.seqs, 0)

    def next_above(self, x: float) -> float:
        """Smallest gap of any run lasting ``> x`` (``inf`` if none), seconds."""
        j = self.num_le(x)
        j = np.where((j == 0) & (self.first == 0), 1, j)  # next iteration ending a gap
        ok = j <= self.jmax
        if not ok.any():
            return np.inf
        return self.compress(ok).time(j[ok]).min()


class InterTokenGaps:
    """The pooled inter-token gaps of a run, kept compact (as recorded), with exact statistics.

    Every statistic equals the same statistic of the expansion (:meth:`expand`,
    :meth:`sim.engine.Simulator.itl_gaps`): counts and percentiles exactly, the mean to
    rounding (a closed-form sum per run). Memory is O(n + m) for ``n`` single values and
    ``m`` decode runs; a percentile costs about 64 counts, each O(m) plus O(log n).

    Build with :meth:`from_simulator` or :meth:`from_parts`.
    """

    def __init__(self, values_s: np.ndarray, counts: np.ndarray, run_lines: np.ndarray,
                 run_ints: np.ndarray) -> None:
        """See :meth:`from_parts` (the arrays are copied, not kept)."""
        v = np.asarray(values_s, np.float64).ravel()
        w = np.asarray(counts, np.int64).ravel()
        lines = np.asarray(run_lines, np.float64).reshape(-1, 4)
        ints = np.asarray(run_ints, np.int64).reshape(-1, 3)
        if v.shape != w.shape or len(lines) != len(ints):
            raise ValueError(f"mismatched shapes: values {v.shape}, counts {w.shape}, "
                             f"run_lines {lines.shape}, run_ints {ints.shape}")
        if (w < 0).any() or (ints < 0).any():
            raise ValueError("counts and run_ints must be >= 0")
        if not (lines[:, 1] >= 0).all():
            raise ValueError("decode-run slopes must be >= 0 (not NaN)")
        if not (np.isfinite(v[w > 0]).all() and np.isfinite(lines).all()):
            raise ValueError("gaps must be finite")
        keep = w > 0
        self._values, self._counts = v[keep], w[keep]  # recorded order (expand)
        order = np.argsort(self._values, kind="stable")
        self._sorted = self._values[order]
        """``(n,)``: single gap values ascending, seconds."""
        self._cum = np.concatenate(([0], np.cumsum(self._counts[order])))
        """``(n + 1,) int64``: gaps among the ``i`` smallest single values."""
        self._runs = _Runs.build(lines, ints)
        self.count = int(self._cum[-1]) + int(self._runs.total.sum())
        """Gaps in all."""

    @classmethod
    def from_parts(cls, values_s: np.ndarray, counts: np.ndarray, run_lines: np.ndarray,
                   run_ints: np.ndarray) -> InterTokenGaps:
        """From :meth:`sim.engine.Simulator.itl_parts`'s four arrays.

        Args:
            values_s: ``(n,) float64``: single gaps, seconds.
            counts: ``(n,) int64``: how many times each occurs (``>= 0``).
            run_lines: ``(m, 4) float64``: per decode run ``(a, s, f, c)``, seconds:
                iteration ``j`` lasted ``max(f, a + s * j) + c``, ``s >= 0``.
            run_ints: ``(m, 3) int64``: per decode run ``(k, seqs, first)``: iterations,
                gaps each of iterations ``1..k-1`` ends, gaps iteration 0 ends.
        """
        return cls(values_s, counts, run_lines, run_ints)

    @classmethod
    def from_simulator(cls, sim) -> InterTokenGaps:
        """The gaps ``sim`` (a :class:`~sim.engine.Simulator` with ``record_itl``) recorded."""
        return cls(*sim.itl_parts())

    def __repr__(self) -> str:
        return (f"InterTokenGaps(count={self.count}, singles={self._values.size}, "
                f"runs={self._runs.size})")

    # ---- statistics ---------------------------------------------------------------------------
    def mean_s(self) -> float:
        """Mean gap, seconds (NaN when there is none).

        Per run ``first * t_0 + seqs * sum_{j=1}^{k-1} t_j``: the floor segment (``a + s j <
        f``, the first ``ceil((f - a) / s)`` iterations) sums to a count times ``f + c``, the
        rest to a count times ``c`` plus the mean of its end points on the line.
        """
        if not self.count:
            return float("nan")
        r = self._runs
        total = float(np.dot(self._values, self._counts.astype(np.float64)))
        if r.size:
            with np.errstate(divide="ignore", invalid="ignore"):
                jf = np.where(r.a < r.f, np.ceil((r.f - r.a) * r.inv_s), 0.0)
            jf = np.fmin(np.fmax(jf, 1.0), r.k).astype(np.int64)  # floor ends before jf (>= 1)
            n_floor = jf - 1  # floor iterations among 1..k-1
            n_line = r.k - jf  # line iterations jf..k-1
            line_mid = 0.5 * ((r.a + r.s * jf) + (r.a + r.s * (r.k - 1)))
            rest = n_floor * r.fc + np.where(n_line > 0, n_line * (line_mid + r.c), 0.0)
            t0 = np.maximum(r.f, r.a) + r.c
            total += float(np.sum(r.first * t0 + r.seqs * rest))
        return total / self.count

    def count_le(self, x_s) -> np.ndarray:
        """Gaps lasting ``<= x`` for each ``x`` of ``x_s`` (seconds, any shape).

        Each run is evaluated only at the points between its shortest and its longest gap
        (the others take all or none of it), in chunks of bounded memory.

        Returns:
            int64, the shape of ``x_s``.
        """
        x = np.asarray(x_s, np.float64)
        xs, inv = np.unique(x.ravel(), return_inverse=True)
        out = self._cum[np.searchsorted(self._sorted, xs, side="right")]
        r = self._runs
        if r.size and xs.size:
            g_lo = np.searchsorted(xs, r.tmin, side="left")  # points below: none of the run
            g_hi = np.searchsorted(xs, r.tmax, side="right")  # points from here: all of it
            full = np.bincount(g_hi, weights=r.total, minlength=xs.size + 1)
            out += np.rint(np.cumsum(full[:-1])).astype(np.int64)  # exact below 2**53 gaps
            pairs = g_hi - g_lo
            ends = np.cumsum(pairs)
            start = 0
            while start < r.size:  # runs in chunks of about _CHUNK_PAIRS pairs
                base = ends[start - 1] if start else 0
                stop = max(int(np.searchsorted(ends, base + _CHUNK_PAIRS, side="right")),
                           start + 1)
                p = pairs[start:stop]
                if (n := int(p.sum())):
                    run = np.repeat(np.arange(start, stop), p)
                    g = g_lo[run] + np.arange(n) - np.repeat(ends[start:stop] - p - base, p)
                    part = r.take(run).gaps_le(xs[g])
                    out += np.rint(np.bincount(g, weights=part, minlength=xs.size)
                                   ).astype(np.int64)
                start = stop
        return out[inv].reshape(x.shape)

    def cdf(self, x_s) -> np.ndarray:
        """Share of gaps lasting ``<= x`` for each ``x`` of ``x_s`` (seconds, any shape).

        Returns:
            float64, the shape of ``x_s`` (NaN when there is no gap).
        """
        c = self.count_le(x_s)
        return c / self.count if self.count else np.full(c.shape, np.nan)

    def cdf_points(self, num: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """Points of the CDF to plot: ``(x_s, share)``, both ``(<= num,) float64``.

        The distinct gap values when the expansion holds at most ``num`` of them, else
        ``num`` points from the shortest to the longest gap, log-spaced (gaps span
        iteration times of milliseconds to hand-overs and recomputes of seconds; evenly
        spaced if the shortest is 0); empty when there is no gap.
        """
        if not self.count:
            return np.zeros(0), np.zeros(0)
        if self._values.size + int(self._runs.k.sum()) <= num:
            x = np.unique(self.expand()[0])
        else:
            lo, hi = self.min_s(), self.max_s()
            x = np.geomspace(lo, hi, num) if lo > 0 else np.linspace(lo, hi, num)
        return x, self.cdf(x)

    def min_s(self) -> float:
        """Shortest gap, seconds (NaN when there is none)."""
        return self._bound(np.min, "tmin")

    def max_s(self) -> float:
        """Longest gap, seconds (NaN when there is none)."""
        return self._bound(np.max, "tmax")

    def _bound(self, op, col: str) -> float:
        if not self.count:
            return float("nan")
        return float(op(np.concatenate([self._sorted, getattr(self._runs, col)])))

    def kth_s(self, r: int) -> float:
        """The ``r``-th smallest gap (0-based, ``0 <= r < count``), seconds, exactly.

        Bisection on the float64 values between the shortest and the longest gap (ordered
        by bit pattern): the answer is the smallest value with more than ``r`` gaps
        ``<= value``. Runs that lie wholly below or above the bracket are settled and dropped
        as it narrows.
        """
        return float(self._kth(r))

    def _kth(self, r: int) -> np.float64:
        if not 0 <= r < self.count:
            raise ValueError(f"rank {r} out of range for {self.count} gaps")
        lo, hi = _key(self.min_s()), _key(self.max_s())
        runs, base = self._runs, 0  # base: gaps of runs dropped as wholly below the bracket
        while lo < hi:
            low, high = _value(lo), _value(hi)
            below, above = runs.tmax <= low, runs.tmin > high
            drop = below | above
            if drop.sum() * 8 > runs.size:  # compact when it pays
                base += int(runs.total[below].sum())
                runs = runs.compress(~drop)
            mid = lo + (hi - lo) // 2
            v = _value(mid)
            c = base + int(self._cum[np.searchsorted(self._sorted, v, side="right")])
            if runs.size:
                c += int(runs.gaps_le(v).sum())
            if c > r:
                hi = mid
            else:
                lo = mid + 1
        return _value(lo)

    def percentile_s(self, p: float) -> float:
        """``p``-th percentile of the gaps, seconds (NaN when there is no gap).

        ``np.percentile``'s linear method, ``p`` in [0, 100]: equals
        :func:`sim.metrics.weighted_percentile` of :meth:`expand` exactly. Finds the lower
        rank by :meth:`kth_s`, the next larger gap (when the upper rank differs) in one pass.
        """
        if not 0 <= p <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {p}")
        if not self.count:
            return float("nan")
        lo, hi, g = linear_rank(self.count, p)
        a = self._kth(lo)
        if hi == lo or self.count_le_scalar(a) > hi:
            b = a
        else:  # the next larger gap value
            i = np.searchsorted(self._sorted, a, side="right")
            b = min(self._sorted[i] if i < self._sorted.size else np.inf,
                    self._runs.next_above(a) if self._runs.size else np.inf)
        return lerp(a, b, g)

    def count_le_scalar(self, x: float) -> int:
        """Gaps lasting ``<= x`` seconds."""
        c = int(self._cum[np.searchsorted(self._sorted, x, side="right")])
        return c + (int(self._runs.gaps_le(x).sum()) if self._runs.size else 0)

    # ---- expansion ----------------------------------------------------------------------------
    def expand(self) -> tuple[np.ndarray, np.ndarray]:
        """``(gaps_s, counts)`` as :meth:`sim.engine.Simulator.itl_gaps` gives them.

        Same values in the same order: one entry per single value and per run iteration
        ending a gap, ``(n + sum k,)`` at most. O(iterations) memory: for tests and small
        runs.
        """
        vals, cnts = [self._values], [self._counts]
        r = self._runs
        if r.size:
            run = np.repeat(np.arange(r.size), r.k)
            starts = np.cumsum(r.k) - r.k
            j = np.arange(run.size, dtype=np.int64) - starts[run]
            vals.append(np.maximum(r.f[run], r.a[run] + r.s[run] * j) + r.c[run])
            w = r.seqs[run]
            w[starts] = r.first
            cnts.append(w)
        v, w = np.concatenate(vals), np.concatenate(cnts)
        keep = w > 0
        return v[keep], w[keep]
