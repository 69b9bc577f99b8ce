"""Builders for perf-model tests: a tiny model, round-number hardware and params, backends."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from sim.catalog import GpuSpec, ModelSpec, gpu_from_dict, model_from_dict
from sim.perf import AnalyticBackend, BatchShape, EngineParams, KernelParams

TINY = {
    "name": "Tiny",
    "hf_id": "test/tiny",
    "num_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_kv_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "gated_mlp": True,
    "activation": "silu",
    "vocab_size": 100,
    "max_position_embeddings": 512,
}
"""A 2-layer GQA model small enough to count by hand (bfloat16, RoPE, RMSNorm, untied head)."""

ROUND_GPU = {
    "name": "Round-GPU",
    "memory_gib": 16,
    "peak_dense_tflops": 100,  # 1e14 FLOP/s, 1e13 per SM
    "hbm_bandwidth_gb_per_s": 1000,  # 1e12 B/s
    "num_sms": 10,
    "l2_cache_mib": 1,
    "nvlink_bandwidth_gb_per_s": 100,  # 1e11 B/s
    "pcie_bandwidth_gb_per_s": 10,
    "network_bandwidth_gb_per_s": 1,
    "calibration": "a100",
}
"""A GPU with round peaks so roofline times can be worked out by hand."""

ROUND_KP = {
    "gemm_eff_tile_64": 0.5,
    "gemm_eff_tile_128": 0.8,
    "gemm_eff_tile_256": 1.0,
    "gemm_memory_eff": 1.0,
    "gemm_blend_power": 1.0,
    "gemm_overhead_s": 0.0,
    "elementwise_memory_eff": 1.0,
    "elementwise_overhead_s": 0.0,
    "attn_prefill_compute_eff": 1.0,
    "attn_prefill_memory_eff": 1.0,
    "attn_prefill_blend_power": 1.0,
    "attn_causal_frac": 0.5,
    "attn_prefill_overhead_s": 0.0,
    "attn_decode_memory_eff": 1.0,
    "attn_decode_per_seq_s": 0.0,
    "attn_decode_overhead_s": 0.0,
    "allreduce_latency_s": 0.0,
    "allreduce_latency_per_rank_s": 0.0,
    "allreduce_intra_eff": 1.0,
    "allreduce_inter_eff": 1.0,
    "allreduce_inter_nic_exponent": 1.0,
    "p2p_latency_s": 0.0,
    "p2p_intra_eff": 1.0,
    "p2p_inter_eff": 1.0,
}
"""Efficiencies of 1 (tile 64: 0.5, tile 128: 0.8), blend power 1 (a plain sum), no overheads."""


def make_model(**overrides) -> ModelSpec:
    """The tiny model, with fields overridden."""
    return model_from_dict({**TINY, **overrides}, "tiny model")


def make_gpu(**overrides) -> GpuSpec:
    """The round-number GPU, with fields overridden."""
    return gpu_from_dict({**ROUND_GPU, **overrides}, "round gpu")


def make_kernel_params(**overrides) -> KernelParams:
    """Round kernel params (see :data:`ROUND_KP`), with fields overridden."""
    return KernelParams(**{**ROUND_KP, **overrides})


def make_engine(**overrides) -> EngineParams:
    """An engine with no host overheads (fields overridden as given)."""
    base = {"name": "test", "fixed_s": 0.0, "per_seq_s": 0.0, "per_layer_s": 0.0,
            "per_tp_rank_s": 0.0}
    return EngineParams(**{**base, **overrides})


def make_backend(model: str | ModelSpec = "Llama-2-7B", gpu: str | GpuSpec = "A100-80GB-SXM",
                 tp: int = 1, **kwargs) -> AnalyticBackend:
    """An analytic backend with the catalog's calibration and the vLLM V1 engine by default."""
    return AnalyticBackend(model, gpu, tp=tp, **kwargs)


@functools.cache
def cached_backend(model: str = "Llama-2-7B", gpu: str = "A100-80GB-SXM", tp: int = 1,
                   engine: str = "vllm_v1") -> AnalyticBackend:
    """:func:`make_backend` built once per argument set (for hypothesis tests)."""
    return make_backend(model, gpu, tp, engine=engine)


def random_shapes(seed: int = 0, n: int = 200, max_prefill_seqs: int = 6,
                  max_decode_seqs: int = 160, max_chunk: int = 3000,
                  max_ctx: int = 8000) -> list[BatchShape]:
    """``n`` random mixed batches (some prefill-only, some decode-only, some empty)."""
    rng = np.random.default_rng(seed)
    shapes = []
    for _ in range(n):
        num_p = int(rng.integers(0, max_prefill_seqs + 1))
        num_d = int(rng.integers(0, max_decode_seqs + 1)) if rng.random() < 0.7 else 0
        c = rng.integers(1, max_chunk + 1, num_p)
        x = rng.integers(0, max_ctx + 1, num_p) * (rng.random(num_p) < 0.5)
        d = rng.integers(1, max_ctx + 1, num_d)
        shapes.append(BatchShape.from_requests(c.tolist(), x.tolist(), d.tolist()))
    return shapes


def make_distserve_coeffs(model: str = "facebook/opt-13b", tp: int = 1,
                          engine: str = "distserve") -> pd.DataFrame:
    """A DistServe coefficient table with round numbers (ms) for one (engine, model, tp).

    prefill: 10 + 0.1 l + 0.001 l^2; decode B < 95: 20 + 0.01 ctx + 0.5 B; B >= 95:
    5 + 0.02 ctx + 1.0 B.
    """
    rows = [
        (engine, "A100-80GB-SXM", model, tp, "prefill", 10.0, 0.1, 0.001),
        (engine, "A100-80GB-SXM", model, tp, "decoding_smallbs", 20.0, 0.01, 0.5),
        (engine, "A100-80GB-SXM", model, tp, "decoding_largebs", 5.0, 0.02, 1.0),
    ]
    return pd.DataFrame(rows, columns=["engine", "gpu", "model", "tp", "phase", "a_ms", "b_ms",
                                       "c_ms"])


MLP_OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
           "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")


def write_mlp_csv(path: Path, model: ModelSpec, rows: dict[tuple[int, int], float]) -> Path:
    """Write a Vidur-style ``mlp.csv``: ``{(tp, num_tokens): per-op median ms}``.

    Every operator of a row gets the same median, so a row's layer time is
    ``len(MLP_OPS) * ms`` milliseconds. An ``emb`` column (not part of a layer) is set to 1000.
    """
    recs = []
    for (tp, tokens), ms in rows.items():
        rec = {"time_stats.emb.median": 1000.0}
        rec.update({f"time_stats.{op}.median": ms for op in MLP_OPS})
        rec.update(n_head=model.num_attention_heads, n_kv_head=model.num_kv_heads,
                   n_embd=model.hidden_size, n_expanded_embd=model.intermediate_size,
                   vocab_size=model.vocab_size, use_gated_mlp=model.gated_mlp,
                   num_tokens=tokens, num_tensor_parallel_workers=tp)
        recs.append(rec)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(recs).to_csv(path, index=False)
    return path

