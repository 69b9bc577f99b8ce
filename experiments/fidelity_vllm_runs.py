"""Replay real vLLM serving runs in the simulator and report the latency errors.

``python -m experiments.fidelity_vllm_runs [--data-root DIR] [--runs DIR] [--out DIR]`` reads
every run under ``--runs`` (any folder holding ``<run>/vllm/meta.json`` and
``<run>/vllm/requests.jsonl`` at any depth, or one run folder; default ``<data-root>/vllm_runs``,
whose four runs (``llmservingsim/<GPU>/<model>``) are 300 ShareGPT requests at ~10 req/s,
exact output lengths, vLLM 0.19 V1 with chunked prefill, prefix caching, CUDA graphs and async
scheduling). The GPU comes from the CUDA device name the run recorded (else its cluster file's
hardware label, else the parent folder's name) and the model from its repo id, both matched to
the catalog (:mod:`sim.catalog.resolve`; ``--gpu`` / ``--model`` override; a run with no
catalog match is skipped with the reason printed). It builds a single-instance cluster with the
run's ``vllm serve`` settings (engine arguments, else the resolved config, else vLLM's
defaults: TP, PP, ``max_num_seqs``, ``max_num_batched_tokens``, chunked prefill, prefix
caching, block size; the KV block count vLLM reported when the run recorded it, else the memory
model's; async scheduling as the resolved config records it,
``scheduler_config.async_scheduling``, else vLLM's default for the run's version: on from 0.14
except with pipeline parallelism, per vLLM 0.14's release notes), replays the arrivals, and
compares mean/p50/p90/p99 TTFT, TPOT and E2E with the measured ones, and ITL (inter-token
latency pooled over every gap, as ``vllm bench serve`` reports it): its mean always (exact from
first/last token times: a request's gaps sum to last - first), its percentiles when the run
recorded every gap (``itls`` / ``itl`` per request, or the tokens' times ``token_ts``).
``--async-scheduling on|off`` overrides the recorded setting for every run.

Clocks: vLLM stamps ``queued_ts`` when the engine core next polls its input queue, i.e. at
the end of the step in flight when the request arrived. The simulator makes a request wait
for the step in flight itself, so the replay starts each request at its arrival on the
engine's monotonic clock: ``arrival_time`` (wall clock) plus the run's smallest
``queued_ts - arrival_time`` (the clock offset; the request that waited least). TTFT = first
token - arrival, E2E = last token - arrival, TPOT = (last - first) / (output - 1), on both
sides. (``--anchor queued`` uses ``queued_ts`` as arrival, as this script did before.)
The runs in ../shared record only first and last token times: their ITL percentiles cannot be
checked, only the mean.

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

from sim.catalog import CatalogError, get_gpu, get_model
from sim.engine import ClusterConfig, SimConfig, Simulator
from sim.engine.placement import make_backend_for
from sim.instance import InstanceConfig
from sim.metrics import records, weighted_percentile
from sim.perf import AnalyticBackend, KernelParams, fit, load_kernel_params
from sim.perf.measurements import default_data_root, vllm_run_identity
from sim.routers import make_router
from sim.workload import Workload

STATS = ("mean", "p50", "p90", "p99")
EP_MODES = ("group", "replicas", "none")
ASYNC_MODES = ("recorded", "on", "off")
METRICS = ("ttft_s", "tpot_s", "e2e_s", "itl_s")
ITL_KEYS = ("itl", "itls")
"""Per-request fields holding a request's inter-token gaps, seconds (``vllm bench serve``'s
detailed results call them ``itls``)."""
TOKEN_TS_KEYS = ("token_ts", "token_timestamps", "output_token_ts")
"""Per-request fields holding the times its output tokens arrived (gaps are their diffs)."""


REQUIRED_FIELDS = ("input_toks", "output_toks", "queued_ts", "first_token_ts", "last_token_ts")
"""Fields every line of a run's ``requests.jsonl`` has (token times may be null: failed)."""


