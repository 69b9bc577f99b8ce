"""Run one simulation, a rate sweep or a goodput search from a typed config, and write results.

This is what ``simulate.py`` calls after Hydra composes the config. Outputs (in ``out_dir``):
``records.csv`` (one row per request), ``summary.json``, ``latency_cdf.png``; for sweeps also
``sweep.csv`` and ``attainment_vs_rate.png``; for goodput searches ``goodput.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from omegaconf import MISSING

from sim.catalog import GpuSpec, ModelSpec
from sim.engine import ClusterConfig, SimConfig, Simulator
from sim.engine.itl import InterTokenGaps
from sim.metrics import SLO, goodput_search, plot_attainment_curve, plot_cdfs, records, summarize
from sim.routers import ROUTERS, make_router
from sim.workload import Workload, WorkloadConfig, build_workload

logger = logging.getLogger(__name__)
SWEEP_MODES = ("single", "rates", "goodput")


@dataclass
class RouterConfig:
    """Which built-in router places requests (Hydra group ``router``)."""

    name: str = "round_robin"
    """One of ``sim.routers.ROUTERS``."""
    seed: int = 0
    """Seed for randomised routers."""

    def __post_init__(self) -> None:
        if self.name not in ROUTERS:
            raise ValueError(f"router.name {self.name!r} is not one of {', '.join(ROUTERS)}")


@dataclass
class SweepConfig:
    """What to run: one simulation, a list of rate scales, or a goodput search."""

    mode: str = "single"
    """single, rates (one run per ``rate_scales`` entry) or goodput (bisection on rate)."""
    rate_scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0])
    """Multipliers of the workload's arrival rate (mode=rates)."""
    lo_rate_per_s: float = 0.25
    """Goodput search: a rate expected to meet the target, req/s for the whole cluster."""
    hi_rate_per_s: float = 4.0
    """Goodput search: first upper bracket, req/s (doubled until attainment fails)."""
    rel_tol: float = 0.03
    """Goodput search: stop when the bracket is this tight (relative)."""

    def __post_init__(self) -> None:
        if self.mode not in SWEEP_MODES:
            raise ValueError(f"sweep.mode {self.mode!r} is not one of {', '.join(SWEEP_MODES)}")
        if any(s <= 0 for s in self.rate_scales):
            raise ValueError(f"sweep.rate_scales must be > 0, got {self.rate_scales}")
        if not 0 < self.lo_rate_per_s < self.hi_rate_per_s:
            raise ValueError("sweep needs 0 < lo_rate_per_s < hi_rate_per_s, got "
                             f"{self.lo_rate_per_s}, {self.hi_rate_per_s}")


@dataclass
class SimulateConfig:
    """Everything ``simulate.py`` needs (one Hydra group per field)."""

    model: ModelSpec = MISSING
    """Model served by every instance (group ``model``)."""
    hardware: GpuSpec = MISSING
    """GPU type of the cluster (group ``hardware``)."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Nodes and instances (group ``cluster``)."""
    workload: WorkloadConfig = MISSING
    """Arrivals and lengths or a trace (group ``workload``)."""
    slo: SLO = field(default_factory=SLO)
    """TTFT/TPOT objectives (group ``slo``)."""
    router: RouterConfig = field(default_factory=RouterConfig)
    """Routing policy (group ``router``)."""
    sim: SimConfig = field(default_factory=SimConfig)
    """Backend and run options (group ``sim``)."""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    """Single run, rate sweep or goodput search."""
    seed: int = 0
    """Root seed: workload sampling and prediction noise derive from it."""


def _rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    ss = np.random.SeedSequence(seed)
    w, p = ss.spawn(2)
    return np.random.default_rng(w), np.random.default_rng(p)


