"""Calibrate the analytic model's efficiencies to real GPU measurements.

``python -m sim.perf.fit [--data-root DIR] [--out conf]`` fits, per GPU architecture:

* GEMM and elementwise efficiencies to every Vidur ``mlp.csv`` point of that device except
  the held-out ones (all TP=8 shards, reported separately by the validation command);
* attention efficiencies to the one A100 attention profile (other devices reuse the A100
  fractions of their own peaks: no attention measurements exist for them);
* all-reduce and send/recv latency/efficiency to the DGX network profiles (A40 reuses A100's);
* the ``vllm_splitwise_2023`` engine overheads to Splitwise's A100 measurements (all H100
  measurements held out).

Each fit minimises a robust (Cauchy, scale 3%) loss on ``log(predicted / measured)``, i.e. relative
error, with :func:`scipy.optimize.least_squares`. Results are written as commented YAML to
``conf/calibration/<key>.yaml`` and ``conf/engine/vllm_splitwise_2023.yaml``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from sim.catalog import CONF_DIR, get_gpu, get_model
from sim.perf import kernels
from sim.perf.measurements import (
    DEVICE_GPU,
    PCIE_ALLREDUCE_RTXPRO6000_2GPU,
    default_data_root,
    elementwise_points,
    gemm_points,
    load_attention,
    load_mlp_profiles,
    load_network,
    load_splitwise,
)
from sim.perf.params import EngineParams, KernelParams, dump_params

HELD_OUT_TP = 8
"""Operator points at this TP degree are never fitted (generalisation check)."""
HELD_OUT_SPLITWISE_GPU = "H100-SXM-80GB"
"""Whole-iteration points on this GPU are never fitted."""

PRIOR = KernelParams(
    gemm_eff_tile_64=0.6, gemm_eff_tile_128=0.7, gemm_eff_tile_256=0.75, gemm_memory_eff=0.85,
    gemm_blend_power=3.0, gemm_overhead_s=5e-6, elementwise_memory_eff=0.7,
    elementwise_overhead_s=4e-6, attn_prefill_compute_eff=0.45, attn_prefill_memory_eff=0.1,
    attn_prefill_blend_power=1.3, attn_causal_frac=1.0, attn_prefill_overhead_s=5e-6,
    attn_decode_memory_eff=0.75, attn_decode_per_seq_s=0.0, attn_decode_overhead_s=1.5e-5,
    allreduce_latency_s=1e-5, allreduce_latency_per_rank_s=2e-6, allreduce_intra_eff=0.6,
    allreduce_inter_eff=0.5, allreduce_inter_nic_exponent=1.0, p2p_latency_s=1e-5,
    p2p_intra_eff=0.6, p2p_inter_eff=0.5,
)
"""Starting point of every fit (and the values of parameters no data constrains)."""

CALIBRATION_DEVICES = {"a100": "a100", "h100": "h100", "a40": "a40"}
"""calibration key -> Vidur device folder."""

GDDR_NO_ECC = "gddr_no_ecc"
"""Calibration of GDDR cards without inline ECC (RTX 4090: GDDR6X, RTX PRO 6000: GDDR7): the
A40's (GDDR6 with inline ECC on, as shipped) except for one factor on every streaming
efficiency, fitted to the real vLLM runs' decode iterations (:func:`fit_gddr_no_ecc`)."""
MEMORY_FIELDS = ("gemm_memory_eff", "elementwise_memory_eff", "attn_decode_memory_eff",
                 "attn_prefill_memory_eff")
"""Efficiencies that are fractions of the datasheet memory bandwidth."""


def _solve(residual, x0, lower, upper) -> np.ndarray:
    res = least_squares(
        residual, x0, bounds=(lower, upper), loss="cauchy", f_scale=0.03, x_scale="jac"
    )
    return res.x


def _with(base: KernelParams, names: tuple[str, ...], values: np.ndarray) -> KernelParams:
    return dataclasses.replace(base, **{n: float(v) for n, v in zip(names, values, strict=True)})


GEMM_FIELDS = (
    "gemm_eff_tile_64",
    "gemm_eff_tile_128",
    "gemm_eff_tile_256",
    "gemm_memory_eff",
    "gemm_blend_power",
    "gemm_overhead_s",
)


