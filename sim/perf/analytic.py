"""The analytic backend: roofline kernels with fitted efficiencies, tabulated for speed.

Iteration latency of an instance with ``tp x pp`` GPUs::

    t = L * (dense[M] + attn_prefill + attn_decode)    # every layer, all stages in sequence
      + head[S] + embed[M]                              # LM head on the S sampled rows
      + (pp - 1) * p2p[M]                               # activations between stages
      + engine overhead(S)                              # scheduling, sampling, launches

Without CUDA graphs (``EngineParams.per_layer_s`` > 0) each layer takes at least the host's
time to launch its kernels: ``max(gpu_layer_time, per_layer_s)``.

``M`` = tokens in the batch, ``S`` = sequences. ``dense[M]`` (GEMMs incl. MoE experts,
elementwise kernels, two TP all-reduces per layer) is evaluated once per instance for every
M up to ``max_table_tokens`` and looked up afterwards; attention is evaluated per call from
the batch sums (:mod:`sim.perf.batch`). The scalar path is plain Python arithmetic on locals.

As in vLLM V1: prefill chunks and decodes share one varlen attention launch per layer (its
fixed time is paid once); an MoE layer's experts run as one fused grouped GEMM per projection
(tile waves counted over all experts, each touched expert's weights read once), optionally
expert-parallel over lock-stepped data-parallel ranks (``ep``); collectives captured in CUDA
graphs pay the engine's graph latency instead of the eagerly fitted one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sim.catalog import CatalogError, GpuSpec, ModelSpec, get_gpu, get_model
from sim.perf import kernels
from sim.perf.base import LatencyBackend
from sim.perf.batch import BatchArrays
from sim.perf.params import EngineParams, KernelParams, load_engine_params, load_kernel_params


def dense_layer_time_s(
    model: ModelSpec, gpu: GpuSpec, kp: KernelParams, tp: int, m: np.ndarray,
    intra_node_bytes_per_s: float | None = None, tp_gpus_per_node: int | None = None,
    engine: EngineParams | None = None, ep: int = 1,
) -> dict[str, np.ndarray]:
    """Per-layer time of everything but attention for ``m`` tokens, by part.

    Args:
        model: the model.
        gpu: the GPU.
        kp: kernel efficiencies.
        tp: tensor parallel degree.
        m: tokens in the batch, ``(n,)``.
        intra_node_bytes_per_s: link used by TP all-reduce (default: NVLink or PCIe of gpu).
        tp_gpus_per_node: GPUs of the TP group per node when it spans nodes (None: one node).
        engine: engine profile; its custom all-reduce (if any) replaces NCCL for small
            intra-node messages.
        ep: expert-parallel degree of an MoE model over data-parallel ranks (1: every GPU
            holds all experts).

    Returns:
        ``{"gemm", "moe", "elementwise", "allreduce"}`` -> ``(n,)`` seconds.
    """
    m = np.asarray(m, dtype=np.float64)
    if intra_node_bytes_per_s is None:
        kp = pcie_collectives(kp, gpu)
    h = model.hidden_size
    b = model.dtype_bytes
    qkv_n = (model.q_size + 2 * model.kv_size) / tp
    gemm = kernels.gemm_time_s(m, qkv_n, h, gpu, kp, b)
    gemm += kernels.gemm_time_s(m, h, model.q_size / tp, gpu, kp, b)
    moe = np.zeros_like(m)
    ffn = model.intermediate_size / tp
    if model.is_moe:
        # vLLM's fused-MoE kernel: one grouped launch per projection over every expert that
        # receives a token (waves counted over all experts' tiles, each expert's weights read
        # once). With expert parallelism over ``ep`` data-parallel ranks running in lock-step,
        # this GPU holds E/ep experts and sees the routed tokens of all ranks (vLLM's
        # all-gather / reduce-scatter dispatch), assuming evenly loaded ranks.
        e, k = model.num_experts, model.num_experts_per_tok
        e_local = e / ep
        m_moe = m * ep
        # expected experts of this GPU hit by m_moe tokens routed to k of e experts each
        active = e_local * (1.0 - (1.0 - k / e) ** m_moe)
        rows = m_moe * k / ep  # (token, expert) pairs landing on this GPU's experts
        moe = kernels.grouped_gemm_time_s(rows, active, model.mlp_up_width / tp, h, gpu, kp, b)
        moe += kernels.grouped_gemm_time_s(rows, active, h, ffn, gpu, kp, b)
        moe += kernels.gemm_time_s(m, e, h, gpu, kp, b)  # router
        if ep > 1:
            # vLLM's allgather_reducescatter all2all (AgRsAll2AllManager): dispatch is one
            # all-gather of every rank's hidden states and router logits, combine one
            # reduce-scatter of the expert outputs: two collectives, two latencies
            link = intra_node_bytes_per_s or gpu.intra_node_bytes_per_s
            kpc = graph_collectives(kp, engine)
            moe += kernels.allgather_time_s(m_moe * (h + e) * b, ep, link, kpc)
            moe += kernels.allgather_time_s(m_moe * h * b, ep, link, kpc)
        if model.shared_expert_intermediate_size:
            sh = model.shared_expert_intermediate_size / tp
            up = sh * (2 if model.gated_mlp else 1)
            moe += kernels.gemm_time_s(m, up, h, gpu, kp, b)
            moe += kernels.gemm_time_s(m, h, sh, gpu, kp, b)
        moe = np.where(m > 0, moe, 0.0)
    else:
        gemm += kernels.gemm_time_s(m, model.mlp_up_width / tp, h, gpu, kp, b)
        gemm += kernels.gemm_time_s(m, h, ffn, gpu, kp, b)
    mh = m * h * b
    act_width = ffn * max(model.num_experts_per_tok, 1)
    if engine is not None and engine.fused_add_norm:
        # torch.compile fuses each residual add into the norm after it: one kernel reads the
        # hidden state and the residual and writes both
        elem = 2 * kernels.elementwise_time_s(4 * mh, gpu, kp)
    else:
        elem = 2 * kernels.elementwise_time_s(2 * mh, gpu, kp)  # two norms: read + write
        elem += 2 * kernels.elementwise_time_s(3 * mh, gpu, kp)  # two residual adds
    act_in = act_width * (2 if model.gated_mlp else 1)
    elem += kernels.elementwise_time_s(m * (act_in + act_width) * b, gpu, kp)
    qk = (model.q_size + model.kv_size) / tp
    if model.position_embedding == "rope":
        elem += kernels.elementwise_time_s(2 * m * qk * b, gpu, kp)
    if model.qk_norm:  # Qwen3: RMSNorm over each query and key head, one read + write
        elem += kernels.elementwise_time_s(2 * m * qk * b, gpu, kp)
    link = intra_node_bytes_per_s or gpu.intra_node_bytes_per_s
    inter = tp_gpus_per_node is not None and tp_gpus_per_node < tp
    if inter:
        link = gpu.network_bytes_per_s * tp_gpus_per_node**kp.allreduce_inter_nic_exponent
    ar = 2 * kernels.allreduce_time_s(mh, tp, link, graph_collectives(kp, engine, inter),
                                      inter_node=inter)
    # vLLM's custom all-reduce: on with NVLink; on PCIe-only GPUs off for > 2 GPUs, and for 2
    # only when peer-to-peer access works (vllm custom_all_reduce.py). Modelled on NVLink only:
    # the one PCIe host measured here (2 x RTX PRO 6000, whose real runs these replay) moves
    # collectives at ~16 GB/s, the rate of NCCL through host memory, i.e. without P2P, where
    # vLLM disables its custom all-reduce (see ``KernelParams.allreduce_pcie_eff``)
    custom_ok = gpu.nvlink_bytes_per_s > 0
    if (engine is not None and engine.custom_allreduce_latency_s > 0 and tp > 1 and not inter
            and custom_ok):
        bus = 2.0 * (tp - 1) / tp * mh / (link * kp.allreduce_intra_eff)
        custom = 2 * (engine.custom_allreduce_latency_s + bus)
        ar = np.where(mh <= engine.custom_allreduce_max_bytes, np.minimum(ar, custom), ar)
    return {"gemm": gemm, "moe": moe, "elementwise": elem, "allreduce": ar}


def pcie_collectives(kp: KernelParams, gpu: GpuSpec) -> KernelParams:
    """Kernel parameters for collectives among GPUs of one node, by the link they use.

    GPUs without NVLink exchange over PCIe (``gpu.intra_node_bytes_per_s`` is then the PCIe
    rate); their collective efficiency is ``allreduce_pcie_eff`` when the calibration sets one,
    since the DGX profiles behind ``allreduce_intra_eff`` were taken over NVLink.
    """
    if gpu.nvlink_bytes_per_s > 0 or kp.allreduce_pcie_eff <= 0:
        return kp
    return dataclasses.replace(kp, allreduce_intra_eff=kp.allreduce_pcie_eff)


def graph_collectives(kp: KernelParams, engine: EngineParams | None,
                      inter_node: bool = False) -> KernelParams:
    """Kernel parameters for collectives of an engine that runs them inside CUDA graphs.

    The calibrated NCCL latency was fitted to eagerly launched collectives; captured in a
    graph, an intra-node all-reduce pays only the kernel's own latency
    (``EngineParams.graph_allreduce_latency_s``). Cross-node collectives keep theirs.
    """
    if engine is None or engine.graph_allreduce_latency_s <= 0 or inter_node:
        return kp
    return dataclasses.replace(kp, allreduce_latency_s=engine.graph_allreduce_latency_s)


def _tail_slope(table: np.ndarray) -> float:
    """Per-entry growth over the upper half of a table (for linear extrapolation past it).

    The last step alone reflects one wave-quantisation jump, not the average growth.
    """
    n = len(table) - 1
    half = n // 2
    return max(float(table[n] - table[half]) / max(n - half, 1), 0.0)


class AnalyticBackend(LatencyBackend):
    """Default backend: calibrated roofline model of each kernel (see module docstring)."""

    def __init__(
        self,
        model: ModelSpec | str,
        gpu: GpuSpec | str,
        tp: int = 1,
        pp: int = 1,
        kernel_params: KernelParams | None = None,
        engine: EngineParams | str = "vllm_v1",
        max_table_tokens: int = 16384,
        max_table_seqs: int = 2048,
        tp_gpus_per_node: int | None = None,
        pp_inter_node: bool = False,
        ep: int = 1,
    ) -> None:
        """Build the tables for one instance.

        Args:
            model: model spec or catalog name.
            gpu: GPU spec or catalog name.
            tp: tensor parallel degree (must divide the attention heads).
            pp: pipeline parallel degree.
            kernel_params: efficiencies (default: the GPU's ``calibration`` entry).
            engine: engine overhead parameters or profile name (``conf/engine``).
            max_table_tokens: batch tokens tabulated exactly; beyond, linear extrapolation.
            max_table_seqs: sequences tabulated for the LM head.
            tp_gpus_per_node: GPUs of the TP group per node if it spans nodes (None: one node).
            pp_inter_node: pipeline stages on different nodes (send/recv over the network).
            ep: expert-parallel degree over ``ep`` lock-stepped data-parallel replicas of an
                MoE model (vLLM ``--data-parallel-size ep --enable-expert-parallel``); this
                backend times one replica, assuming the others carry the same batch.
        """
        self.model = get_model(model) if isinstance(model, str) else model
        self.gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
        self.model.check_tp(tp)
        self.model.check_pp(pp)
        self.tp, self.pp = tp, pp
        self.kp = kernel_params or load_kernel_params(self.gpu.calibration)
        self.engine = load_engine_params(engine) if isinstance(engine, str) else engine
        m, g, kp = self.model, self.gpu, self.kp
        tokens = np.arange(max_table_tokens + 1, dtype=np.float64)
        self._tp_gpus_per_node = tp_gpus_per_node
        if ep < 1 or (ep > 1 and (not m.is_moe or m.num_experts % ep)):
            raise CatalogError(f"expert parallelism ep={ep} needs an MoE model whose "
                               f"{m.num_experts} experts it divides")
        self.ep = ep
        parts = dense_layer_time_s(m, g, kp, tp, tokens, tp_gpus_per_node=tp_gpus_per_node,
                                   engine=self.engine, ep=ep)
        self._dense = sum(parts.values())
        # embedding gather + final norm on M tokens
        emb = kernels.elementwise_time_s(tokens * m.hidden_size * m.dtype_bytes * 2, g, kp)
        link = g.network_bytes_per_s if pp_inter_node else g.intra_node_bytes_per_s
        p2p = kernels.p2p_time_s(tokens * m.hidden_size * m.dtype_bytes, link, kp, pp_inter_node)
        self._per_token_extra = emb + (pp - 1) * p2p
        seqs = np.arange(max_table_seqs + 1, dtype=np.float64)
        head = kernels.gemm_time_s(seqs, m.vocab_size / tp, m.hidden_size, g, kp, m.dtype_bytes)
        if tp > 1:  # gather logits across the TP ranks of the last stage
            inter = tp_gpus_per_node is not None and tp_gpus_per_node < tp
            tp_link = (g.network_bytes_per_s * tp_gpus_per_node**kp.allreduce_inter_nic_exponent
                       if inter else g.intra_node_bytes_per_s)
            head += kernels.allreduce_time_s(seqs * m.vocab_size * 4 / tp, tp, tp_link,
                                             graph_collectives(pcie_collectives(kp, g),
                                                               self.engine, inter),
                                             inter_node=inter)
        eng = self.engine
        self._head = head + eng.fixed_s + eng.per_seq_s * seqs
        self._max_m, self._max_s = max_table_tokens, max_table_seqs
        self._slope_m = _tail_slope(self._dense)
        self._slope_x = _tail_slope(self._per_token_extra)
        self._slope_s = _tail_slope(self._head)
        self._layers = float(m.num_layers)
        self._overhead = eng.per_tp_rank_s * (tp - 1)
        self._cpu_layer = eng.per_layer_s
        self._sq_host = eng.per_prefill_sq_token_s
        # attention constants, per GPU
        nq = m.num_attention_heads / tp
        nkv = max(m.num_kv_heads / tp, 1.0)
        hd, db = m.head_dim, m.dtype_bytes
        self._pf_flop = 4.0 * nq * hd / (g.peak_flops_per_s * kp.attn_prefill_compute_eff)
        self._pf_causal = kp.attn_causal_frac
        mem_pf = db / (g.hbm_bytes_per_s * kp.attn_prefill_memory_eff)
        self._pf_mem_new = (2.0 * nq * hd + 2.0 * nkv * hd) * mem_pf
        self._pf_mem_ctx = 2.0 * nkv * hd * mem_pf
        self._pf_pow = kp.attn_prefill_blend_power
        self._pf_inv_pow = 1.0 / kp.attn_prefill_blend_power
        self._pf_t0 = kp.attn_prefill_overhead_s
        mem_dec = db / (g.hbm_bytes_per_s * kp.attn_decode_memory_eff)
        self._dec_ctx = 2.0 * nkv * hd * mem_dec
        self._dec_seq = 2.0 * nq * hd * mem_dec + kp.attn_decode_per_seq_s
        self._dec_t0 = kp.attn_decode_overhead_s
        # decodes riding along a prefill launch add only what their fixed time exceeds it by
        self._dec_t0_mixed = max(kp.attn_decode_overhead_s - kp.attn_prefill_overhead_s, 0.0)
        self._scalar_tables()

    def _scalar_tables(self) -> None:
        """Python-float copies of the tables for the scalar hot path (call after changing one).

        Indexing a list gives a Python float; indexing the array a numpy scalar, whose
        arithmetic costs several times more (same IEEE values either way).
        """
        self._dense_f = self._dense.tolist()
        self._extra_f = self._per_token_extra.tolist()
        self._head_f = self._head.tolist()

    # ---- hot path --------------------------------------------------------------------------
    def iteration_time_s(
        self,
        num_prefill_tokens: int,
        num_prefill_seqs: int,
        prefill_ctx_tokens: int,
        prefill_new_x_ctx: int,
        prefill_new_sq: int,
        num_decode_seqs: int,
        decode_ctx_tokens: int,
    ) -> float:
        """Seconds for one iteration (see :class:`~sim.perf.batch.BatchShape` for the args)."""
        m = num_prefill_tokens + num_decode_seqs
        s = num_prefill_seqs + num_decode_seqs
        if m <= self._max_m:
            layer = self._dense_f[m]
            extra = self._extra_f[m]
        else:
            over = m - self._max_m
            layer = self._dense_f[self._max_m] + over * self._slope_m
            extra = self._extra_f[self._max_m] + over * self._slope_x
        # one varlen attention launch per layer serves prefill chunks and decodes together
        # (vLLM V1's FlashAttention backend): its fixed time is paid once
        if num_prefill_tokens:
            tc = (prefill_new_x_ctx + self._pf_causal * prefill_new_sq) * self._pf_flop
            tm = num_prefill_tokens * self._pf_mem_new + prefill_ctx_tokens * self._pf_mem_ctx
            p = self._pf_pow
            layer += (tc**p + tm**p) ** self._pf_inv_pow + self._pf_t0
            if num_decode_seqs:
                layer += decode_ctx_tokens * self._dec_ctx + num_decode_seqs * self._dec_seq
                layer += self._dec_t0_mixed
        elif num_decode_seqs:
            layer += decode_ctx_tokens * self._dec_ctx + num_decode_seqs * self._dec_seq
            layer += self._dec_t0
        if layer < self._cpu_layer:
            layer = self._cpu_layer
        if s <= self._max_s:
            head = self._head_f[s]
        else:
            head = self._head_f[self._max_s] + (s - self._max_s) * self._slope_s
        host = self._overhead + self._sq_host * prefill_new_sq
        return self._layers * layer + extra + head + host

    def iteration_times_s(self, batch: BatchArrays) -> np.ndarray:
        """Vectorised :meth:`iteration_time_s` over ``(n,)`` arrays; returns ``(n,) float64``."""
        pt, ps, pc, pxc, psq, ds, dc = (np.asarray(a) for a in batch)
        m = pt + ds
        s = ps + ds
        mi = np.minimum(m, self._max_m)
        over = (m - mi).astype(np.float64)
        layer = self._dense[mi] + over * self._slope_m
        extra = self._per_token_extra[mi] + over * self._slope_x
        tc = (pxc + self._pf_causal * psq) * self._pf_flop
        tm = pt * self._pf_mem_new + pc * self._pf_mem_ctx
        p = self._pf_pow
        attn_pf = (tc**p + tm**p) ** self._pf_inv_pow + self._pf_t0
        layer = layer + np.where(pt > 0, attn_pf, 0.0)
        attn_dec = dc * self._dec_ctx + ds * self._dec_seq
        attn_dec = attn_dec + np.where(pt > 0, self._dec_t0_mixed, self._dec_t0)
        layer = layer + np.where(ds > 0, attn_dec, 0.0)
        layer = np.maximum(layer, self._cpu_layer)
        si = np.minimum(s, self._max_s)
        head = self._head[si] + (s - si) * self._slope_s
        host = self._overhead + self._sq_host * psq
        return self._layers * layer + extra + head + host

    def decode_line(self, num_seqs: int, ctx_tokens: int) -> tuple[float, float, float, float]:
        """Exact decode-run line including the per-layer launch floor (see base class)."""
        t0 = self.iteration_time_s(0, 0, 0, 0, 0, num_seqs, ctx_tokens)
        b = min(num_seqs, self._max_m)
        layer0 = (self._dense_f[b] + (num_seqs - b) * self._slope_m + ctx_tokens * self._dec_ctx
                  + num_seqs * self._dec_seq + self._dec_t0)
        big_l = self._layers
        const = t0 - big_l * max(layer0, self._cpu_layer)
        return (big_l * layer0, big_l * self._dec_ctx * num_seqs, big_l * self._cpu_layer, const)

    # ---- inspection ------------------------------------------------------------------------
    def breakdown_s(self, num_tokens: int) -> dict[str, float]:
        """Per-layer time of the dense parts for ``num_tokens`` tokens, seconds, by part."""
        parts = dense_layer_time_s(self.model, self.gpu, self.kp, self.tp, np.array([num_tokens]),
                                   tp_gpus_per_node=self._tp_gpus_per_node, engine=self.engine,
                                   ep=self.ep)
        return {k: float(v[0]) for k, v in parts.items()}


class ExpertParallelGroupBackend(LatencyBackend):
    """``ep`` lock-stepped data-parallel ranks of an MoE model, timed as one instance.

    vLLM's ``--data-parallel-size ep --enable-expert-parallel``: each rank schedules its own
    requests, but every step all ranks run one forward together, padded to the largest rank's
    token count (vLLM V1 pads every DP rank to the maximum across ranks so that their CUDA
    graphs and expert all-gathers match). A rank's attention sees its own requests; its E/ep
    experts see every rank's (padded) routed tokens; the step lasts as long as the busiest
    rank. Given the batch of the whole group, decodes are spread evenly over the ranks (their
    context too) and prefill chunks fill one rank's token budget before the next (a new
    request lands on one rank), so a prefill slows every rank's decodes, as in the real engine.
    """

    def __init__(self, model: ModelSpec | str, gpu: GpuSpec | str, ep: int, tp: int = 1,
                 max_num_batched_tokens: int = 2048, **kwargs) -> None:
        """Build the per-rank tables.

        Args:
            model: MoE model spec or catalog name.
            gpu: GPU spec or catalog name.
            ep: data-parallel ranks sharing the experts (>= 2).
            tp: tensor parallel degree of each rank.
            max_num_batched_tokens: one rank's token budget per step.
            **kwargs: passed to :class:`AnalyticBackend` (kernel_params, engine, ...).
        """
        if ep < 2:
            raise CatalogError(f"an expert-parallel group needs ep >= 2, got {ep}")
        self.rank = AnalyticBackend(model, gpu, tp=tp, ep=ep, **kwargs)
        self.model, self.gpu, self.tp, self.pp, self.ep = (
            self.rank.model, self.rank.gpu, tp, 1, ep)
        self.budget = max_num_batched_tokens

    def iteration_time_s(self, num_prefill_tokens: int, num_prefill_seqs: int,
                         prefill_ctx_tokens: int, prefill_new_x_ctx: int, prefill_new_sq: int,
                         num_decode_seqs: int, decode_ctx_tokens: int) -> float:
        """Seconds of one group step given the whole group's batch sums."""
        # the busiest rank's own batch, timed as an EP rank (its experts see ep x its padded
        # token count)
        ep = self.ep
        pt, ds = num_prefill_tokens, num_decode_seqs
        d = -(-ds // ep)
        dc = decode_ctx_tokens * d / ds if ds else 0.0
        worst = 0.0
        left = float(pt)
        for _ in range(ep):
            take = min(left, max(self.budget - d, 0)) if left else 0.0
            f = take / pt if pt else 0.0
            seqs = max(round(num_prefill_seqs * f), 1) if take else 0
            worst = max(worst, self.rank.iteration_time_s(
                int(take), seqs, int(prefill_ctx_tokens * f), int(prefill_new_x_ctx * f),
                int(prefill_new_sq * f), d, int(dc)))
            left -= take
            if not left:
                break
        return worst

    def iteration_times_s(self, batch: BatchArrays) -> np.ndarray:
        """Vectorised :meth:`iteration_time_s` (a loop: this backend serves experiments)."""
        rows = zip(*(np.asarray(a).tolist() for a in batch), strict=True)
        return np.array([self.iteration_time_s(*r) for r in rows], dtype=np.float64)
