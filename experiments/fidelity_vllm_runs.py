"""Replay real vLLM serving runs in the simulator and report the latency errors.

``python -m experiments.fidelity_vllm_runs [--data-root DIR] [--out DIR]`` reads every run
under ``<data-root>/vllm_runs/llmservingsim/<GPU>/<model>/vllm/`` (300 ShareGPT requests at
~10 req/s, exact output lengths, vLLM 0.19 V1 with chunked prefill and prefix caching), builds
a single-instance cluster with the run's engine arguments (``max_num_seqs``,
``max_num_batched_tokens``, TP; the KV block count vLLM reported when the run recorded it,
else the memory model's), replays the arrivals, and compares mean/p50/p90/p99 TTFT, TPOT
and E2E with the measured ones. Times are taken on the engine's clock: arrival =
``queued_ts``, TTFT = first token - queued, E2E = last token - queued, TPOT = (last - first)
/ (output - 1).

The Qwen3-30B-A3B run used data parallel 2 with expert parallelism; it is replayed as two
TP1 replicas behind join-shortest-queue, an approximation (each replica holds all experts).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from sim.catalog import get_gpu, get_model
from sim.engine import ClusterConfig, SimConfig, Simulator
from sim.instance import InstanceConfig
from sim.metrics import records
from sim.perf.measurements import default_data_root
from sim.routers import make_router
from sim.workload import Workload

GPU_NAMES = {"RTX4090": "RTX-4090", "RTXPRO6000": "RTX-PRO-6000"}
MODEL_NAMES = {"Llama-3.1-8B": "Llama-3.1-8B", "Qwen3-32B": "Qwen3-32B",
               "Qwen3-30B-A3B-Instruct-2507": "Qwen3-30B-A3B"}
STATS = ("mean", "p50", "p90", "p99")


def load_run(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    """Requests (with ttft_s, tpot_s, e2e_s on the engine clock) and the run's meta.json."""
    meta = json.loads((run_dir / "vllm" / "meta.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "vllm" / "requests.jsonl").open()]
    df = pd.DataFrame(rows).sort_values("queued_ts").reset_index(drop=True)
    t0 = df.queued_ts.min()
    df["arrival_s"] = df.queued_ts - t0
    df["ttft_s"] = df.first_token_ts - df.queued_ts
    df["e2e_s"] = df.last_token_ts - df.queued_ts
    df["tpot_s"] = (df.last_token_ts - df.first_token_ts) / (df.output_toks - 1).clip(lower=1)
    return df, meta


def _stats(v: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(v)), "p50": float(np.percentile(v, 50)),
            "p90": float(np.percentile(v, 90)), "p99": float(np.percentile(v, 99))}


def replay(run_dir: Path, engine: str = "vllm_v1") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate one run; returns (real requests, simulated records)."""
    real, meta = load_run(run_dir)
    kw = meta["engine_kwargs"]
    gpu = get_gpu(GPU_NAMES[run_dir.parent.name])
    model = get_model(MODEL_NAMES[run_dir.name])
    blocks = (meta.get("kv_cache") or {}).get("num_gpu_blocks") or 0
    inst = InstanceConfig(
        tensor_parallel_size=int(kw.get("tensor_parallel_size") or 1),
        max_num_seqs=int(kw["max_num_seqs"]),
        max_num_batched_tokens=int(kw["max_num_batched_tokens"]),
        max_model_len=int(kw.get("max_model_len") or 0),
        num_gpu_blocks_override=int(blocks),
        replicas=int(kw.get("data_parallel_size") or 1),
    )
    wl = Workload(arrival_s=real.arrival_s.to_numpy(), prompt_tokens=real.input_toks.to_numpy(),
                  output_tokens=real.output_toks.to_numpy(), name=run_dir.name)
    cluster = ClusterConfig(num_nodes=1, gpus_per_node=8, instances=[inst])
    router = make_router("join_shortest_queue")
    sim = Simulator(model, gpu, cluster, SimConfig(engine=engine), wl, router)
    sim.run()
    return real, records(sim.entered_requests())


def compare(data_root: Path, engine: str = "vllm_v1") -> pd.DataFrame:
    """One row per (run, metric, statistic): measured, simulated, relative error."""
    base = Path(data_root) / "vllm_runs" / "llmservingsim"
    rows = []
    for run_dir in sorted(p.parent for p in base.glob("*/*/vllm")):
        real, sim = replay(run_dir, engine)
        for metric in ("ttft_s", "tpot_s", "e2e_s"):
            ms, ss = _stats(real[metric].to_numpy()), _stats(sim[metric].dropna().to_numpy())
            for st in STATS:
                rows.append({"run": f"{run_dir.parent.name}/{run_dir.name}", "metric": metric,
                             "stat": st, "measured_s": ms[st], "simulated_s": ss[st],
                             "rel_error": ss[st] / ms[st] - 1})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    """Print the comparison table and write it as CSV."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=default_data_root())
    ap.add_argument("--engine", default="vllm_v1", help="engine profile in conf/engine")
    ap.add_argument("--out", type=Path, default=Path("results/fidelity_vllm_runs"))
    args = ap.parse_args(argv)
    table = compare(args.data_root, args.engine)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "comparison.csv", index=False)
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        wide = table.pivot_table(index=["run", "metric"], columns="stat", values="rel_error")
        print((wide[list(STATS)] * 100).round(1).to_string())
    med = table.groupby("metric").rel_error.apply(lambda s: s.abs().median())
    print("\nmedian |error| over runs and statistics:", (med * 100).round(1).to_dict())


if __name__ == "__main__":
    from sim.catalog._load import run_cli

    run_cli(main)
