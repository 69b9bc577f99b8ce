"""Replay real vLLM serving runs in the simulator and report the latency errors.

``python -m experiments.fidelity_vllm_runs [--data-root DIR] [--out DIR]`` reads every run
under ``<data-root>/vllm_runs/llmservingsim/<GPU>/<model>/vllm/`` (300 ShareGPT requests at
~10 req/s, exact output lengths, vLLM 0.19 V1 with chunked prefill, prefix caching, CUDA graphs
and async scheduling), builds a single-instance cluster with the run's engine arguments
(``max_num_seqs``, ``max_num_batched_tokens``, TP; the KV block count vLLM reported when the
run recorded it, else the memory model's; async scheduling as the run's resolved config records
it, ``scheduler_config.async_scheduling``, else vLLM's default for the run's version: on from
0.14 except with pipeline parallelism, per vLLM 0.14's release notes), replays the
arrivals, and compares mean/p50/p90/p99 TTFT, TPOT and E2E with the measured ones.
``--async-scheduling on|off`` overrides the recorded setting for every run.

Clocks: vLLM stamps ``queued_ts`` when the engine core next polls its input queue, i.e. at
the end of the step in flight when the request arrived. The simulator makes a request wait
for the step in flight itself, so the replay starts each request at its arrival on the
engine's monotonic clock: ``arrival_time`` (wall clock) plus the run's smallest
``queued_ts - arrival_time`` (the clock offset; the request that waited least). TTFT = first
token - arrival, E2E = last token - arrival, TPOT = (last - first) / (output - 1), on both
sides. (``--anchor queued`` uses ``queued_ts`` as arrival, as this script did before.)
ITL (pooled inter-token gaps) cannot be checked: the runs record only first and last token times.

The Qwen3-30B-A3B run used data parallel 2 with expert parallelism: each GPU holds 64 of the
128 experts and runs every rank's routed tokens through them (vLLM's all-gather /
reduce-scatter dispatch), and the two ranks step in lock-step. By default (``--ep-mode group``)
it is replayed as the run's engine arguments say, ``InstanceConfig(data_parallel_size=2,
enable_expert_parallel=True)``: one simulated instance with both ranks' slots, token budgets and
KV blocks, timed by
:class:`~sim.perf.analytic.ExpertParallelGroupBackend` (each step lasts as long as the busiest
rank: its own attention and dense layers, its experts over every rank's tokens, so a prefill
on one rank slows the other's decodes). One queue for both ranks approximates vLLM's DP load
balancer. ``--ep-mode replicas`` replays two independent replicas behind join-shortest-queue,
each timed as an EP rank assuming the other carries the same batch (no coupling);
``--ep-mode none`` two independent replicas holding every expert.

The table prints, per run, the relative error of each statistic, then the median |error| over
runs and statistics per metric (all four statistics, and mean/p90/p99 only). One calibration
is fitted on these runs (the streaming factor of ``conf/calibration/gddr_no_ecc.yaml``, on the
single-GPU runs' decode iterations), so the same table follows with every run replayed under
that factor refitted without it (leave-one-out; ``--no-loo`` skips it). The multi-GPU runs'
collectives (TP all-reduce, EP all-gather / reduce-scatter) use the calibration's
``allreduce_pcie_eff``, fitted to a two-GPU NCCL microbenchmark of the same card
(:data:`sim.perf.measurements.PCIE_ALLREDUCE_RTXPRO6000_2GPU`), not to these runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from sim.catalog import get_gpu, get_model
from sim.engine import ClusterConfig, SimConfig, Simulator
from sim.engine.placement import make_backend_for
from sim.instance import InstanceConfig
from sim.metrics import records
from sim.perf import AnalyticBackend, KernelParams, fit, load_kernel_params
from sim.perf.measurements import VLLM_RUN_GPU as GPU_NAMES
from sim.perf.measurements import VLLM_RUN_MODEL as MODEL_NAMES
from sim.perf.measurements import default_data_root
from sim.routers import make_router
from sim.workload import Workload

STATS = ("mean", "p50", "p90", "p99")
EP_MODES = ("group", "replicas", "none")
ASYNC_MODES = ("recorded", "on", "off")
METRICS = ("ttft_s", "tpot_s", "e2e_s")


def load_run(run_dir: Path, anchor: str = "arrival") -> tuple[pd.DataFrame, dict]:
    """Requests with ``arrival_s`` (from the run's start), ``ttft_s``, ``tpot_s``, ``e2e_s``.

    Also returns the run's meta.json; ``anchor`` is ``arrival`` (engine-clock arrival) or
    ``queued`` (see the module docstring).
    """
    meta = json.loads((run_dir / "vllm" / "meta.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "vllm" / "requests.jsonl").open()]
    df = pd.DataFrame(rows)
    if anchor == "arrival":
        offset = (df.queued_ts - df.arrival_time).min()
        df["arrive_ts"] = df.arrival_time + offset
    elif anchor == "queued":
        df["arrive_ts"] = df.queued_ts
    else:
        raise ValueError(f"anchor must be 'arrival' or 'queued', got {anchor!r}")
    df = df.sort_values("arrive_ts").reset_index(drop=True)
    df["arrival_s"] = df.arrive_ts - df.arrive_ts.min()
    df["ttft_s"] = df.first_token_ts - df.arrive_ts
    df["e2e_s"] = df.last_token_ts - df.arrive_ts
    df["tpot_s"] = (df.last_token_ts - df.first_token_ts) / (df.output_toks - 1).clip(lower=1)
    return df, meta


ASYNC_DEFAULT_SINCE = (0, 14)
"""vLLM version from which async scheduling is on by default (0.14.0 release notes: "Async
scheduling is now enabled by default", pipeline parallelism excluded)."""


def recorded_async_scheduling(meta: dict) -> bool:
    """Whether the run scheduled asynchronously.

    ``scheduler_config.async_scheduling`` of the run's resolved vLLM config when recorded (the
    RTX 4090 run records ``true`` without asking for it); otherwise vLLM's default for the
    run's ``vllm_version``: on from 0.14 unless ``pipeline_parallel_size`` > 1; off when the
    version is unknown.
    """
    sched = (meta.get("resolved_config") or {}).get("scheduler_config") or {}
    if "async_scheduling" in sched:
        return bool(sched["async_scheduling"])
    try:
        version = tuple(int(x) for x in str(meta.get("vllm_version", "")).split(".")[:2])
    except ValueError:
        return False
    pp = int((meta.get("engine_kwargs") or {}).get("pipeline_parallel_size") or 1)
    return len(version) == 2 and version >= ASYNC_DEFAULT_SINCE and pp == 1


def _stats(v: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(v)), "p50": float(np.percentile(v, 50)),
            "p90": float(np.percentile(v, 90)), "p99": float(np.percentile(v, 99))}


def replay(run_dir: Path, engine: str = "vllm_v1", anchor: str = "arrival",
           ep_mode: str = "group", kernel_params: KernelParams | None = None,
           async_mode: str = "recorded") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate one run; returns (real requests, simulated records).

    ``ep_mode`` says how a DP + expert-parallel run is replayed (see the module docstring):
    ``group`` (one instance for the lock-stepped ranks), ``replicas`` (independent DP
    replicas, each timed as an EP rank) or ``none`` (independent replicas holding every
    expert). ``kernel_params`` replaces the GPU's calibration (leave-one-out refits).
    ``async_mode``: async scheduling as ``recorded`` in the run's meta.json, or ``on``/``off``.
    """
    if ep_mode not in EP_MODES:
        raise ValueError(f"ep_mode must be one of {', '.join(EP_MODES)}, got {ep_mode!r}")
    if async_mode not in ASYNC_MODES:
        raise ValueError(f"async_mode must be one of {', '.join(ASYNC_MODES)}, got "
                         f"{async_mode!r}")
    real, meta = load_run(run_dir, anchor)
    kw = meta["engine_kwargs"]
    gpu = get_gpu(GPU_NAMES[run_dir.parent.name])
    model = get_model(MODEL_NAMES[run_dir.name])
    blocks = (meta.get("kv_cache") or {}).get("num_gpu_blocks") or 0  # per rank
    tp = int(kw.get("tensor_parallel_size") or 1)
    dp = int(kw.get("data_parallel_size") or 1)
    ep = dp if dp > 1 and kw.get("enable_expert_parallel") and model.is_moe else 1
    group = ep > 1 and ep_mode == "group"
    # group: one instance for the lock-stepped ranks (InstanceConfig's expert-parallel fields:
    # per-rank limits and KV blocks, pooled x ep by the simulator); otherwise dp replicas
    inst = InstanceConfig(
        tensor_parallel_size=tp,
        max_num_seqs=int(kw["max_num_seqs"]),
        max_num_batched_tokens=int(kw["max_num_batched_tokens"]),
        max_model_len=int(kw.get("max_model_len") or 0),
        num_gpu_blocks_override=int(blocks),
        replicas=1 if group else dp,
        data_parallel_size=ep if group else 1,
        enable_expert_parallel=group,
        async_scheduling=(recorded_async_scheduling(meta) if async_mode == "recorded"
                          else async_mode == "on"),
    )
    wl = Workload(arrival_s=real.arrival_s.to_numpy(), prompt_tokens=real.input_toks.to_numpy(),
                  output_tokens=real.output_toks.to_numpy(), name=run_dir.name)
    cluster = ClusterConfig(num_nodes=1, gpus_per_node=8, instances=[inst])
    router = make_router("join_shortest_queue")
    sim_cfg = SimConfig(engine=engine)
    sim = Simulator(model, gpu, cluster, sim_cfg, wl, router)
    # EP ranks replayed as independent replicas have no instance type: their backend is
    # swapped in here, as is a refitted calibration
    if ep > 1 and ep_mode == "replicas":
        backend = AnalyticBackend(model, gpu, tp=tp, engine=engine, ep=ep,
                                  kernel_params=kernel_params)
        sim.backends = [backend for _ in sim.backends]
    elif kernel_params is not None:
        backend = make_backend_for(model, gpu, inst.resolved(gpu.memory_gib, gpu.name),
                                   sim_cfg, kernel_params)
        sim.backends = [backend for _ in sim.backends]
    sim.run()
    return real, records(sim.entered_requests())


def leave_one_out_params(data_root: Path, run: str, engine: str = "vllm_v1"
                         ) -> tuple[KernelParams | None, float | None]:
    """The GPU calibration of ``run`` refitted without that run's own measurements.

    Only the ``gddr_no_ecc`` streaming factor is fitted on these runs
    (:func:`sim.perf.fit.fit_gddr_no_ecc`; the RTX 4090's ``rtx_4090`` calibration shares it
    and adds GEMM efficiencies fitted to an operator profile, not to the runs); runs whose
    measurements it does not use (other calibrations, TP > 1, DP) get ``(None, None)``: the
    stored fit is already blind to them.
    """
    gpu = get_gpu(GPU_NAMES[run.split("/")[0]])
    if gpu.calibration not in {fit.GDDR_NO_ECC, *fit.CARD_GEMM_CALIBRATIONS}:
        return None, None
    rows = fit.gddr_no_ecc_rows(data_root)
    if run not in set(rows.run):
        return None, None
    a40 = load_kernel_params("a40")
    card_gemm = fit.fit_card_gemm(a40)
    factor = fit.fit_gddr_no_ecc(rows[rows.run != run], a40, engine, card_gemm)
    stored = load_kernel_params(gpu.calibration)
    kps = fit.gddr_calibrations(a40, factor, stored.allreduce_pcie_eff, card_gemm)
    return kps[gpu.calibration], factor


def compare(data_root: Path, engine: str = "vllm_v1", anchor: str = "arrival",
            ep_mode: str = "group", leave_one_out: bool = False,
            async_mode: str = "recorded") -> pd.DataFrame:
    """One row per (run, metric, statistic): measured, simulated, relative error.

    With ``leave_one_out`` every run is simulated with the calibration refitted without it
    (column ``loo_factor`` holds the refitted GDDR factor, NaN where nothing was refitted).
    """
    base = Path(data_root) / "vllm_runs" / "llmservingsim"
    rows = []
    for run_dir in sorted(p.parent for p in base.glob("*/*/vllm")):
        name = f"{run_dir.parent.name}/{run_dir.name}"
        kp, factor = (leave_one_out_params(data_root, name, engine) if leave_one_out
                      else (None, None))
        real, sim = replay(run_dir, engine, anchor, ep_mode, kp, async_mode)
        for metric in METRICS:
            ms, ss = _stats(real[metric].to_numpy()), _stats(sim[metric].dropna().to_numpy())
            for st in STATS:
                rows.append({"run": name, "metric": metric, "stat": st,
                             "measured_s": ms[st], "simulated_s": ss[st],
                             "rel_error": ss[st] / ms[st] - 1,
                             "loo_factor": np.nan if factor is None else factor})
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> str:
    """Per-run error table (percent) and the median |error| per metric."""
    wide = table.pivot_table(index=["run", "metric"], columns="stat", values="rel_error")
    lines = [(wide[list(STATS)] * 100).round(1).to_string(), ""]
    for label, stats in (("mean/p50/p90/p99", STATS), ("mean/p90/p99", ("mean", "p90", "p99"))):
        sub = table[table.stat.isin(stats)]
        med = sub.groupby("metric").rel_error.apply(lambda s: s.abs().median()) * 100
        lines.append(f"median |error| over runs x {label}: "
                     + ", ".join(f"{m} {med[m]:.1f}%" for m in METRICS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print the comparison table and write it as CSV."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=default_data_root())
    ap.add_argument("--engine", default="vllm_v1", help="engine profile in conf/engine")
    ap.add_argument("--anchor", default="arrival", choices=("arrival", "queued"),
                    help="request start on the engine clock (see module docstring)")
    ap.add_argument("--ep-mode", default="group", choices=EP_MODES,
                    help="how the DP + expert-parallel run is replayed (module docstring)")
    ap.add_argument("--async-scheduling", default="recorded", choices=ASYNC_MODES,
                    help="async scheduling per run: as recorded in meta.json (else vLLM's "
                         "default for the run's version), or on/off for every run")
    ap.add_argument("--no-loo", action="store_true", help="skip the leave-one-out replays")
    ap.add_argument("--out", type=Path, default=Path("results/fidelity_vllm_runs"))
    args = ap.parse_args(argv)
    table = compare(args.data_root, args.engine, args.anchor, args.ep_mode,
                    async_mode=args.async_scheduling)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "comparison.csv", index=False)
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(summarise(table))
        if not args.no_loo:
            loo = compare(args.data_root, args.engine, args.anchor, args.ep_mode,
                          leave_one_out=True, async_mode=args.async_scheduling)
            loo.to_csv(args.out / "comparison_leave_one_out.csv", index=False)
            factors = loo.dropna(subset=["loo_factor"]).groupby("run").loo_factor.first()
            print("\nleave-one-out (the GDDR streaming factor refitted without the run: "
                  + ", ".join(f"{r} {f:.3f}" for r, f in factors.items()) + ")")
            print(summarise(loo))


if __name__ == "__main__":
    from sim.catalog._load import run_cli

    run_cli(main)
