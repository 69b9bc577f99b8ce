"""Evaluate routing policies on held-out workloads: attainment curves, goodput, latencies, CIs.

For each workload and each held-out seed a workload of ``num_requests`` requests is drawn
once; every policy then serves that same workload at every rate multiplier of the grid (the
same arrivals compressed in time), with the same output-length prediction noise. Per (policy,
workload, seed):

* ``goodput`` -- the highest arrival rate whose joint SLO attainment stays >= the target,
  found on the rate grid and interpolated linearly at the first crossing (censored at the grid's
  ends: 0 below its first rate, the last rate if never crossed; both flagged);
* ``goodput_per_gpu`` -- goodput / GPUs of the cluster;
* at the reference rate (multiplier 1): attainment and p50/p90/p99 TTFT and TPOT.

Across seeds: means with 95% Student-t intervals, and for each policy its paired relative
goodput difference to the best heuristic (the heuristic with the highest mean goodput on that
workload), so a claim "beats the best heuristic by x%" carries an interval over seeds.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from policies.heuristics import HEURISTICS
from sim.catalog import GpuSpec, ModelSpec
from sim.engine import ClusterConfig, SimConfig, Simulator
from sim.metrics import SLO, records, summarize
from sim.workload import Workload, WorkloadConfig, build_workload

logger = logging.getLogger(__name__)
PolicyFactory = Callable[[], Callable]
"""Builds a fresh router ``(view, request) -> Decision`` (with ``reset()``)."""


@dataclass
class EvalConfig:
    """Held-out evaluation (group ``eval`` of ``train.py``)."""

    seeds: list[int] = field(default_factory=lambda: [101, 102, 103, 104, 105])
    """Workload seeds; disjoint from training's episode streams (those come from train.seed)."""
    num_requests: int = 1000
    """Requests per evaluation workload."""
    rate_scales: list[float] = field(
        default_factory=lambda: [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0])
    """Multipliers of the workload's arrival rate (the goodput grid), ascending."""
    heuristics: list[str] = field(default_factory=lambda: [
        "round_robin", "least_loaded", "join_shortest_queue", "vllm_dp", "distserve",
        "dynaserve", "random"])
    """Heuristics compared with the learned policy (names of ``policies.heuristics``)."""

    def __post_init__(self) -> None:
        if len(set(self.seeds)) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"eval.seeds = {self.seeds} must hold at least two distinct seeds "
                             "(intervals over seeds need two)")
        if not self.heuristics:
            raise ValueError("eval.heuristics is empty; name at least one heuristic to compare")
        if isinstance(self.num_requests, bool) or int(self.num_requests) < 2:
            raise ValueError(f"eval.num_requests = {self.num_requests!r} must be >= 2")
        rs = [float(x) for x in self.rate_scales]
        if not rs or any(x <= 0 for x in rs) or sorted(rs) != rs or len(set(rs)) != len(rs):
            raise ValueError(f"eval.rate_scales = {self.rate_scales} must be positive and "
                             "strictly ascending")
        if 1.0 not in rs:
            raise ValueError("eval.rate_scales must include 1.0 (the reference rate)")
        bad = [h for h in self.heuristics if h not in HEURISTICS]
        if bad:
            raise ValueError(f"eval.heuristics {bad} unknown; choose from {', '.join(HEURISTICS)}")


@dataclass
class Scenario:
    """The cluster every policy is evaluated on."""

    model: ModelSpec
    hardware: GpuSpec
    cluster: ClusterConfig
    sim: SimConfig
    slo: SLO


def goodput_from_curve(rates: np.ndarray, attainment: np.ndarray,
                       target: float) -> tuple[float, str]:
    """Highest rate with attainment >= target on an ascending grid (linear interpolation).

    Returns:
        ``(rate, flag)``: flag is ``""``, ``"below_grid"`` (missed at the lowest rate: 0) or
        ``"above_grid"`` (met at every rate: the highest rate, a lower bound).
    """
    ok = attainment >= target
    if not ok[0]:
        return 0.0, "below_grid"
    if ok.all():
        return float(rates[-1]), "above_grid"
    k = int(np.argmin(ok))  # first miss; k - 1 met
    r0, r1, a0, a1 = rates[k - 1], rates[k], attainment[k - 1], attainment[k]
    return float(r0 + (a0 - target) / (a0 - a1) * (r1 - r0)), ""


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t interval ``(mean, lo, hi)``; NaN interval for one value."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return m, m - half, m + half


def run_policy(scn: Scenario, workload: Workload, router, pred_seed: int) -> dict:
    """Serve ``workload`` with ``router`` once; returns the run summary."""
    rng = np.random.default_rng(pred_seed)
    sim = Simulator(scn.model, scn.hardware, scn.cluster, scn.sim, workload, router, rng)
    sim.run()
    df = records(sim.entered_requests())
    return summarize(df, scn.slo, scn.cluster.num_gpus_used(),
                     num_not_entered=len(workload) - sim.num_entered)


