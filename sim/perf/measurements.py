"""Readers for the real GPU measurements the model is fitted to and validated against.

Nothing here runs unless asked: the data lives outside the package (``../shared/data`` in the
team's checkout) and every reader takes its root folder as an argument. All times come out in
seconds, sizes in bytes, whatever the source files use (Vidur and Splitwise store ms).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from sim.catalog import CatalogError
from sim.catalog.resolve import resolve_gpu, resolve_model

DEVICE_GPU = {"a100": "A100-80GB-SXM", "h100": "H100-SXM-80GB", "a40": "A40"}
"""Vidur's device folder -> our GPU catalog name."""

SPLITWISE_GPU = {"a100-80gb": "A100-80GB-SXM", "h100-80gb": "H100-SXM-80GB"}
SPLITWISE_MODEL = {"llama2-70b": "Llama-2-70B", "bloom-176b": "BLOOM-176B"}

NETWORK_NODES = {
    # node folder -> (GPU catalog name, intra-node link: "nvlink" or "pcie")
    "a100_dgx": ("A100-80GB-SXM", "nvlink"),
    "h100_dgx": ("H100-SXM-80GB", "nvlink"),
}
"""Network profiles used for fitting; the pairwise-NVLink boxes mix NVLink and PCIe paths."""

GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
ELEMENTWISE_OPS = ("input_layernorm", "post_attention_layernorm", "attn_rope", "mlp_act", "add")
_KEYS = [
    "n_head",
    "n_kv_head",
    "n_embd",
    "n_expanded_embd",
    "vocab_size",
    "use_gated_mlp",
    "num_tokens",
    "num_tensor_parallel_workers",
]


def default_data_root() -> Path:
    """``../shared/data`` beside the repository checkout (the team's layout)."""
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def _require(path: Path) -> Path:
    if not path.exists():
        raise CatalogError(
            f"measurement data not found at {path}; pass --data-root pointing at the folder "
            "that holds vidur_profiles/ and distserve/"
        )
    return path


def load_mlp_profiles(data_root: Path) -> pd.DataFrame:
    """All Vidur ``mlp.csv`` rows: one row per (device, model, TP, tokens), medians in seconds.

    Duplicate token counts (two profiling runs concatenated) are reduced by their median.
    """
    base = _require(Path(data_root) / "vidur_profiles" / "data" / "profiling" / "compute")
    frames = []
    for f in sorted(base.glob("*/*/*/mlp.csv")):
        d = pd.read_csv(f)
        ops = [c.split(".")[1] for c in d.columns if c.endswith(".median")]
        g = d.groupby(_KEYS)[[f"time_stats.{o}.median" for o in ops]].median().reset_index()
        g.columns = [c.split(".")[1] if c.startswith("time_stats") else c for c in g.columns]
        for o in ops:
            g[o] = g[o] * 1e-3
        g["device"] = f.parts[-4]
        g["model"] = f.parts[-2]
        frames.append(g)
    return pd.concat(frames, ignore_index=True).rename(
        columns={"num_tensor_parallel_workers": "tp"}
    )


def gemm_points(mlp: pd.DataFrame) -> pd.DataFrame:
    """Long table of GEMM measurements: device, model, tp, op, m, n, k, measured_s."""
    hd = mlp.n_embd / mlp.n_head
    tp = mlp.tp
    up = mlp.n_expanded_embd * np.where(mlp.use_gated_mlp, 2, 1)
    shapes = {
        "attn_pre_proj": ((mlp.n_head + 2 * mlp.n_kv_head) * hd / tp, mlp.n_embd),
        "attn_post_proj": (mlp.n_embd, mlp.n_head * hd / tp),
        "mlp_up_proj": (up / tp, mlp.n_embd),
        "mlp_down_proj": (mlp.n_embd, mlp.n_expanded_embd / tp),
    }
    frames = []
    for op, (n, k) in shapes.items():
        frames.append(
            pd.DataFrame(
                {
                    "device": mlp.device,
                    "model": mlp.model,
                    "tp": tp,
                    "op": op,
                    "m": mlp.num_tokens.astype(float),
                    "n": n.astype(float),
                    "k": k.astype(float),
                    "measured_s": mlp[op],
                }
            )
        )
    out = pd.concat(frames, ignore_index=True)
    return out[out.measured_s > 0].reset_index(drop=True)