def load_run(run_dir: Path, anchor: str = "arrival") -> tuple[pd.DataFrame, dict]:
    """Requests with ``arrival_s`` (from the run's start), ``ttft_s``, ``tpot_s``, ``e2e_s``.

    Also returns the run's meta.json; ``anchor`` is ``arrival`` (engine-clock arrival) or
    ``queued`` (see the module docstring; ``queued`` when the run has no ``arrival_time``).
    A request without token times (it failed in the real run) keeps its arrival, so the
    replay carries its load, with NaN latencies.

    Raises:
        ValueError: naming the file and the missing fields.
    """
    meta = json.loads((run_dir / "vllm" / "meta.json").read_text())
    path = run_dir / "vllm" / "requests.jsonl"
    rows = [json.loads(line) for line in path.open() if line.strip()]
    df = pd.DataFrame(rows)
    missing = [c for c in REQUIRED_FIELDS if c not in df]
    if missing or df.empty:
        raise ValueError(f"{path}: {'no requests' if df.empty else 'missing fields'} "
                         f"{', '.join(missing)}; each line needs {', '.join(REQUIRED_FIELDS)} "
                         "(and arrival_time for --anchor arrival)")
    if anchor == "arrival" and ("arrival_time" not in df or df.arrival_time.isna().any()):
        anchor = "queued"  # no client clock recorded: the engine's queue time is the arrival
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
    df.attrs["itl_gaps_s"] = _recorded_itl(rows)
    return df, meta


def _recorded_itl(rows: list[dict]) -> np.ndarray | None:
    """Every inter-token gap the run recorded, pooled, seconds; None when it recorded none.

    The runs in ../shared record only first and last token times; a run that also saved the
    gaps (``itl`` / ``itls``) or the tokens' times (``token_ts``...) gets them pooled here.
    """
    gaps = []
    for row in rows:
        for key in ITL_KEYS:
            if row.get(key) is not None:
                gaps.append(np.asarray(row[key], dtype=np.float64))
                break
        else:
            for key in TOKEN_TS_KEYS:
                if row.get(key) is not None:
                    gaps.append(np.diff(np.asarray(row[key], dtype=np.float64)))
                    break
    return np.concatenate(gaps) if gaps else None


def pooled_itl_mean(first_s: np.ndarray, last_s: np.ndarray, outputs: np.ndarray) -> float:
    """Mean inter-token gap pooled over requests, seconds (``vllm bench serve``'s mean ITL).

    A request's gaps sum to its last - first token time, so the pooled mean is exactly
    ``sum(last - first) / sum(outputs - 1)`` over requests with two or more outputs: first
    and last token times suffice.
    """
    keep = (outputs > 1) & np.isfinite(first_s) & np.isfinite(last_s)
    n = float(np.sum(outputs[keep] - 1))
    return float(np.sum(last_s[keep] - first_s[keep]) / n) if n else float("nan")


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


def _setting(meta: dict, name: str, section: str, default=None):
    """An engine setting: the run's engine arguments, else its resolved config, else default.

    ``section`` names the part of vLLM's resolved config that holds it (``scheduler_config``).
    """
    value = (meta.get("engine_kwargs") or {}).get(name)
    if value is None:
        value = ((meta.get("resolved_config") or {}).get(section) or {}).get(name)
    return default if value is None else value


def _expert_parallel(meta: dict, model) -> int:
    """The run's expert-parallel degree: its DP size with expert parallelism on an MoE model."""
    dp = int(_setting(meta, "data_parallel_size", "parallel_config", 1))
    on = _setting(meta, "enable_expert_parallel", "parallel_config", False)
    return dp if dp > 1 and on and model.is_moe else 1


def instance_for_run(meta: dict, model, ep_mode: str = "group",
                     async_mode: str = "recorded") -> InstanceConfig:
    """The simulated instance of a run: its ``vllm serve`` settings as recorded.

    Engine arguments first, then vLLM's resolved config, then vLLM's defaults (0 limits are
    resolved per GPU by the simulator); the KV block count vLLM reported (per rank) when the
    run recorded it. A DP + expert-parallel MoE run is one instance (``ep_mode`` group) or
    ``dp`` replicas (see the module docstring).
    """
    kv = meta.get("kv_cache") or {}
    tp = int(_setting(meta, "tensor_parallel_size", "parallel_config", 1))
    pp = int(_setting(meta, "pipeline_parallel_size", "parallel_config", 1))
    dp = int(_setting(meta, "data_parallel_size", "parallel_config", 1))
    ep = _expert_parallel(meta, model)
    group = ep > 1 and ep_mode == "group"
    chunked = _setting(meta, "enable_chunked_prefill", "scheduler_config")
    if chunked is None:
        chunked = _setting(meta, "chunked_prefill_enabled", "scheduler_config", True)
    caching = _setting(meta, "enable_prefix_caching", "cache_config",
                       kv.get("enable_prefix_caching", True))
    # group: one instance for the lock-stepped ranks (InstanceConfig's expert-parallel fields:
    # per-rank limits and KV blocks, pooled x ep by the simulator); otherwise dp replicas
    return InstanceConfig(
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        max_num_seqs=int(_setting(meta, "max_num_seqs", "scheduler_config", 0)),
        max_num_batched_tokens=int(_setting(meta, "max_num_batched_tokens",
                                            "scheduler_config", 0)),
        max_model_len=int(_setting(meta, "max_model_len", "model_config", 0)),
        enable_chunked_prefill=bool(chunked),
        enable_prefix_caching=bool(caching),
        block_size=int(kv.get("block_size") or _setting(meta, "block_size", "cache_config", 16)),
        gpu_memory_utilization=float(kv.get("gpu_memory_utilization") or _setting(
            meta, "gpu_memory_utilization", "cache_config", 0.9)),
        long_prefill_token_threshold=int(_setting(meta, "long_prefill_token_threshold",
                                                  "scheduler_config", 0)),
        num_gpu_blocks_override=int(kv.get("num_gpu_blocks") or 0),  # per rank
        replicas=1 if group else dp,
        data_parallel_size=ep if group else 1,
        enable_expert_parallel=group,
        async_scheduling=(recorded_async_scheduling(meta) if async_mode == "recorded"
                          else async_mode == "on"),
    )