def fit_gemm(points: pd.DataFrame, gpu_name: str, base: KernelParams) -> KernelParams:
    """Fit the GEMM efficiencies to ``points`` (columns m, n, k, measured_s)."""
    gpu = get_gpu(gpu_name)
    m, n, k, y = (points[c].to_numpy() for c in ("m", "n", "k", "measured_s"))

    def residual(x):
        kp = _with(base, GEMM_FIELDS, x * _GEMM_SCALE)
        return np.log(kernels.gemm_time_s(m, n, k, gpu, kp) / y)

    x0 = np.array([getattr(base, f) for f in GEMM_FIELDS]) / _GEMM_SCALE
    lo = np.array([0.05, 0.05, 0.05, 0.1, 1.0, 0.0]) / _GEMM_SCALE
    hi = np.array([1.2, 1.2, 1.2, 1.2, 20.0, 1e-4]) / _GEMM_SCALE
    return _with(base, GEMM_FIELDS, _solve(residual, x0, lo, hi) * _GEMM_SCALE)


_GEMM_SCALE = np.array([1, 1, 1, 1, 1, 1e-6])


def fit_elementwise(points: pd.DataFrame, gpu_name: str, base: KernelParams) -> KernelParams:
    """Fit the elementwise bandwidth efficiency and fixed time (columns bytes, measured_s)."""
    gpu = get_gpu(gpu_name)
    b, y = points["bytes"].to_numpy(), points["measured_s"].to_numpy()
    names = ("elementwise_memory_eff", "elementwise_overhead_s")

    def residual(x):
        kp = _with(base, names, x * [1, 1e-6])
        return np.log(kernels.elementwise_time_s(b, gpu, kp) / y)

    x = _solve(residual, [0.7, 4.0], [0.05, 0.0], [1.2, 100.0])
    return _with(base, names, x * [1, 1e-6])


PREFILL_FIELDS = (
    "attn_prefill_compute_eff",
    "attn_prefill_memory_eff",
    "attn_prefill_blend_power",
    "attn_causal_frac",
    "attn_prefill_overhead_s",
)
DECODE_FIELDS = ("attn_decode_memory_eff", "attn_decode_per_seq_s", "attn_decode_overhead_s")


def fit_attention(
    prefill: pd.DataFrame, decode: pd.DataFrame, heads: dict, gpu_name: str, base: KernelParams
) -> KernelParams:
    """Fit decode, then prefill attention efficiencies (single sequences / uniform batches).

    Reading cached K/V costs the same in a prefill chunk as in a decode (vLLM V1 runs both
    through one varlen FlashAttention kernel), so the prefill's memory efficiency is tied to
    the decode's; only the compute side of prefill is fitted. Freeing it fits the A100
    profile ~2 points better but makes a 1-token chunk on a long cache ~5x dearer than a
    decode, which no kernel does.
    """
    gpu = get_gpu(gpu_name)
    b, ctx, yd = (decode[k].to_numpy() for k in ("batch_size", "ctx_tokens", "measured_s"))
    dscale = np.array([1, 1e-9, 1e-6])

    def res_d(v):
        kd = _with(base, DECODE_FIELDS, v * dscale)
        return np.log(kernels.attn_decode_time_s(b, b * ctx, gpu=gpu, kp=kd, **heads) / yd)

    vd = _solve(res_d, [0.7, 1.0, 10.0], [0.05, 0.0, 0.0], [1.2, 1e4, 200.0])
    kp = _with(base, DECODE_FIELDS, vd * dscale)
    kp = dataclasses.replace(kp, attn_prefill_memory_eff=kp.attn_decode_memory_eff)
    c, x, y = (prefill[k].to_numpy() for k in ("new_tokens", "ctx_tokens", "measured_s"))
    fields = tuple(f for f in PREFILL_FIELDS if f != "attn_prefill_memory_eff")
    pscale = np.array([1, 1, 1, 1e-6])

    def res_p(v):
        kpp = _with(kp, fields, v * pscale)
        t = kernels.attn_prefill_time_s(c, x, c * x, c * c, gpu=gpu, kp=kpp, **heads)
        return np.log(t / y)

    vp = _solve(res_p, [0.45, 1.3, 0.75, 5.0], [0.05, 1.0, 0.5, 0.0], [1.2, 20.0, 1.0, 100.0])
    return _with(kp, fields, vp * pscale)