def elementwise_points(mlp: pd.DataFrame, dtype_bytes: int = 2) -> pd.DataFrame:
    """Long table of elementwise-kernel measurements with the bytes each moves."""
    m = mlp.num_tokens.astype(float)
    h = mlp.n_embd.astype(float)
    hd = h / mlp.n_head
    ffn = mlp.n_expanded_embd / mlp.tp
    act_in = ffn * np.where(mlp.use_gated_mlp, 2, 1)
    moved = {
        "input_layernorm": 2 * m * h,
        "post_attention_layernorm": 2 * m * h,
        "add": 3 * m * h,
        "mlp_act": m * (act_in + ffn),
        "attn_rope": 2 * m * (mlp.n_head + mlp.n_kv_head) * hd / mlp.tp,
    }
    frames = []
    for op, elems in moved.items():
        frames.append(
            pd.DataFrame(
                {
                    "device": mlp.device,
                    "model": mlp.model,
                    "tp": mlp.tp,
                    "op": op,
                    "bytes": elems * dtype_bytes,
                    "measured_s": mlp[op],
                }
            )
        )
    out = pd.concat(frames, ignore_index=True)
    return out[out.measured_s > 0].reset_index(drop=True)


def load_attention(data_root: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The one recovered A100 attention profile.

    Returns:
        ``(prefill, decode, heads)``: prefill rows with ``new_tokens, ctx_tokens, measured_s``;
        decode rows with ``batch_size, ctx_tokens, measured_s`` (each sequence attends to
        ``ctx_tokens``); ``heads`` with per-GPU ``num_q_heads, num_kv_heads, head_dim``.
    """
    path = _require(
        Path(data_root)
        / "vidur_profiles/historical/acb95f6c/data/profiling/a100/attention.csv"
    )
    d = pd.read_csv(path).drop_duplicates()
    tp = int(d.num_tensor_parallel_workers.iloc[0])
    heads = {
        "num_q_heads": int(d.n_q_head.iloc[0]) // tp,
        "num_kv_heads": int(d.n_kv_head.iloc[0]) // tp,
        "head_dim": int(d.n_embd.iloc[0]) // int(d.n_q_head.iloc[0]),
    }
    p = d[d.is_prefill]
    prefill = pd.DataFrame(
        {
            "new_tokens": p.prefill_chunk_size.astype(float),
            "ctx_tokens": p.kv_cache_size.astype(float),
            "measured_s": p["time_stats.attn_prefill.median"] * 1e-3,
        }
    ).reset_index(drop=True)
    q = d[~d.is_prefill]
    decode = pd.DataFrame(
        {
            "batch_size": q.batch_size.astype(float),
            "ctx_tokens": q.kv_cache_size.astype(float),
            "measured_s": q["time_stats.attn_decode.median"] * 1e-3,
        }
    ).reset_index(drop=True)
    return prefill, decode, heads


def load_network(data_root: Path) -> pd.DataFrame:
    """All-reduce and send/recv timings of the DGX nodes: one row per (collective, group, size).

    Columns: node, gpu, collective, num_workers, devices_per_node, size_bytes, measured_s.
    """
    base = _require(Path(data_root) / "vidur_profiles" / "data" / "profiling" / "network")
    frames = []
    for node, (gpu, _link) in NETWORK_NODES.items():
        for coll in ("all_reduce", "send_recv"):
            f = base / node / f"{coll}.csv"
            if not f.exists():
                continue
            d = pd.read_csv(f)
            g = (
                d.groupby(["num_workers", "devices_per_node", "size"])[
                    f"time_stats.{coll}.median"
                ]
                .median()
                .reset_index()
            )
            frames.append(
                pd.DataFrame(
                    {
                        "node": node,
                        "gpu": gpu,
                        "collective": coll,
                        "num_workers": g.num_workers,
                        "devices_per_node": g.devices_per_node,
                        "size_bytes": g["size"].astype(float),
                        "measured_s": g[f"time_stats.{coll}.median"] * 1e-3,
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def load_splitwise(data_root: Path) -> pd.DataFrame:
    """Splitwise's end-to-end vLLM measurements (DGX-A100/H100), medians per grid point.

    Columns: model, gpu, hardware, tp, prompt_tokens, batch_size, output_tokens,
    prompt_s (prefill of the batch), token_s (mean decode iteration), n_repeats.
    """
    path = _require(
        Path(data_root) / "vidur_profiles/related/splitwise-sim/data/perf_model.csv"
    )
    d = pd.read_csv(path)
    g = (
        d.groupby(["model", "hardware", "tensor_parallel", "prompt_size", "batch_size",
                   "token_size"])
        .agg(prompt_ms=("prompt_time", "median"), token_ms=("token_time", "median"),
             n_repeats=("prompt_time", "size"))
        .reset_index()
    )
    return pd.DataFrame(
        {
            "model": g.model.map(SPLITWISE_MODEL),
            "gpu": g.hardware.map(SPLITWISE_GPU),
            "hardware": g.hardware,
            "tp": g.tensor_parallel,
            "prompt_tokens": g.prompt_size,
            "batch_size": g.batch_size,
            "output_tokens": g.token_size,
            "prompt_s": g.prompt_ms * 1e-3,
            "token_s": g.token_ms * 1e-3,
            "n_repeats": g.n_repeats,
        }
    )


def load_distserve_kv_capacity(data_root: Path) -> pd.DataFrame:
    """DistServe's KV capacity table: model (catalog name), tp, pp, max_num_tokens."""
    path = _require(Path(data_root) / "distserve" / "kv_capacity_max_num_tokens.csv")
    d = pd.read_csv(path, comment="#")
    d["model"] = d.model.str.split("/").str[-1]
    return d


def load_distserve_coeffs(data_root: Path) -> pd.DataFrame:
    """DistServe's fitted latency coefficients (ms), as in its CSV."""
    path = _require(Path(data_root) / "distserve" / "latency_coeffs_a100_80g.csv")
    return pd.read_csv(path)


def vllm_run_identity(run_dir: Path, gpu: str | None = None,
                      model: str | None = None) -> tuple[str, str]:
    """Catalog ``(GPU name, model name)`` of a real vLLM run folder (``<run>/vllm/meta.json``).

    The GPU from, in order: ``gpu`` (an explicit catalog or device name), the CUDA device
    name ``meta.json`` records (``hardware.device_name``, with its memory telling A100 sizes
    apart), the ``hardware`` label of the run's ``config.json`` (LLMServingSim's cluster file),
    the parent folder's name (``RTX4090``, ``H100``). The model from ``model``, else the repo id
    ``meta.json`` records (``model`` or ``engine_kwargs.model``), else the folder's name; both
    through :mod:`sim.catalog.resolve` (fine-tuning suffixes such as ``-Instruct`` dropped).

    Raises:
        CatalogError: when no catalog entry matches, naming what was recorded.
    """
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "vllm" / "meta.json").read_text())
    hw = meta.get("hardware") or {}
    label = None
    cluster = run_dir / "config.json"
    if cluster.exists():
        try:
            nodes = json.loads(cluster.read_text()).get("nodes") or [{}]
            label = ((nodes[0].get("instances") or [{}])[0]).get("hardware")
        except (ValueError, AttributeError, IndexError):
            label = None
    spec = resolve_gpu(gpu, hw.get("device_name"), label, run_dir.parent.name,
                       memory_bytes=hw.get("device_total_memory_bytes"))
    name = (model or meta.get("model") or (meta.get("engine_kwargs") or {}).get("model")
            or run_dir.name)
    return spec.name, resolve_model(str(name)).name