def replay(run_dir: Path, engine: str = "vllm_v1", anchor: str = "arrival",
           ep_mode: str = "group", kernel_params: KernelParams | None = None,
           async_mode: str = "recorded", gpu: str | None = None,
           model: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate one run; returns (real requests, simulated records).

    ``ep_mode`` says how a DP + expert-parallel run is replayed (see the module docstring):
    ``group`` (one instance for the lock-stepped ranks), ``replicas`` (independent DP
    replicas, each timed as an EP rank) or ``none`` (independent replicas holding every
    expert). ``kernel_params`` replaces the GPU's calibration (leave-one-out refits).
    ``async_mode``: async scheduling as ``recorded`` in the run's meta.json, or ``on``/``off``.
    ``gpu`` / ``model``: catalog (or device / repo) names overriding what the run records
    (:func:`sim.perf.measurements.vllm_run_identity`). When the run recorded every
    inter-token gap, the records' ``attrs["itl_gaps"]`` holds the simulated ones
    (:meth:`sim.engine.Simulator.itl_gaps`).
    """
    if ep_mode not in EP_MODES:
        raise ValueError(f"ep_mode must be one of {', '.join(EP_MODES)}, got {ep_mode!r}")
    if async_mode not in ASYNC_MODES:
        raise ValueError(f"async_mode must be one of {', '.join(ASYNC_MODES)}, got "
                         f"{async_mode!r}")
    real, meta = load_run(run_dir, anchor)
    gpu_name, model_name = vllm_run_identity(run_dir, gpu, model)
    gpu_spec, model_spec = get_gpu(gpu_name), get_model(model_name)
    inst = instance_for_run(meta, model_spec, ep_mode, async_mode)
    wl = Workload(arrival_s=real.arrival_s.to_numpy(), prompt_tokens=real.input_toks.to_numpy(),
                  output_tokens=real.output_toks.to_numpy(), name=run_dir.name)
    cluster = ClusterConfig(num_nodes=1, gpus_per_node=max(8, inst.num_gpus_per_rank
                                                           * inst.data_parallel_size),
                            instances=[inst])
    router = make_router("join_shortest_queue")
    sim_cfg = SimConfig(engine=engine, record_itl=real.attrs.get("itl_gaps_s") is not None)
    sim = Simulator(model_spec, gpu_spec, cluster, sim_cfg, wl, router)
    # EP ranks replayed as independent replicas have no instance type: their backend is
    # swapped in here, as is a refitted calibration
    ep = _expert_parallel(meta, model_spec)
    if ep > 1 and ep_mode == "replicas":
        backend = AnalyticBackend(model_spec, gpu_spec, tp=inst.tensor_parallel_size,
                                  engine=engine, ep=ep, kernel_params=kernel_params)
        sim.backends = [backend for _ in sim.backends]
    elif kernel_params is not None:
        backend = make_backend_for(model_spec, gpu_spec,
                                   inst.resolved(gpu_spec.memory_gib, gpu_spec.name),
                                   sim_cfg, kernel_params)
        sim.backends = [backend for _ in sim.backends]
    sim.run()
    out = records(sim.entered_requests())
    if sim_cfg.record_itl:
        out.attrs["itl_gaps"] = sim.itl_gaps()
    return real, out


def leave_one_out_params(data_root: Path, run: str, engine: str = "vllm_v1",
                         run_dir: Path | None = None, gpu: str | None = None
                         ) -> tuple[KernelParams | None, float | None]:
    """The GPU calibration of ``run`` refitted without that run's own measurements.

    Only the ``gddr_no_ecc`` streaming factor is fitted on the runs under ``data_root``
    (:func:`sim.perf.fit.fit_gddr_no_ecc`; the RTX 4090's ``rtx_4090`` calibration shares it
    and adds GEMM efficiencies fitted to an operator profile, not to the runs); runs whose
    measurements it does not use (other calibrations, TP > 1, DP, runs from elsewhere) get
    ``(None, None)``: the stored fit is already blind to them. ``run_dir`` defaults to
    ``<data_root>/vllm_runs/llmservingsim/<run>``.
    """
    if run_dir is None:
        run_dir = Path(data_root) / "vllm_runs" / "llmservingsim" / run
    gpu_spec = get_gpu(vllm_run_identity(run_dir, gpu)[0])
    if gpu_spec.calibration not in {fit.GDDR_NO_ECC, *fit.CARD_GEMM_CALIBRATIONS}:
        return None, None
    if not (Path(data_root) / "vllm_runs").exists():
        return None, None
    rows = fit.gddr_no_ecc_rows(data_root)
    if run not in set(rows.run):
        return None, None
    a40 = load_kernel_params("a40")
    card_gemm = fit.fit_card_gemm(a40)
    factor = fit.fit_gddr_no_ecc(rows[rows.run != run], a40, engine, card_gemm)
    stored = load_kernel_params(gpu_spec.calibration)
    kps = fit.gddr_calibrations(a40, factor, stored.allreduce_pcie_eff, card_gemm)
    return kps[gpu_spec.calibration], factor


def find_runs(root: Path) -> list[Path]:
    """Run folders under ``root`` (each holds ``vllm/meta.json`` and ``vllm/requests.jsonl``).

    ``root`` may be one run folder itself; found at any depth, sorted.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no run folder at {root}; pass --runs (a folder holding "
                                "<run>/vllm/meta.json and requests.jsonl) or --data-root")
    runs = sorted({p.parent.parent for p in root.rglob("meta.json") if p.parent.name == "vllm"
                   and (p.parent / "requests.jsonl").exists()})
    if not runs:
        raise FileNotFoundError(f"no real vLLM run under {root}: expected <run>/vllm/meta.json "
                                "and <run>/vllm/requests.jsonl")
    return runs


def _itl_stats(real: pd.DataFrame, sim_records: pd.DataFrame) -> dict:
    """Measured and simulated ITL statistics: the mean always, percentiles when recorded."""
    out = {"mean": (
        pooled_itl_mean(real.first_token_ts.to_numpy(), real.last_token_ts.to_numpy(),
                        real.output_toks.to_numpy()),
        pooled_itl_mean(sim_records.first_token_s.to_numpy(), sim_records.finish_s.to_numpy(),
                        sim_records.output_tokens.to_numpy()))}
    gaps = real.attrs.get("itl_gaps_s")
    if gaps is not None and len(gaps):
        values, counts = sim_records.attrs["itl_gaps"]
        for st, p in (("p50", 50), ("p90", 90), ("p99", 99)):
            out[st] = (float(np.percentile(gaps, p)), weighted_percentile(values, counts, p))
    return out


def compare(data_root: Path, engine: str = "vllm_v1", anchor: str = "arrival",
            ep_mode: str = "group", leave_one_out: bool = False,
            async_mode: str = "recorded", runs: Path | None = None,
            gpu: str | None = None, model: str | None = None,
            skipped: list[str] | None = None) -> pd.DataFrame:
    """One row per (run, metric, statistic): measured, simulated, relative error.

    Runs are found under ``runs`` (default ``<data_root>/vllm_runs``; see :func:`find_runs`)
    and named ``<parent folder>/<run folder>`` (their path below ``runs`` if that repeats).
    Metrics: TTFT, TPOT, E2E (mean, p50, p90, p99) and ITL (pooled mean from first/last token
    times; percentiles only for runs that recorded every token). With ``leave_one_out`` every
    run is simulated with the calibration refitted without it (column ``loo_factor`` holds the
    refitted GDDR factor, NaN where nothing was refitted). ``gpu`` / ``model`` override what
    the runs record.

    A run whose GPU or model has no catalog entry raises, unless ``skipped`` is a list: then
    ``"<run>: <reason>"`` is appended to it and the other runs go on.
    """
    base = Path(runs) if runs is not None else Path(data_root) / "vllm_runs"
    found = find_runs(base)
    short = [f"{d.parent.name}/{d.name}" for d in found]  # <GPU>/<model>, as the fits name runs
    names = short if len(set(short)) == len(short) else [
        d.relative_to(base).as_posix() if d != base else s for d, s in zip(found, short,
                                                                          strict=True)]
    rows = []
    for run_dir, name in zip(found, names, strict=True):
        try:
            kp, factor = (leave_one_out_params(data_root, name, engine, run_dir, gpu)
                          if leave_one_out else (None, None))
            real, simulated = replay(run_dir, engine, anchor, ep_mode, kp, async_mode, gpu,
                                     model)
        except CatalogError as exc:
            if skipped is None:
                raise CatalogError(f"run {name}: {exc}") from None
            skipped.append(f"{name}: {exc}")
            continue
        # requests that failed in the real run (no token times) were replayed for their load
        # but are compared on neither side
        ok = (real.first_token_ts.notna() & real.last_token_ts.notna()).to_numpy()
        if not ok.all():
            keep_attrs = real.attrs, simulated.attrs
            simulated = simulated[ok[simulated.rid.to_numpy()]]
            real = real[ok]
            real.attrs, simulated.attrs = keep_attrs
        pairs = {m: (_stats(real[m].to_numpy()), _stats(simulated[m].dropna().to_numpy()))
                 for m in METRICS if m != "itl_s"}
        itl = _itl_stats(real, simulated)
        pairs["itl_s"] = ({st: v[0] for st, v in itl.items()}, {st: v[1] for st, v in itl.items()})
        for metric in METRICS:
            ms, ss = pairs[metric]
            for st in STATS:
                if st not in ms:
                    continue
                rows.append({"run": name, "metric": metric, "stat": st,
                             "measured_s": ms[st], "simulated_s": ss[st],
                             "rel_error": ss[st] / ms[st] - 1,
                             "loo_factor": np.nan if factor is None else factor})
    if not rows:
        raise CatalogError("no run could be replayed:\n  " + "\n  ".join(skipped or []))
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> str:
    """Per-run error table (percent) and the median |error| per metric."""
    wide = table.pivot_table(index=["run", "metric"], columns="stat", values="rel_error")
    wide = wide.reindex(columns=list(STATS))
    lines = [(wide * 100).round(1).to_string(), ""]
    for label, stats in (("mean/p50/p90/p99", STATS), ("mean/p90/p99", ("mean", "p90", "p99"))):
        sub = table[table.stat.isin(stats)]
        med = sub.groupby("metric").rel_error.apply(lambda s: s.abs().median()) * 100
        lines.append(f"median |error| over runs x {label}: "
                     + ", ".join(f"{m} {med[m]:.1f}%" for m in METRICS if m in med))
    if not (table.metric == "itl_s").groupby(table.stat).any().get("p90", False):
        lines.append("(ITL: the pooled mean only, from first/last token times; no run recorded "
                     "every token's time)")
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
    ap.add_argument("--runs", type=Path, default=None,
                    help="folder of real runs (<run>/vllm/meta.json + requests.jsonl at any "
                         "depth, or one run folder); default <data-root>/vllm_runs")
    ap.add_argument("--gpu", default=None,
                    help="catalog GPU for every run (default: the device each run records)")
    ap.add_argument("--model", default=None,
                    help="catalog model for every run (default: the repo id each run records)")
    ap.add_argument("--no-loo", action="store_true", help="skip the leave-one-out replays")
    ap.add_argument("--out", type=Path, default=Path("results/fidelity_vllm_runs"))
    args = ap.parse_args(argv)
    skipped: list[str] = []
    where = {"runs": args.runs, "gpu": args.gpu, "model": args.model, "skipped": skipped}
    table = compare(args.data_root, args.engine, args.anchor, args.ep_mode,
                    async_mode=args.async_scheduling, **where)
    for line in skipped:
        print(f"skipped {line}")
    where["skipped"] = []  # (reported once)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "comparison.csv", index=False)
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(summarise(table))
        if not args.no_loo:
            loo = compare(args.data_root, args.engine, args.anchor, args.ep_mode,
                          leave_one_out=True, async_mode=args.async_scheduling, **where)
            loo.to_csv(args.out / "comparison_leave_one_out.csv", index=False)
            factors = loo.dropna(subset=["loo_factor"]).groupby("run").loo_factor.first()
            if factors.empty:
                print("\nleave-one-out: no run was part of the fitted calibration (same table)")
                return
            print("\nleave-one-out (the GDDR streaming factor refitted without the run: "
                  + ", ".join(f"{r} {f:.3f}" for r, f in factors.items()) + ")")
            print(summarise(loo))


if __name__ == "__main__":
    from sim.catalog._load import run_cli

    run_cli(main)
