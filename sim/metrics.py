"""Per-request records and run summaries: TTFT, TPOT, E2E, ITL, SLO attainment, goodput.

Definitions (DistServe's, used throughout):

* TTFT = first token - arrival; TPOT = (last token - first token) / (output - 1), 0 for a
  one-token output; E2E = last token - arrival.
* ITL (inter-token latency, as ``vllm bench serve`` reports it): every gap between two
  consecutive output tokens of a request, pooled over requests (a request of ``n`` outputs
  gives ``n - 1`` gaps, summing to its last - first token time); its mean and percentiles
  are over that pooled list, so long requests weigh more than in TPOT. The simulator keeps
  the gaps compactly (:meth:`sim.engine.Simulator.itl_parts`); their statistics come from
  :class:`sim.engine.itl.InterTokenGaps` without expanding them (or from the expanded
  ``(values, counts)`` of :meth:`~sim.engine.Simulator.itl_gaps`).
* SLO attainment = share of *all* requests that entered (completed or not) meeting both the
  TTFT and TPOT SLOs; a rejected or failed request never meets them.
* Goodput = the highest arrival rate at which attainment stays >= the target (see
  :func:`goodput_search`), per GPU when divided by the GPUs used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter

import numpy as np
import pandas as pd

from sim.engine.itl import InterTokenGaps, lerp, linear_rank
from sim.instance import REASON_TEXT, Reason, Request, RequestStatus

ItlGaps = InterTokenGaps | tuple[np.ndarray, np.ndarray]
"""A run's pooled inter-token gaps: compact (:class:`~sim.engine.itl.InterTokenGaps`) or
expanded ``(gaps_s, counts)`` (:meth:`sim.engine.Simulator.itl_gaps`)."""

RECORD_COLUMNS = (
    "rid", "arrival_s", "prompt_tokens", "output_tokens", "cached_prompt_tokens", "status",
    "reason", "lead", "follow", "split_tokens", "num_preemptions", "handover_cancelled",
    "first_scheduled_s",
    "first_token_s", "lead_done_s", "transfer_start_s", "transfer_end_s", "finish_s",
)


_RECORD_ATTRS = (
    "rid", "arrival_s", "num_prompt_tokens", "max_output_tokens", "num_cached_prompt_tokens",
    "status", "reason", "lead", "follow", "split_tokens", "num_preemptions",
    "handover_cancelled", "first_scheduled_s", "first_token_s", "lead_done_s",
    "transfer_start_s", "transfer_end_s", "finish_s",
)
"""Request attribute behind each of :data:`RECORD_COLUMNS`."""
_RECORD_GETTERS = tuple(map(attrgetter, _RECORD_ATTRS))
_RECORD_DTYPES = tuple(
    np.float64 if a.endswith("_s") else bool if a == "handover_cancelled" else np.int64
    for a in _RECORD_ATTRS
)
_STATUS_NAMES = np.array([next((s.name.lower() for s in RequestStatus if s == k), None)
                          for k in range(max(RequestStatus) + 1)], dtype=object)
"""Status code -> outcome name (codes are small ints; gaps are None)."""
_REASON_TEXTS = np.array([REASON_TEXT.get(k) for k in range(max(Reason) + 1)], dtype=object)
"""Reason code -> text."""


def records(requests: Sequence[Request]) -> pd.DataFrame:
    """One row per request that entered, with derived latencies (seconds).

    Derived columns: ``queue_s`` (arrival to first scheduled), ``prefill_s`` (first scheduled
    to first token), ``transfer_s`` (hand-over requested to KV arrived, incl. waiting for the
    Follow's blocks), ``decode_s`` (first token to last, minus transfer), ``ttft_s``,
    ``tpot_s``, ``e2e_s``; NaN where a request never got there.
    """
    n = len(requests)
    cols = {name: np.fromiter(map(get, requests), dtype, count=n)
            for name, get, dtype in zip(RECORD_COLUMNS, _RECORD_GETTERS, _RECORD_DTYPES,
                                        strict=True)}
    nan = np.nan
    for c in ("first_scheduled_s", "first_token_s", "lead_done_s", "transfer_start_s",
              "transfer_end_s"):
        x = cols[c]
        cols[c] = np.where(x >= 0, x, nan)
    done = cols["status"] == int(RequestStatus.COMPLETED)
    arrival, scheduled = cols["arrival_s"], cols["first_scheduled_s"]
    first, finish, out = cols["first_token_s"], cols["finish_s"], cols["output_tokens"]
    cols["outcome"] = _STATUS_NAMES[cols["status"]]
    cols["reason_text"] = _REASON_TEXTS[cols["reason"]]
    cols["queue_s"] = scheduled - arrival
    cols["prefill_s"] = first - scheduled
    transfer = cols["transfer_end_s"] - cols["lead_done_s"]
    transfer[np.isnan(transfer)] = 0.0
    transfer = np.where(done, transfer, nan)
    cols["transfer_s"] = transfer
    cols["ttft_s"] = np.where(done, first - arrival, nan)
    tpot = np.where(done, (finish - first) / np.maximum(out - 1, 1), nan)
    tpot[done & (out <= 1)] = 0.0
    cols["tpot_s"] = tpot
    cols["e2e_s"] = np.where(done, finish - arrival, nan)
    cols["decode_s"] = np.where(done, finish - first - transfer, nan)
    df = pd.DataFrame(cols)
    return df


@dataclass
class SLO:
    """Latency objectives and the attainment target."""

    ttft_s: float = 0.25
    """Time-to-first-token SLO, seconds."""
    tpot_s: float = 0.1
    """Time-per-output-token SLO, seconds."""
    attainment_target_frac: float = 0.9
    """Share of requests that must meet both SLOs."""

    def __post_init__(self) -> None:
        if self.ttft_s <= 0 or self.tpot_s <= 0:
            raise ValueError(f"SLOs must be > 0 seconds, got ttft_s={self.ttft_s}, "
                             f"tpot_s={self.tpot_s}")
        if not 0 < self.attainment_target_frac <= 1:
            raise ValueError("slo.attainment_target_frac must be in (0, 1], got "
                             f"{self.attainment_target_frac}")


def slo_met(df: pd.DataFrame, slo: SLO) -> np.ndarray:
    """Boolean per record: completed and within both SLOs."""
    return ((df.status == int(RequestStatus.COMPLETED)) & (df.ttft_s <= slo.ttft_s)
            & (df.tpot_s <= slo.tpot_s)).to_numpy()


def weighted_percentile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """``np.percentile(np.repeat(values, counts), q)`` (linear) without expanding.

    Args:
        values: the distinct values (any order).
        counts: how many times each occurs (integers > 0).
        q: percentile in [0, 100].
    """
    order = np.argsort(values, kind="stable")
    v = values[order]
    cum = np.cumsum(counts[order])
    lo, hi, g = linear_rank(int(cum[-1]), q)
    a, b = v[np.searchsorted(cum, [lo, hi], side="right")]
    return lerp(a, b, g)


def itl_summary(gaps: ItlGaps | None) -> dict:
    """ITL mean / p50 / p90 / p99 (seconds) and gap count.

    Keys ``num_itl_gaps``, ``itl_mean_s``, ``itl_p{50,90,99}_s`` (NaN mean and no
    percentiles when no gaps). ``gaps``: an :class:`~sim.engine.itl.InterTokenGaps`
    (percentiles exact without expanding, the mean to rounding) or ``(gaps_s, counts)`` as
    :meth:`sim.engine.Simulator.itl_gaps` returns it; the same gaps give the same count and
    percentiles either way.
    """
    if gaps is None:
        return {}
    if isinstance(gaps, InterTokenGaps):
        out = {"num_itl_gaps": gaps.count, "itl_mean_s": gaps.mean_s()}
        if gaps.count:
            for p in (50, 90, 99):
                out[f"itl_p{p}_s"] = gaps.percentile_s(p)
        return out
    v, w = (np.asarray(x) for x in gaps)
    n = int(w.sum())
    out = {"num_itl_gaps": n}
    if not n:
        out["itl_mean_s"] = float("nan")
        return out
    out["itl_mean_s"] = float(np.dot(v, w) / n)
    for p in (50, 90, 99):
        out[f"itl_p{p}_s"] = weighted_percentile(v, w, p)
    return out


def summarize(df: pd.DataFrame, slo: SLO, num_gpus: int, num_not_entered: int = 0,
              itl: ItlGaps | None = None) -> dict:
    """Headline numbers of one run (JSON-serialisable).

    Args:
        df: :func:`records` of the run.
        slo: objectives.
        num_gpus: GPUs of the cluster (for per-GPU rates).
        num_not_entered: workload requests that never arrived (time limit), reported only.
        itl: the run's pooled inter-token gaps (:class:`~sim.engine.itl.InterTokenGaps` or
            :meth:`Simulator.itl_gaps`'s ``(gaps_s, counts)``), reported as ``itl_*``
            (:func:`itl_summary`) when given.

    Returns:
        Counts by outcome (conserved: entered = completed + rejected + failed), latency
        percentiles, SLO attainment (joint and each), throughput, breakdown means.
    """
    n = len(df)
    status = df.status.to_numpy()
    counts = {s.name.lower(): int((status == int(s)).sum())
              for s in (RequestStatus.COMPLETED, RequestStatus.REJECTED, RequestStatus.FAILED)}
    assert sum(counts.values()) == n, "a request ended in a non-terminal state"
    reasons = {Reason(int(k)).name.lower(): int(v)
               for k, v in df.reason[df.reason != 0].value_counts().items()}
    done = df[status == int(RequestStatus.COMPLETED)]
    span = (df.finish_s.max() - df.arrival_s.min()) if n else 0.0
    out = {
        "num_requests": n,
        **{f"num_{k}": v for k, v in counts.items()},
        "num_not_entered": int(num_not_entered),
        "reasons": reasons,
        "duration_s": float(span),
        "request_rate_per_s": float((n - 1) / (df.arrival_s.max() - df.arrival_s.min()))
        if n > 1 and df.arrival_s.max() > df.arrival_s.min() else 0.0,
        "throughput_req_per_s": float(len(done) / span) if span > 0 else 0.0,
        "output_tokens_per_s": float(done.output_tokens.sum() / span) if span > 0 else 0.0,
        "slo_attainment": float(slo_met(df, slo).mean()) if n else 0.0,
        "ttft_attainment": float((done.ttft_s <= slo.ttft_s).sum() / n) if n else 0.0,
        "tpot_attainment": float((done.tpot_s <= slo.tpot_s).sum() / n) if n else 0.0,
        "num_gpus": int(num_gpus),
        "prefix_hit_frac": float(df.cached_prompt_tokens.sum() / max(df.prompt_tokens.sum(), 1)),
        "num_preemptions": int(df.num_preemptions.sum()),
        "num_handovers_cancelled": int(df.handover_cancelled.sum()),
    }
    for col in ("ttft_s", "tpot_s", "e2e_s", "queue_s", "prefill_s", "transfer_s", "decode_s"):
        v = done[col].dropna().to_numpy()
        name = col[:-2]
        if v.size:
            out[f"{name}_mean_s"] = float(v.mean())
            for p in (50, 90, 99):
                out[f"{name}_p{p}_s"] = float(np.percentile(v, p))
        else:
            out[f"{name}_mean_s"] = float("nan")
        if col == "e2e_s":
            out.update(itl_summary(itl))
    return out


def goodput_search(
    attainment_at: Callable[[float], float],
    target_frac: float,
    lo_rate: float,
    hi_rate: float,
    rel_tol: float = 0.02,
    max_iters: int = 20,
) -> tuple[float, list[tuple[float, float]]]:
    """Highest rate with ``attainment_at(rate) >= target_frac``, by bracketing and bisection.

    Assumes attainment falls with rate. ``hi_rate`` is doubled until attainment drops below
    the target (at most ``max_iters`` times), then the bracket is bisected to ``rel_tol``.

    Returns:
        ``(goodput_rate, [(rate, attainment), ...])`` of every evaluation, in order; goodput
        is 0 when even ``lo_rate`` misses the target.
    """
    if not 0 < lo_rate < hi_rate:
        raise ValueError(f"need 0 < lo_rate < hi_rate, got {lo_rate}, {hi_rate}")
    curve = []

    def att(rate: float) -> float:
        a = attainment_at(rate)
        curve.append((rate, a))
        return a

    if att(lo_rate) < target_frac:
        return 0.0, curve
    good, bad = lo_rate, hi_rate
    for _ in range(max_iters):
        if att(bad) < target_frac:
            break
        good, bad = bad, bad * 2
    else:
        return good, curve
    for _ in range(max_iters):
        if bad - good <= rel_tol * good:
            break
        mid = 0.5 * (good + bad)
        if att(mid) >= target_frac:
            good = mid
        else:
            bad = mid
    return good, curve


def plot_cdfs(df: pd.DataFrame, path, slo: SLO | None = None,
              itl: ItlGaps | None = None, itl_points: int = 512) -> None:
    """Write TTFT / TPOT / E2E CDFs of completed requests to ``path`` (PNG).

    With ``itl`` (:class:`~sim.engine.itl.InterTokenGaps`, or :meth:`Simulator.itl_gaps`'s
    ``(gaps_s, counts)``) a fourth panel shows the pooled inter-token gaps' CDF: from the
    compact form exact at ``itl_points`` points between the shortest and the longest gap
    (at every distinct gap when there are fewer; :meth:`InterTokenGaps.cdf_points`), from
    the expanded form at every value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = df[df.status == int(RequestStatus.COMPLETED)]
    cols = ["ttft_s", "tpot_s", "e2e_s"] + (["itl_s"] if itl is not None else [])
    lims = [slo.ttft_s if slo else None, slo.tpot_s if slo else None, None, None]
    fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3.4))
    for ax, col, lim in zip(axes, cols, lims[:len(cols)], strict=True):
        if col == "itl_s" and isinstance(itl, InterTokenGaps):
            v, share = itl.cdf_points(itl_points)
            if v.size:
                ax.plot(v, share)
        elif col == "itl_s":
            order = np.argsort(itl[0], kind="stable")
            v, c = np.asarray(itl[0])[order], np.cumsum(np.asarray(itl[1])[order])
            if v.size:
                ax.plot(v, c / c[-1])
        if col == "itl_s" and v.size and v[0] > 0:
            ax.set_xscale("log")  # iteration gaps (ms) and hand-over / recompute gaps (s)
        else:
            v = np.sort(done[col].dropna().to_numpy())
            if v.size:
                ax.plot(v, np.arange(1, v.size + 1) / v.size)
        if lim:
            ax.axvline(lim, color="r", ls="--", lw=0.8, label="SLO")
            ax.legend(fontsize=7)
        ax.set_xlabel(col.replace("_s", " (s)"))
        ax.set_ylabel("CDF")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_attainment_curve(curve: Sequence[tuple[float, float]], target: float, path,
                          num_gpus: int) -> None:
    """Attainment vs rate per GPU, with the target line, to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted(curve)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r / num_gpus for r, _ in pts], [a for _, a in pts], "o-")
    ax.axhline(target, color="r", ls="--", lw=0.8, label=f"target {target:.0%}")
    ax.set_xlabel("arrival rate per GPU (req/s)")
    ax.set_ylabel("SLO attainment")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
