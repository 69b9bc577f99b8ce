"""Roofline time of the kernel classes a transformer forward pass runs, on one GPU.

Every function takes numpy arrays (or Python scalars) and broadcasts; all times are seconds,
all sizes bytes or elements as named. They are shared by the analytic backend (which tabulates
them once per instance) and by the calibration fit (which evaluates them on measured shapes).
"""

from __future__ import annotations

import numpy as np

from sim.catalog import GpuSpec
from sim.perf.params import KernelParams

GEMM_TILES = ((64, 64), (128, 128), (256, 128))
"""Output tile shapes (rows, cols) the GEMM model chooses from, as cuBLAS heuristics do."""


def _blend(a: np.ndarray, b: np.ndarray, power: float) -> np.ndarray:
    """Smooth maximum ``(a**p + b**p) ** (1/p)``; tends to ``max(a, b)`` as p grows.

    Evaluated as ``m * ((a/m)**p + (b/m)**p) ** (1/p)`` with ``m = max(a, b)`` so that large
    exponents on microsecond times do not underflow.
    """
    m = np.maximum(a, b)
    safe = np.where(m > 0, m, 1.0)
    return np.where(m > 0, safe * ((a / safe) ** power + (b / safe) ** power) ** (1.0 / power),
                    0.0)


def gemm_time_s(
    m: np.ndarray, n: np.ndarray, k: np.ndarray, gpu: GpuSpec, kp: KernelParams, dtype_bytes=2
) -> np.ndarray:
    """Time of ``C[m, n] = A[m, k] @ B[k, n]`` in half precision.

    Compute time is wave-quantised: ``ceil(m/tm) * ceil(n/tn)`` tiles run in waves of
    ``num_sms`` tiles, each tile taking ``2 * tm * tn * k`` FLOPs at the tile shape's
    efficiency; the fastest tile shape wins (small-M GEMMs pick small tiles). Memory time
    streams A, B and C once.

    Args:
        m: rows (tokens in the batch), any shape, broadcastable.
        n: output columns (per-GPU shard).
        k: reduction dimension.
        gpu: datasheet peaks.
        kp: fitted efficiencies.
        dtype_bytes: bytes per element.

    Returns:
        Seconds, broadcast shape of the inputs; 0 where ``m`` is 0.
    """
    m = np.asarray(m, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    sms = gpu.num_sms
    flops_per_sm = gpu.peak_flops_per_s / sms
    best = None
    for (tm, tn), eff in zip(
        GEMM_TILES, (kp.gemm_eff_tile_64, kp.gemm_eff_tile_128, kp.gemm_eff_tile_256), strict=True
    ):
        waves = np.ceil(np.ceil(m / tm) * np.ceil(n / tn) / sms)
        t = waves * (2.0 * tm * tn * k) / (flops_per_sm * eff)
        best = t if best is None else np.minimum(best, t)
    t_mem = (m * k + k * n + m * n) * dtype_bytes / (gpu.hbm_bytes_per_s * kp.gemm_memory_eff)
    t = _blend(best, t_mem, kp.gemm_blend_power) + kp.gemm_overhead_s
    return np.where(m > 0, t, 0.0)


def grouped_gemm_time_s(
    m_total: np.ndarray, groups: np.ndarray, n: float, k: float, gpu: GpuSpec, kp: KernelParams,
    dtype_bytes=2,
) -> np.ndarray:
    """Time of one fused grouped GEMM (a fused-MoE launch).

    ``groups`` experts share ``m_total`` rows, each expert ``C[m_e, n] = A[m_e, k] @ W_e[k, n]``.

    All experts' output tiles run in one grid, so the tile waves are counted over the whole
    launch (``groups * ceil(m_e/tm) * ceil(n/tn)`` tiles over the SMs), not per expert; each
    expert's weights are streamed once. Rows are spread evenly, ``m_e = m_total / groups``.

    Args:
        m_total: rows summed over the groups (tokens x top-k), any shape.
        groups: experts that receive at least one row (same shape).
        n: output columns per expert (per-GPU shard).
        k: reduction dimension.
        gpu: datasheet peaks.
        kp: fitted efficiencies (the dense GEMM ones).
        dtype_bytes: bytes per element.

    Returns:
        Seconds; 0 where ``m_total`` is 0.
    """
    mt = np.asarray(m_total, dtype=np.float64)
    g = np.maximum(np.asarray(groups, dtype=np.float64), 1e-9)
    me = mt / g
    sms = gpu.num_sms
    flops_per_sm = gpu.peak_flops_per_s / sms
    best = None
    for (tm, tn), eff in zip(
        GEMM_TILES, (kp.gemm_eff_tile_64, kp.gemm_eff_tile_128, kp.gemm_eff_tile_256), strict=True
    ):
        tiles = np.ceil(g * np.ceil(me / tm) * np.ceil(n / tn))
        t = np.ceil(tiles / sms) * (2.0 * tm * tn * k) / (flops_per_sm * eff)
        best = t if best is None else np.minimum(best, t)
    t_mem = (mt * k + g * k * n + mt * n) * dtype_bytes / (gpu.hbm_bytes_per_s * kp.gemm_memory_eff)
    t = _blend(best, t_mem, kp.gemm_blend_power) + kp.gemm_overhead_s
    return np.where(mt > 0, t, 0.0)


def elementwise_time_s(bytes_moved: np.ndarray, gpu: GpuSpec, kp: KernelParams) -> np.ndarray:
    """Time of a memory-bound elementwise kernel that reads and writes ``bytes_moved`` bytes."""
    b = np.asarray(bytes_moved, dtype=np.float64)
    t = b / (gpu.hbm_bytes_per_s * kp.elementwise_memory_eff) + kp.elementwise_overhead_s
    return np.where(b > 0, t, 0.0)


def attn_prefill_time_s(
    sum_new_tokens: np.ndarray,
    sum_ctx_tokens: np.ndarray,
    sum_new_x_ctx: np.ndarray,
    sum_new_sq: np.ndarray,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    gpu: GpuSpec,
    kp: KernelParams,
    dtype_bytes: int = 2,
) -> np.ndarray:
    """Time of one varlen FlashAttention call over the prefill chunks of a batch.

    A chunk of ``c`` new tokens on top of ``x`` cached tokens costs
    ``4 * heads * head_dim * c * (x + causal_frac * c)`` FLOPs and reads its Q, the cached
    and new K/V, and writes its output. All chunks share one kernel launch, so the batch is
    described by sums over its prefill sequences.

    Args:
        sum_new_tokens: sum of c_i (tokens computed this iteration), per batch.
        sum_ctx_tokens: sum of x_i (tokens already in the KV cache).
        sum_new_x_ctx: sum of c_i * x_i.
        sum_new_sq: sum of c_i ** 2.
        num_q_heads: query heads on this GPU (after TP sharding).
        num_kv_heads: KV heads on this GPU.
        head_dim: head width.
        gpu: datasheet peaks.
        kp: fitted efficiencies.
        dtype_bytes: bytes per element.

    Returns:
        Seconds; 0 where there are no new tokens.
    """
    c = np.asarray(sum_new_tokens, dtype=np.float64)
    x = np.asarray(sum_ctx_tokens, dtype=np.float64)
    flops = 4.0 * num_q_heads * head_dim * (sum_new_x_ctx + kp.attn_causal_frac * sum_new_sq)
    t_c = flops / (gpu.peak_flops_per_s * kp.attn_prefill_compute_eff)
    elems = 2.0 * c * num_q_heads * head_dim + 2.0 * (x + c) * num_kv_heads * head_dim
    t_m = elems * dtype_bytes / (gpu.hbm_bytes_per_s * kp.attn_prefill_memory_eff)
    t = _blend(t_c, t_m, kp.attn_prefill_blend_power) + kp.attn_prefill_overhead_s
    return np.where(c > 0, t, 0.0)


def attn_decode_time_s(
    num_seqs: np.ndarray,
    sum_ctx_tokens: np.ndarray,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    gpu: GpuSpec,
    kp: KernelParams,
    dtype_bytes: int = 2,
) -> np.ndarray:
    """Time of paged decode attention: each sequence reads its whole KV cache once.

    Args:
        num_seqs: decoding sequences in the batch.
        sum_ctx_tokens: sum of their context lengths (tokens whose K/V are read).
        num_q_heads: query heads on this GPU.
        num_kv_heads: KV heads on this GPU.
        head_dim: head width.
        gpu: datasheet peaks.
        kp: fitted efficiencies.
        dtype_bytes: bytes per element.

    Returns:
        Seconds; 0 where there are no decoding sequences.
    """
    b = np.asarray(num_seqs, dtype=np.float64)
    ctx = np.asarray(sum_ctx_tokens, dtype=np.float64)
    elems = ctx * 2.0 * num_kv_heads * head_dim + b * 2.0 * num_q_heads * head_dim
    t = (
        elems * dtype_bytes / (gpu.hbm_bytes_per_s * kp.attn_decode_memory_eff)
        + kp.attn_decode_per_seq_s * b
        + kp.attn_decode_overhead_s
    )
    return np.where(b > 0, t, 0.0)


def allreduce_time_s(
    size_bytes: np.ndarray,
    num_ranks: int,
    link_bytes_per_s: float,
    kp: KernelParams,
    inter_node: bool = False,
) -> np.ndarray:
    """Ring all-reduce of ``size_bytes`` over ``num_ranks`` GPUs (alpha-beta model).

    ``t = latency + latency_per_rank * (n - 1) + 2 (n - 1) / n * size / (link * eff)``.

    Args:
        size_bytes: message size per GPU, bytes.
        num_ranks: GPUs in the collective; 1 costs nothing.
        link_bytes_per_s: slowest link of the ring per direction, bytes/s.
        kp: fitted latencies and efficiencies.
        inter_node: whether the ring crosses nodes (selects the network efficiency).

    Returns:
        Seconds.
    """
    size = np.asarray(size_bytes, dtype=np.float64)
    if num_ranks <= 1:
        return np.zeros_like(size)
    eff = kp.allreduce_inter_eff if inter_node else kp.allreduce_intra_eff
    bus = 2.0 * (num_ranks - 1) / num_ranks * size
    t = (
        kp.allreduce_latency_s
        + kp.allreduce_latency_per_rank_s * (num_ranks - 1)
        + bus / (link_bytes_per_s * eff)
    )
    return np.where(size > 0, t, 0.0)


def allgather_time_s(
    total_bytes: np.ndarray,
    num_ranks: int,
    link_bytes_per_s: float,
    kp: KernelParams,
    inter_node: bool = False,
) -> np.ndarray:
    """Ring all-gather (or reduce-scatter) whose gathered result is ``total_bytes``.

    Each rank sends and receives ``(n - 1) / n`` of the result, half the traffic of an
    all-reduce of that size, with one collective's latency:
    ``t = latency + latency_per_rank * (n - 1) + (n - 1) / n * total / (link * eff)``.
    """
    size = np.asarray(total_bytes, dtype=np.float64)
    if num_ranks <= 1:
        return np.zeros_like(size)
    eff = kp.allreduce_inter_eff if inter_node else kp.allreduce_intra_eff
    t = (
        kp.allreduce_latency_s
        + kp.allreduce_latency_per_rank_s * (num_ranks - 1)
        + (num_ranks - 1) / num_ranks * size / (link_bytes_per_s * eff)
    )
    return np.where(size > 0, t, 0.0)


def p2p_time_s(
    size_bytes: np.ndarray, link_bytes_per_s: float, kp: KernelParams, inter_node: bool = False
) -> np.ndarray:
    """Send/recv of ``size_bytes`` between two GPUs (pipeline-stage activations)."""
    size = np.asarray(size_bytes, dtype=np.float64)
    eff = kp.p2p_inter_eff if inter_node else kp.p2p_intra_eff
    t = kp.p2p_latency_s + size / (link_bytes_per_s * eff)
    return np.where(size > 0, t, 0.0)