def evaluate(scn: Scenario, workloads: dict[str, WorkloadConfig],
             policies: dict[str, PolicyFactory], cfg: EvalConfig,
             progress: Callable[[int, int, str], None] | None = None) -> pd.DataFrame:
    """Run every policy on every workload, seed and rate; one row per run.

    Columns: policy, workload, seed, rate_scale, rate_per_s, slo_attainment, ttft/tpot
    percentiles, counts, wall_s. ``progress(done, total, label)`` is called after each
    (workload, seed, policy).
    """
    rows = []
    total = len(workloads) * len(cfg.seeds) * len(policies)
    done = 0
    for wname, wcfg in workloads.items():
        for seed in cfg.seeds:
            ss = np.random.SeedSequence([int(seed), 7919])
            wl_seed, pred_seed = (int(s.generate_state(1)[0]) for s in ss.spawn(2))
            base = build_workload(_with_requests(wcfg, cfg.num_requests),
                                  np.random.default_rng(wl_seed))
            for pname, factory in policies.items():
                for scale in cfg.rate_scales:
                    wl = base.scale_rate(scale)
                    t0 = time.perf_counter()
                    s = run_policy(scn, wl, factory(), pred_seed)
                    rows.append({
                        "policy": pname, "workload": wname, "seed": seed,
                        "rate_scale": scale, "rate_per_s": wl.rate_per_s,
                        "wall_s": time.perf_counter() - t0,
                        **{k: v for k, v in s.items() if not isinstance(v, dict)}})
                done += 1
                if progress:
                    progress(done, total, f"{wname} seed {seed} {pname}")
    return pd.DataFrame(rows)


def _with_requests(wcfg: WorkloadConfig, n: int) -> WorkloadConfig:
    from dataclasses import replace

    if wcfg.kind == "trace":
        return replace(wcfg, max_requests=n)
    return replace(wcfg, num_requests=n, max_requests=None)


def goodput_table(runs: pd.DataFrame, target: float, num_gpus: int) -> pd.DataFrame:
    """Goodput per (policy, workload, seed) from the rate grid."""
    rows = []
    for (p, w, s), g in runs.groupby(["policy", "workload", "seed"], sort=False):
        g = g.sort_values("rate_scale")
        rate, flag = goodput_from_curve(g.rate_per_s.to_numpy(), g.slo_attainment.to_numpy(),
                                        target)
        rows.append({"policy": p, "workload": w, "seed": s, "goodput_req_per_s": rate,
                     "goodput_per_gpu": rate / num_gpus, "censored": flag})
    return pd.DataFrame(rows)


def summary_table(runs: pd.DataFrame, goodput: pd.DataFrame, learned: str | None,
                  heuristics: list[str]) -> pd.DataFrame:
    """Per (workload, policy): means and 95% CIs over seeds; paired gain vs best heuristic."""
    rows = []
    ref = runs[runs.rate_scale == 1.0]
    for w in goodput.workload.unique():
        gw = goodput[goodput.workload == w]
        means = gw.groupby("policy").goodput_per_gpu.mean()
        cand = [h for h in heuristics if h in means.index]
        best = max(cand, key=lambda h: means[h]) if cand else None
        best_by_seed = gw[gw.policy == best].set_index("seed").goodput_per_gpu if best else None
        for p in gw.policy.unique():
            gp = gw[gw.policy == p].set_index("seed").goodput_per_gpu
            m, lo, hi = mean_ci(gp.to_numpy())
            rp = ref[(ref.workload == w) & (ref.policy == p)]
            row = {"workload": w, "policy": p, "learned": p == learned,
                   "goodput_per_gpu": m, "goodput_per_gpu_ci_lo": lo,
                   "goodput_per_gpu_ci_hi": hi,
                   "censored_seeds": int((gw[gw.policy == p].censored != "").sum())}
            am, alo, ahi = mean_ci(rp.slo_attainment.to_numpy())
            row.update(attainment_at_ref=am, attainment_ci_lo=alo, attainment_ci_hi=ahi)
            for col in ("ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_p50_s", "tpot_p90_s",
                        "tpot_p99_s"):
                row[col] = float(rp[col].mean()) if col in rp else float("nan")
            if best is not None:
                common = gp.index.intersection(best_by_seed.index)
                base = best_by_seed[common].to_numpy()
                with np.errstate(divide="ignore", invalid="ignore"):
                    gain = np.where(base > 0, (gp[common].to_numpy() - base) / base, np.nan)
                gain = gain[np.isfinite(gain)]  # undefined where the best heuristic has 0
                gm, glo, ghi = mean_ci(gain) if gain.size else (np.nan,) * 3
                row.update(best_heuristic=best, gain_vs_best=gm, gain_ci_lo=glo, gain_ci_hi=ghi)
            rows.append(row)
    return pd.DataFrame(rows).sort_values(["workload", "goodput_per_gpu"],
                                          ascending=[True, False])