def _generated_per_window(first: np.ndarray, last: np.ndarray, pace: np.ndarray,
                          ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tokens generated and mean requests decoding in each window ``(end - 1, end]``.

    Each request generates at its own average pace between its first and last token.
    """
    a = ends[:, None] - 1.0
    b = ends[:, None]
    ov = np.clip(np.minimum(b, last[None, :]) - np.maximum(a, first[None, :]), 0.0, None)
    return (ov / np.maximum(pace, 1e-9)[None, :]).sum(axis=1), ov.sum(axis=1)


def timeseries_clock_shift(reqs: pd.DataFrame, ts: pd.DataFrame) -> float:
    """Offset of ``timeseries.csv``'s clock from the requests' (from the first ``queued_ts``).

    The shift that best matches its per-second generation throughput with the tokens the
    requests generate at their average pace (0.1 s grid over -8..+3 s).
    """
    t0 = reqs.queued_ts.min()
    first = (reqs.first_token_ts - t0).to_numpy()
    last = (reqs.last_token_ts - t0).to_numpy()
    pace = (last - first) / (reqs.output_toks - 1).clip(lower=1).to_numpy()
    gen = ts.gen_throughput.to_numpy()
    best, best_err = 0.0, np.inf
    for shift in np.round(np.arange(-8.0, 3.0001, 0.1), 1):
        tokens, _ = _generated_per_window(first, last, pace, ts.t.to_numpy() + shift)
        err = np.abs(tokens - gen).sum()
        if err < best_err:
            best, best_err = float(shift), err
    return best


def _single_engine_runs(data_root: Path):
    """``(run_dir, engine_kwargs, requests)`` of each real vLLM run with one engine.

    Runs under ``<data_root>/vllm_runs/llmservingsim/<GPU>/<model>/``; data-parallel runs
    (the DP/EP MoE run) are skipped: their ranks' batches are not recorded separately.
    """
    base = _require(Path(data_root) / "vllm_runs" / "llmservingsim")
    for run_dir in sorted(p.parent for p in base.glob("*/*/vllm")):
        kw = json.loads((run_dir / "vllm" / "meta.json").read_text())["engine_kwargs"]
        if (kw.get("data_parallel_size") or 1) > 1:
            continue
        yield run_dir, kw, pd.read_json(run_dir / "vllm" / "requests.jsonl", lines=True)


def _run_columns(run_dir: Path, kw: dict) -> dict:
    """The run, GPU, model and TP columns of a run's measurement rows."""
    gpu, model = vllm_run_identity(run_dir)
    return {"run": f"{run_dir.parent.name}/{run_dir.name}",
            "gpu": gpu,
            "model": model,
            "tp": int(kw.get("tensor_parallel_size") or 1)}


def load_vllm_decode_windows(data_root: Path, max_kv_cache_pct: float = 90.0,
                             min_batch: int = 4) -> pd.DataFrame:
    """Decode-only seconds of the real vLLM V1 runs, as iteration-time measurements.

    A second of ``timeseries.csv`` with no prompt throughput in it and the second before
    (steady decode) gives one decode iteration time ``batch / generation tokens per s``. The
    stat logger's clock is offset from the requests' by up to seconds
    (:func:`timeseries_clock_shift` finds it); on the requests' clock, the batch is the mean
    number of requests decoding in that second and the attended context is summed over them
    (prompt plus tokens generated so far at their average pace), at the middle of the second.
    The DP/EP MoE run is left out (its two ranks' batches are not recorded separately).
    Seconds with the KV cache over ``max_kv_cache_pct`` full are left out: there vLLM
    preempts and recomputes, and recomputed prompt tokens do not show as prompt throughput.
    Seconds with fewer than ``min_batch`` requests are left out (one request finishing
    inside the second moves the estimate by a large fraction).

    Columns: run, gpu, model, tp, t (end of the second, requests' clock), kv_cache_pct,
    batch_size (mean), ctx_tokens (summed), measured_s.
    """
    rows = []
    for run_dir, kw, reqs in _single_engine_runs(data_root):
        ts = pd.read_csv(run_dir / "vllm" / "timeseries.csv")
        shift = timeseries_clock_shift(reqs, ts)
        t0 = reqs.queued_ts.min()
        first = (reqs.first_token_ts - t0).to_numpy()
        last = (reqs.last_token_ts - t0).to_numpy()
        pace = (last - first) / (reqs.output_toks - 1).clip(lower=1).to_numpy()
        prompt = reqs.input_toks.to_numpy()
        steady = (ts.prompt_throughput == 0) & (ts.prompt_throughput.shift(1) == 0)
        kv = ts.kv_cache_pct if "kv_cache_pct" in ts else pd.Series(0.0, index=ts.index)
        steady &= kv.fillna(0.0) < max_kv_cache_pct
        for r in ts[steady & (ts.running > 0) & (ts.gen_throughput > 0)].itertuples():
            end = r.t + shift
            _, busy = _generated_per_window(first, last, pace, np.array([end]))
            b = float(busy[0])
            if b < min_batch:
                continue
            t = end - 0.5  # middle of the one-second window
            act = (first <= t) & (last > t)
            gen = ((t - first[act]) / pace[act]).clip(min=0)
            n = int(act.sum())
            ctx = (prompt[act] + gen).sum() + n
            rows.append({
                **_run_columns(run_dir, kw),
                "t": float(end),
                "kv_cache_pct": float(getattr(r, "kv_cache_pct", 0.0) or 0.0),
                "batch_size": int(round(b)),
                "ctx_tokens": int(round(ctx * b / max(n, 1))),
                "measured_s": b / r.gen_throughput,
            })
    return pd.DataFrame(rows)


def iteration_rate(first: np.ndarray, last: np.ndarray, output_tokens: np.ndarray,
                   bin_s: float = 2.0, smooth: float = 0.003) -> tuple[np.ndarray, np.ndarray]:
    """Engine iterations per second over a run, from its requests alone (one clock).

    In vLLM every running request gains one token per iteration, so request ``i`` sees
    ``output_i - 1`` iterations between its first and last token. With the rate piecewise
    constant on ``bin_s`` bins, each request gives one linear equation; they are solved by
    bounded least squares on relative error, with a small second-difference penalty.

    Returns:
        ``(edges, rate)``: bin edges ``(n + 1,)`` from 0 and iterations per second ``(n,)``.
    """
    from scipy.optimize import lsq_linear

    edges = np.arange(0.0, float(last.max()) + bin_s, bin_s)
    ov = np.clip(np.minimum(edges[None, 1:], last[:, None])
                 - np.maximum(edges[None, :-1], first[:, None]), 0.0, None)
    n_it = np.maximum(output_tokens - 1, 0).astype(np.float64)
    w = 1.0 / np.maximum(n_it, 10.0)
    nb = len(edges) - 1
    d2 = np.diff(np.eye(nb), 2, axis=0) * smooth
    a = np.vstack([ov * w[:, None], d2])
    y = np.concatenate([n_it * w, np.zeros(len(d2))])
    return edges, lsq_linear(a, y, bounds=(0.0, 1e4)).x


def load_vllm_drain_iterations(data_root: Path, bin_s: float = 2.0,
                               min_batch: float = 4.0) -> pd.DataFrame:
    """Decode iteration times of the real vLLM V1 runs once their last request has started.

    After the last first token nothing is admitted or prefilled any more: every iteration
    decodes the requests still running. :func:`iteration_rate` gives the iteration time per
    ``bin_s`` bin on the requests' clock; the batch is the mean number of requests decoding
    in the bin and the attended context their prompts plus the tokens generated by the
    bin's middle (each request at its own average pace). The DP/EP MoE run is left out.

    Columns: run, gpu, model, tp, t (bin middle), batch_size (mean), ctx_tokens (summed),
    measured_s.
    """
    rows = []
    for run_dir, kw, reqs in _single_engine_runs(data_root):
        t0 = reqs.queued_ts.min()
        first = (reqs.first_token_ts - t0).to_numpy()
        last = (reqs.last_token_ts - t0).to_numpy()
        out = reqs.output_toks.to_numpy()
        pace = (last - first) / np.maximum(out - 1, 1)
        prompt = reqs.input_toks.to_numpy()
        edges, rate = iteration_rate(first, last, out, bin_s)
        start = first.max()
        for i in range(len(rate)):
            a, z = edges[i], edges[i + 1]
            if a < start or rate[i] <= 0:
                continue
            busy = np.clip(np.minimum(z, last) - np.maximum(a, first), 0.0, None).sum()
            b = busy / (z - a)
            if b < min_batch:
                continue
            t = 0.5 * (a + z)
            act = (first <= t) & (last > t)
            n = int(act.sum())
            ctx = (prompt[act] + (t - first[act]) / pace[act]).sum() + n
            rows.append({
                **_run_columns(run_dir, kw),
                "t": float(t),
                "batch_size": int(round(b)),
                "ctx_tokens": int(round(ctx * b / max(n, 1))),
                "measured_s": 1.0 / rate[i],
            })
    return pd.DataFrame(rows)


PCIE_ALLREDUCE_RTXPRO6000_2GPU = (
    (10240, 16.24), (40960, 17.5), (139264, 22.78), (327680, 30.6), (557056, 42.64),
    (1114112, 78.36), (1310720, 90.59), (2228224, 148.95), (5242880, 335.41),
    (8912896, 566.73), (16777216, 1051.83), (20971520, 1309.13),
)
"""``(bytes, microseconds)`` of a bf16 NCCL all-reduce between two RTX PRO 6000 Blackwell
Server Edition GPUs over PCIe Gen5 x16 (no NVLink), replayed from a CUDA graph: LLMServingSim's
hardware profile ``profiler/perf/RTXPRO6000/hardware.yaml`` at commit e08dc38 (written
2026-09-08, vLLM's PyNcclCommunicator, MIT licence, CASYS Lab at KAIST), the profile whose
fitted 15.92 GB/s link their simulator uses to replay the real runs in ``vllm_runs``. The same
pair re-measured later with ACS and the IOMMU disabled (``hardware.yaml`` of 2026-10-02)
reaches ~35 GB/s at 8 MiB: 16 GB/s is a host whose GPUs do not reach each other directly
(NCCL stages through host memory), 35 GB/s one with PCIe peer-to-peer."""



LLAMA31_8B_GEMM_SHAPES = ((6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336))
"""``(n, k)`` of Llama-3.1-8B's TP=1 GEMMs qkv, o, gate_up, down (the column order below)."""

CARD_GEMM_US = {
    "RTX-4090": {
        1: (54.898, 38.1313, 247.292, 126.766),
        16: (56.4653, 41.0317, 253.327, 131.234),
        64: (60.1343, 48.8287, 279.041, 144.363),
        128: (76.9237, 44.1997, 314.081, 166.731),
        256: (90.4477, 58.556, 378.077, 196.98),
        512: (166.444, 107.951, 736.703, 376.009),
        1024: (319.728, 209.365, 1455.04, 738.852),
        2048: (631.069, 419.483, 2896.81, 1459.55),
    },
    "RTX-PRO-6000": {
        1: (35.808, 25.8457, 159.04, 85.0137),
        16: (38.2187, 26.048, 160.416, 81.6217),
        64: (36.7253, 28.96, 171.019, 95.68),
        128: (43.9147, 31.1897, 180.726, 92.4267),
        256: (58.88, 39.9893, 210.625, 118.006),
        512: (96.6087, 71.1893, 349.548, 189.057),
        1024: (182.581, 116.629, 626.028, 335.297),
        2048: (321.249, 204.662, 1226.98, 646.552),
    },
}
"""Microseconds of Llama-3.1-8B's four TP=1 GEMMs (:data:`LLAMA31_8B_GEMM_SHAPES`) by tokens
in the batch, vLLM's own layers timed one at a time by LLMServingSim's profiler
(``profiler/perf/<card>/meta-llama/Llama-3.1-8B/bf16/tp1/dense.csv``; MIT licence, CASYS Lab
at KAIST):

* RTX 4090: commit 856225a, vLLM 0.19.0 (the real run's version), profiled 2026-08-17 "on the
  real card". ~165 TFLOP/s at 2048 tokens, i.e. 100% of the 165.2 the Ada whitepaper computes
  at the 2520 MHz rated boost (GeForce boards clock above it under load), and ~94% of
  1008 GB/s streaming weights at 1 token; the A40 fit gives 80% and 88%.
* RTX PRO 6000 Blackwell Server Edition: commit 72c16ba, vLLM 0.28.0 / CUDA 13.0 (the run used
  0.19; the GEMMs are cuBLAS either way), profiled 2026-09-04. ~392 TFLOP/s (82% of 480) at
  2048 tokens and 88-92% of 1597 GB/s at 1 token."""


def card_gemm_points(gpu: str) -> pd.DataFrame:
    """:data:`CARD_GEMM_US` of one card as GEMM points (columns m, n, k, measured_s)."""
    rows = [{"m": float(m), "n": float(n), "k": float(k), "measured_s": us * 1e-6}
            for m, times in CARD_GEMM_US[gpu].items()
            for (n, k), us in zip(LLAMA31_8B_GEMM_SHAPES, times, strict=True)]
    return pd.DataFrame(rows)