def simulate_once(cfg: SimulateConfig, workload: Workload):
    """Run one simulation of ``workload``.

    Returns:
        ``(records DataFrame, summary dict, inter-token gaps)``, the gaps an
        :class:`~sim.engine.itl.InterTokenGaps` (compact, as recorded: exact count, mean,
        percentiles and CDF without expanding; ``.expand()`` gives
        :meth:`sim.engine.Simulator.itl_gaps`'s ``(gaps_s, counts)``).
    """
    _, pred_rng = _rngs(cfg.seed)
    router = make_router(cfg.router.name, **({"seed": cfg.router.seed}
                                               if cfg.router.name == "random" else {}))
    t0 = time.perf_counter()
    sim_cfg = replace(cfg.sim, record_itl=True)  # the summary reports ITL
    sim = Simulator(cfg.model, cfg.hardware, cfg.cluster, sim_cfg, workload, router, pred_rng)
    sim.run()
    wall = time.perf_counter() - t0
    df = records(sim.entered_requests())
    itl = InterTokenGaps.from_simulator(sim)  # not expanded: O(decode runs) memory
    summary = summarize(df, cfg.slo, cfg.cluster.num_gpus_used(),
                        num_not_entered=len(workload) - sim.num_entered, itl=itl)
    summary.update(wall_s=wall, num_events=sim.num_events, num_iterations=sim.num_iterations)
    return df, summary, itl


def run_simulation(cfg: SimulateConfig, out_dir: Path | str = ".") -> dict:
    """Run what ``cfg.sweep`` asks for and write the outputs; returns the summary dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wl_rng, _ = _rngs(cfg.seed)
    workload = build_workload(cfg.workload, wl_rng)
    logger.info("workload %s: %d requests at %.3f req/s", workload.name, len(workload),
                workload.rate_per_s)
    if cfg.sweep.mode == "single":
        df, summary, itl = simulate_once(cfg, workload)
        df.to_csv(out / "records.csv", index=False)
        plot_cdfs(df, out / "latency_cdf.png", cfg.slo, itl=itl)
    elif cfg.sweep.mode == "rates":
        rows = []
        for scale in cfg.sweep.rate_scales:
            df, s, _ = simulate_once(cfg, workload.scale_rate(scale))
            rows.append({"rate_scale": scale, **{k: v for k, v in s.items()
                                                 if not isinstance(v, dict)}})
            logger.info("rate x%.2f: attainment %.3f", scale, s["slo_attainment"])
        import pandas as pd

        sweep = pd.DataFrame(rows)
        sweep.to_csv(out / "sweep.csv", index=False)
        plot_attainment_curve(list(zip(sweep.request_rate_per_s, sweep.slo_attainment,
                                       strict=True)), cfg.slo.attainment_target_frac,
                              out / "attainment_vs_rate.png", cfg.cluster.num_gpus_used())
        summary = {"sweep": rows}
    else:
        summary = goodput(cfg, workload, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def goodput(cfg: SimulateConfig, workload: Workload, out: Path) -> dict:
    """Search the highest rate meeting the attainment target; writes ``goodput.json``."""
    base = workload.rate_per_s

    def attainment(rate: float) -> float:
        _, s, _ = simulate_once(cfg, workload.scale_rate(rate / base))
        logger.info("rate %.3f req/s: attainment %.3f", rate, s["slo_attainment"])
        return s["slo_attainment"]

    rate, curve = goodput_search(attainment, cfg.slo.attainment_target_frac,
                                 cfg.sweep.lo_rate_per_s, cfg.sweep.hi_rate_per_s,
                                 cfg.sweep.rel_tol)
    gpus = cfg.cluster.num_gpus_used()
    result = {"goodput_req_per_s": rate, "goodput_per_gpu_req_per_s": rate / gpus,
              "num_gpus": gpus, "slo": asdict(cfg.slo),
              "curve": [{"rate_per_s": r, "slo_attainment": a} for r, a in curve]}
    (out / "goodput.json").write_text(json.dumps(result, indent=2))
    plot_attainment_curve(curve, cfg.slo.attainment_target_frac,
                          out / "attainment_vs_rate.png", gpus)
    return result