def plot_results(runs: pd.DataFrame, summary: pd.DataFrame, target: float, num_gpus: int,
                 out: Path) -> list[Path]:
    """Attainment-vs-rate curves and goodput bars per workload; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for w in summary.workload.unique():
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
        rw = runs[runs.workload == w]
        for p, g in rw.groupby("policy", sort=False):
            c = g.groupby("rate_scale").agg(rate=("rate_per_s", "mean"),
                                            att=("slo_attainment", "mean"))
            ax1.plot(c.rate / num_gpus, c.att, "o-", ms=3, label=p,
                     lw=2.5 if p in set(summary[summary.learned].policy) else 1)
        ax1.axhline(target, color="r", ls="--", lw=0.8)
        ax1.set_xlabel("arrival rate per GPU (req/s)")
        ax1.set_ylabel("SLO attainment (mean over seeds)")
        ax1.set_ylim(0, 1.02)
        ax1.grid(alpha=0.3)
        ax1.legend(fontsize=7)
        sw = summary[summary.workload == w]
        err = np.vstack([sw.goodput_per_gpu - sw.goodput_per_gpu_ci_lo,
                         sw.goodput_per_gpu_ci_hi - sw.goodput_per_gpu])
        colors = ["tab:orange" if x else "tab:blue" for x in sw.learned]
        ax2.bar(sw.policy, sw.goodput_per_gpu, yerr=np.nan_to_num(err), color=colors,
                capsize=3)
        ax2.set_ylabel("goodput per GPU (req/s), 95% CI")
        ax2.tick_params(axis="x", rotation=30, labelsize=8)
        ax2.grid(alpha=0.3, axis="y")
        fig.suptitle(f"workload {w}")
        fig.tight_layout()
        path = out / f"eval_{w}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(runs: pd.DataFrame, goodput: pd.DataFrame, summary: pd.DataFrame,
                 out: Path, *, title: str, target: float, num_gpus: int, notes: list[str]) -> Path:
    """Write runs.csv, goodput.csv, summary.csv, plots and report.md to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / "runs.csv", index=False)
    goodput.to_csv(out / "goodput.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    plots = plot_results(runs, summary, target, num_gpus, out)
    lines = [f"# {title}", ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", "How to read: goodput per GPU is the highest arrival rate per GPU at which at "
              f"least {target:.0%} of requests meet both the TTFT and TPOT SLOs (rate grid, "
              "linear interpolation); intervals are 95% Student-t over held-out seeds; "
              "`gain vs best` is the paired per-seed relative goodput difference to the "
              "heuristic with the best mean goodput on that workload. Latency percentiles and "
              "attainment are at the reference rate (multiplier 1).", ""]
    for w in summary.workload.unique():
        sw = summary[summary.workload == w]
        lines += [f"## Workload `{w}`", "",
                  "| policy | goodput/GPU (req/s) [95% CI] | gain vs best heuristic [95% CI] "
                  "| attainment @ref | TTFT p50/p90/p99 (s) | TPOT p50/p90/p99 (s) |",
                  "|---|---|---|---|---|---|"]
        for r in sw.itertuples():
            name = f"**{r.policy}**" if r.learned else r.policy
            cens = f" ({r.censored_seeds} censored)" if r.censored_seeds else ""
            gain = (f"{r.gain_vs_best:+.1%} [{r.gain_ci_lo:+.1%}, {r.gain_ci_hi:+.1%}]"
                    if hasattr(r, "gain_vs_best") and not math.isnan(r.gain_vs_best) else "")
            lines.append(
                f"| {name} | {r.goodput_per_gpu:.3f} [{r.goodput_per_gpu_ci_lo:.3f}, "
                f"{r.goodput_per_gpu_ci_hi:.3f}]{cens} | {gain} | {r.attainment_at_ref:.3f} | "
                f"{r.ttft_p50_s:.3f} / {r.ttft_p90_s:.3f} / {r.ttft_p99_s:.3f} | "
                f"{r.tpot_p50_s:.4f} / {r.tpot_p90_s:.4f} / {r.tpot_p99_s:.4f} |")
        lines += ["", f"![{w}](eval_{w}.png)", ""]
    lines += ["Files: `runs.csv` (every run), `goodput.csv` (per seed), `summary.csv` (this "
              "table), " + ", ".join(f"`{p.name}`" for p in plots) + "."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