def network_link_bytes_per_s(
    gpu_name: str, devices_per_node: int, num_workers: int, kp: KernelParams
) -> tuple[float, bool]:
    """(link bandwidth per direction, inter_node) used for a collective of this shape."""
    gpu = get_gpu(gpu_name)
    if devices_per_node >= num_workers:
        return gpu.intra_node_bytes_per_s, False
    # NCCL runs up to one ring per GPU of a node, each through its own NIC
    return gpu.network_bytes_per_s * devices_per_node**kp.allreduce_inter_nic_exponent, True


def predict_network(rows: pd.DataFrame, kp: KernelParams) -> np.ndarray:
    """Predicted seconds for network rows (collective, gpu, num_workers, devices_per_node)."""
    out = np.empty(len(rows))
    for i, (coll, gpu, n, d, size) in enumerate(
        zip(rows.collective, rows.gpu, rows.num_workers, rows.devices_per_node,
            rows.size_bytes, strict=True)
    ):
        link, inter = network_link_bytes_per_s(gpu, int(d), int(n), kp)
        if coll == "all_reduce":
            out[i] = kernels.allreduce_time_s(size, int(n), link, kp, inter_node=inter)
        else:
            out[i] = kernels.p2p_time_s(size, link, kp, inter_node=inter)
    return out


NET_FIELDS = (
    "allreduce_latency_s",
    "allreduce_latency_per_rank_s",
    "allreduce_intra_eff",
    "allreduce_inter_eff",
    "allreduce_inter_nic_exponent",
    "p2p_latency_s",
    "p2p_intra_eff",
    "p2p_inter_eff",
)


def fit_network(rows: pd.DataFrame, base: KernelParams) -> KernelParams:
    """Fit collective latencies and bandwidth efficiencies to one node type's profiles."""
    y = rows.measured_s.to_numpy()
    scale = np.array([1e-6, 1e-6, 1, 1, 1, 1e-6, 1, 1])
    cross = rows.devices_per_node < rows.num_workers
    has_inter = bool((cross & (rows.collective == "all_reduce")).any())

    def residual(v):
        return np.log(predict_network(rows, _with(base, NET_FIELDS, v * scale)) / y)

    # without cross-node all-reduce data, pin its two parameters to the prior
    pin = 0.0 if has_inter else 1e-9
    e0, g0 = base.allreduce_inter_eff, base.allreduce_inter_nic_exponent
    lo = [0.0, 0.0, 0.05, 0.01 if has_inter else e0 - pin, 0.0 if has_inter else g0 - pin,
          0.0, 0.05, 0.01]
    hi = [500.0, 100.0, 1.5, 1.5 if has_inter else e0 + 1e-9, 1.0, 500.0, 1.5, 1.5]
    x0 = [10.0, 2.0, 0.6, 0.5 if has_inter else e0, 0.5 if has_inter else g0, 10.0, 0.6, 0.5]
    return _with(base, NET_FIELDS, _solve(residual, x0, lo, hi) * scale)


# ---- whole iterations (Splitwise) ----------------------------------------------------------
ENGINE_FIELDS = ("fixed_s", "per_seq_s", "per_layer_s", "per_tp_rank_s", "per_prefill_sq_token_s")


def splitwise_predictions(
    rows: pd.DataFrame, engine: EngineParams, kernel_params: dict[str, KernelParams] | None = None
) -> pd.DataFrame:
    """Predicted prefill and decode-iteration seconds for Splitwise's grid points.

    Prefill of ``batch_size`` prompts is timed as that many single-prompt iterations (what the
    measured times show: two 512-token prompts take twice one); decode is one iteration of
    ``batch_size`` sequences at the mean context ``prompt + output / 2``. ``kernel_params``
    maps calibration keys to parameters (default: the files in ``conf/calibration``).
    """
    from sim.perf.analytic import AnalyticBackend

    pred_p = np.empty(len(rows))
    pred_t = np.empty(len(rows))
    cache: dict = {}
    for i, r in enumerate(rows.itertuples()):
        key = (r.model, r.gpu, r.tp)
        if key not in cache:
            gpu = get_gpu(r.gpu)
            kp = (kernel_params or {}).get(gpu.calibration)
            cache[key] = AnalyticBackend(get_model(r.model), gpu, tp=int(r.tp),
                                         kernel_params=kp, engine=engine)
        be = cache[key]
        pred_p[i] = r.batch_size * be.prefill_time_s(int(r.prompt_tokens))
        ctx = int(r.prompt_tokens + r.output_tokens // 2)
        pred_t[i] = be.decode_time_s(int(r.batch_size), ctx)
    return rows.assign(pred_prompt_s=pred_p, pred_token_s=pred_t)


def fit_engine(
    rows: pd.DataFrame, base: EngineParams, kernel_params: dict[str, KernelParams] | None = None
) -> EngineParams:
    """Fit engine overheads so whole-iteration predictions match measured prefill and TBT."""
    scale = np.array([1e-3, 1e-5, 1e-4, 1e-3, 1e-9])

    def residual(v):
        eng = dataclasses.replace(base, **dict(zip(ENGINE_FIELDS, v * scale, strict=True)))
        p = splitwise_predictions(rows, eng, kernel_params)
        return np.concatenate(
            [np.log(p.pred_prompt_s / p.prompt_s), np.log(p.pred_token_s / p.token_s)]
        )

    # per_layer_s is the host time to launch one layer's kernels in eager mode: about 10-15
    # kernels at 5-10 us each, so it is bounded by 100 us. Unbounded, the fit trades it
    # against fixed_s and per_tp_rank_s (several optima fit A100 equally well) and the
    # held-out H100 errors reveal the overfit ones.
    v = _solve(residual, [5.0, 1.0, 0.5, 1.0, 1.0], [0, 0, 0, 0, 0],
               [100.0, 100.0, 1.0, 50.0, 100.0])
    fitted = {f: float(x) for f, x in zip(ENGINE_FIELDS, v * scale, strict=True)}
    return dataclasses.replace(base, **fitted)


def scale_memory(base: KernelParams, factor: float) -> KernelParams:
    """``base`` with every streaming efficiency multiplied by ``factor`` (capped at 1)."""
    return dataclasses.replace(base, **{f: min(getattr(base, f) * factor, 1.0)
                                        for f in MEMORY_FIELDS})


def drain_predictions(rows: pd.DataFrame, kp: KernelParams,
                      engine: EngineParams | str = "vllm_v1",
                      card_gemm: dict[str, dict[str, float]] | None = None) -> np.ndarray:
    """Predicted decode iteration seconds for :func:`load_vllm_drain_iterations` rows.

    ``card_gemm`` maps a GPU name to GEMM fields that replace ``kp``'s for that card (its own
    calibration, :data:`CARD_GEMM_CALIBRATIONS`).
    """
    from sim.perf.analytic import AnalyticBackend

    out = np.empty(len(rows))
    cache: dict = {}
    for i, r in enumerate(rows.itertuples()):
        key = (r.model, r.gpu, r.tp)
        if key not in cache:
            kpp = kp
            if card_gemm and r.gpu in card_gemm:
                kpp = dataclasses.replace(kp, **card_gemm[r.gpu])
            cache[key] = AnalyticBackend(r.model, r.gpu, tp=int(r.tp), kernel_params=kpp,
                                         engine=engine)
        out[i] = cache[key].iteration_time_s(0, 0, 0, 0, 0, int(r.batch_size),
                                             int(r.ctx_tokens))
    return out


def fit_gddr_no_ecc(rows: pd.DataFrame, a40: KernelParams,
                    engine: EngineParams | str = "vllm_v1",
                    card_gemm: dict[str, dict[str, float]] | None = None) -> float:
    """Streaming-efficiency factor of GDDR without inline ECC relative to the A40 fit.

    The A40 profiles were taken with ECC on: its GDDR6 then stores check bits inline (1/16 of
    the memory, reads that fetch them), so streaming kernels reach less of the datasheet
    bandwidth than on cards without inline ECC. One factor on the four streaming efficiencies
    is fitted to whole decode iterations of real vLLM V1 runs on such cards (``rows``:
    :func:`~sim.perf.measurements.load_vllm_drain_iterations`, single-GPU runs only, so that
    no interconnect enters), with the same robust loss as the other fits. With ``card_gemm``
    (each card's GEMMs from its own operator profile) the factor moves only attention and
    elementwise streaming, a small share of a decode step that a few noisy iterations cannot
    pin down (the RTX 4090's seven alone drove it to 0.72, the RTX PRO 6000's to 0.97): the
    A40 fit enters as one more observation (``log(factor)``, the weight of one iteration),
    so the factor leaves 1 only as far as the iterations agree on.
    """
    y = rows.measured_s.to_numpy()

    def residual(v):
        kp = scale_memory(a40, float(v[0]))
        return np.append(np.log(drain_predictions(rows, kp, engine, card_gemm) / y),
                         np.log(v[0]))

    return float(_solve(residual, [1.0], [0.7], [1.4])[0])


CARD_GEMM_CALIBRATIONS = {"rtx_4090": "RTX-4090", "rtx_pro_6000": "RTX-PRO-6000"}
"""Calibrations that are ``gddr_no_ecc`` with the GEMM efficiencies fitted to the card's own
operator profile (:func:`fit_card_gemm`), key -> GPU name."""


def fit_card_gemm(base: KernelParams) -> dict[str, dict[str, float]]:
    """GEMM fields of each :data:`CARD_GEMM_CALIBRATIONS` card, fitted to its operator profile.

    :func:`~sim.perf.measurements.card_gemm_points`: vLLM's Llama-3.1-8B GEMMs timed on the
    card at 1..2048 tokens. Four weight shapes do not tell the 128x128 and 256x128 tiles
    apart, so the two share one efficiency; the 64x64 tile, the streaming efficiency, the
    blend exponent and the fixed time are fitted as for the Vidur devices.
    """
    from sim.perf.measurements import card_gemm_points

    names = tuple(f for f in GEMM_FIELDS if f != "gemm_eff_tile_256")
    scale = np.array([1, 1, 1, 1, 1e-6])

    def tied(v):
        kp = _with(base, names, v * scale)
        return dataclasses.replace(kp, gemm_eff_tile_256=kp.gemm_eff_tile_128)

    out = {}
    for gpu_name in CARD_GEMM_CALIBRATIONS.values():
        pts = card_gemm_points(gpu_name)
        gpu = get_gpu(gpu_name)
        m, n, k, y = (pts[c].to_numpy() for c in ("m", "n", "k", "measured_s"))

        def residual(v, m=m, n=n, k=k, y=y, gpu=gpu):
            return np.log(kernels.gemm_time_s(m, n, k, gpu, tied(v)) / y)

        x0 = np.array([getattr(base, f) for f in names]) / scale
        lo = np.array([0.05, 0.05, 0.1, 1.0, 0.0]) / scale
        hi = np.array([1.2, 1.2, 1.2, 20.0, 1e-4]) / scale
        kp = tied(_solve(residual, x0, lo, hi))
        out[gpu_name] = {f: getattr(kp, f) for f in GEMM_FIELDS}
    return out


def gddr_calibrations(a40: KernelParams, factor: float, pcie_eff: float,
                      card_gemm: dict[str, dict[str, float]]) -> dict[str, KernelParams]:
    """``gddr_no_ecc`` and the per-card calibrations built on it (``fitted_on`` left empty)."""
    gddr = dataclasses.replace(scale_memory(a40, factor), allreduce_pcie_eff=pcie_eff)
    out = {GDDR_NO_ECC: gddr}
    for key, gpu in CARD_GEMM_CALIBRATIONS.items():
        out[key] = dataclasses.replace(gddr, **card_gemm[gpu])
    return out


def fit_pcie_allreduce(samples, kp: KernelParams, gpu: str = "RTX-PRO-6000",
                       engine: EngineParams | str = "vllm_v1") -> float:
    """Bus-bandwidth efficiency of all-reduce between GPUs without NVLink (over PCIe).

    ``samples``: ``(bytes, microseconds)`` of graph-captured two-GPU all-reduces
    (:data:`~sim.perf.measurements.PCIE_ALLREDUCE_RTXPRO6000_2GPU`). The latency stays the
    engine's graphed one; only the efficiency on ``gpu``'s PCIe rate is fitted, with the
    same robust loss on relative error as the other fits.
    """
    from sim.perf.analytic import graph_collectives
    from sim.perf.params import load_engine_params

    eng = load_engine_params(engine) if isinstance(engine, str) else engine
    size = np.array([s[0] for s in samples], dtype=np.float64)
    y = np.array([s[1] for s in samples], dtype=np.float64) * 1e-6
    link = get_gpu(gpu).pcie_bytes_per_s

    def residual(v):
        kpp = graph_collectives(dataclasses.replace(kp, allreduce_intra_eff=float(v[0])), eng)
        return np.log(kernels.allreduce_time_s(size, 2, link, kpp) / y)

    return float(_solve(residual, [0.5], [0.01], [1.5])[0])


def gddr_no_ecc_rows(data_root: Path) -> pd.DataFrame:
    """Single-GPU drain iterations of the real runs on GPUs calibrated as ``gddr_no_ecc``."""
    from sim.perf.measurements import load_vllm_drain_iterations

    rows = load_vllm_drain_iterations(data_root)
    keys = {GDDR_NO_ECC, *CARD_GEMM_CALIBRATIONS}
    keep = [get_gpu(g).calibration in keys for g in rows.gpu]
    return rows[np.asarray(keep, dtype=bool) & (rows.tp == 1)].reset_index(drop=True)


def fit_distserve_memory(data_root: Path) -> EngineParams:
    """Fit the DistServe engine's memory reserve to its published KV capacities.

    Linear least squares of the bytes DistServe leaves outside weights and KV on each GPU
    against ``[1, hidden_size, weight_bytes_per_gpu]``: a fixed reserve, a workspace that grows
    with the hidden size, and the share of our weight count its engine does not store.
    """
    from sim.perf.measurements import load_distserve_kv_capacity

    caps = load_distserve_kv_capacity(data_root)
    gpu = get_gpu("A100-80GB-SXM")
    rows = []
    for r in caps.itertuples():
        m = get_model(r.model)
        n = r.tp * r.pp
        kv = m.kv_bytes_per_token / n
        w = m.weight_bytes / n
        left = gpu.memory_bytes * 0.95 - w - r.max_num_tokens * kv
        rows.append((1.0, m.hidden_size, w, left))
    a = np.array(rows)
    coef, *_ = np.linalg.lstsq(a[:, :3], a[:, 3], rcond=None)
    return EngineParams(
        name="distserve", fixed_s=0.0, per_seq_s=0.0, per_layer_s=0.0, per_tp_rank_s=0.0,
        reserved_fixed_gib=float(coef[0]) / (1 << 30), reserved_per_hidden_bytes=float(coef[1]),
        activation_scale=0.0, weight_scale=float(1.0 + coef[2]),
        fitted_on="memory fitted by `python -m sim.perf.fit` to DistServe's "
        "kv_capacity_max_num_tokens.csv; latency overheads live in DistServe's coefficients",
    )


def fit_all(data_root: Path) -> tuple[dict[str, KernelParams], EngineParams]:
    """Run every fit; returns ``({calibration key: KernelParams}, splitwise engine params)``."""
    mlp = load_mlp_profiles(data_root)
    fit_mask = mlp.tp != HELD_OUT_TP
    gemms = gemm_points(mlp[fit_mask])
    elems = elementwise_points(mlp[fit_mask])
    prefill, decode, heads = load_attention(data_root)
    net = load_network(data_root)
    results: dict[str, KernelParams] = {}
    attn = fit_attention(prefill, decode, heads, DEVICE_GPU["a100"], PRIOR)
    attn_values = {f: getattr(attn, f) for f in PREFILL_FIELDS + DECODE_FIELDS}
    nets = {
        "a100": fit_network(net[net.gpu == DEVICE_GPU["a100"]], PRIOR),
        "h100": fit_network(net[net.gpu == DEVICE_GPU["h100"]], PRIOR),
    }
    nets["a40"] = nets["a100"]
    for key, dev in CALIBRATION_DEVICES.items():
        gpu = DEVICE_GPU[dev]
        kp = dataclasses.replace(PRIOR, **attn_values)
        kp = dataclasses.replace(kp, **{f: getattr(nets[key], f) for f in NET_FIELDS})
        kp = fit_gemm(gemms[gemms.device == dev], gpu, kp)
        kp = fit_elementwise(elems[elems.device == dev], gpu, kp)
        note = (
            f"fitted by `python -m sim.perf.fit` to Vidur {dev} mlp.csv (TP {HELD_OUT_TP} held "
            f"out); attention from the A100 profile; collectives from "
            f"{'a100' if key == 'a40' else key}_dgx"
        )
        results[key] = dataclasses.replace(kp, fitted_on=note)
    gddr = gddr_no_ecc_rows(data_root)
    card_gemm = fit_card_gemm(results["a40"])
    factor = fit_gddr_no_ecc(gddr, results["a40"], card_gemm=card_gemm)
    runs = ", ".join(sorted(gddr.run.unique()))
    pcie = fit_pcie_allreduce(PCIE_ALLREDUCE_RTXPRO6000_2GPU, results["a40"])
    note = (f"a40 with its streaming efficiencies x {factor:.4f}, fitted by `python -m "
            f"sim.perf.fit` to the decode iterations after the last admission of the real vLLM "
            f"V1 runs {runs} (engine vllm_v1); allreduce_pcie_eff fitted to LLMServingSim's "
            f"graphed 2 x RTX PRO 6000 PCIe all-reduce profile (measurements."
            f"PCIE_ALLREDUCE_RTXPRO6000_2GPU)")
    for key, kp in gddr_calibrations(results["a40"], factor, pcie, card_gemm).items():
        extra = ("" if key == GDDR_NO_ECC else f"; GEMM efficiencies fitted to the "
                 f"{CARD_GEMM_CALIBRATIONS[key]}'s Llama-3.1-8B operator profile "
                 f"(measurements.CARD_GEMM_US)")
        results[key] = dataclasses.replace(kp, fitted_on=note + extra)
    sw = load_splitwise(data_root)
    sw_fit = sw[(sw.gpu != HELD_OUT_SPLITWISE_GPU) & sw.gpu.notna()]
    base_engine = EngineParams(
        name="vllm_splitwise_2023", fixed_s=5e-3, per_seq_s=1e-5, per_layer_s=1e-5,
        per_tp_rank_s=1e-3, fitted_on="",
    )
    engine = fit_engine(sw_fit, base_engine, results)
    engine = dataclasses.replace(
        engine,
        fitted_on=f"fitted by `python -m sim.perf.fit` to Splitwise vLLM measurements on "
        f"A100 ({HELD_OUT_SPLITWISE_GPU} held out)",
    )
    return results, engine


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: fit and write the YAML files."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=default_data_root(),
                    help="folder holding vidur_profiles/ (default: ../shared/data)")
    ap.add_argument("--out", type=Path, default=CONF_DIR, help="conf folder to write into")
    args = ap.parse_args(argv)
    kernel_params, engine = fit_all(args.data_root)
    (args.out / "calibration").mkdir(parents=True, exist_ok=True)
    (args.out / "engine").mkdir(parents=True, exist_ok=True)
    header = "Written by `python -m sim.perf.fit`; do not edit by hand, rerun the fit."
    for key, kp in kernel_params.items():
        dump_params(kp, args.out / "calibration" / f"{key}.yaml", header)
        print(f"wrote {args.out / 'calibration' / f'{key}.yaml'}")
    dump_params(engine, args.out / "engine" / "vllm_splitwise_2023.yaml", header)
    print(f"wrote {args.out / 'engine' / 'vllm_splitwise_2023.yaml'}")
    dump_params(fit_distserve_memory(args.data_root), args.out / "engine" / "distserve.yaml",
                header)
    print(f"wrote {args.out / 'engine' / 'distserve.yaml'}")


if __name__ == "__main__":
    from sim.catalog._load import run_cli

    run_cli(main)
