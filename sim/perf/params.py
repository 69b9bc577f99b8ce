"""Fitted parameters of the analytic model: kernel efficiencies per GPU and engine overheads.

Two kinds of parameters, stored as YAML so a fit is reviewable in a diff:

* ``conf/calibration/<key>.yaml`` -> :class:`KernelParams`: how close each kernel class
  (GEMM, elementwise, attention, collectives) gets to the GPU's datasheet peaks. Efficiencies
  are fractions of peak, so one fit transfers to GPUs of the same architecture.
* ``conf/engine/<name>.yaml`` -> :class:`EngineParams`: host-side per-iteration costs of a
  serving engine (scheduling, input preparation, sampling, kernel launches). These depend on
  the engine version (CUDA graphs or not), not on the GPU.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from sim.catalog._load import CONF_DIR, CatalogError, build_dataclass, load_yaml


def _check_fraction(obj: object, names: tuple[str, ...], upper: float = 1.5) -> None:
    for name in names:
        value = getattr(obj, name)
        if not 0.0 < value <= upper:
            raise CatalogError(f"field {name!r} must be in (0, {upper}], got {value}")


def _check_nonneg(obj: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < 0:
            raise CatalogError(f"field {name!r} must be >= 0, got {value}")


@dataclass(frozen=True, slots=True)
class KernelParams:
    """Kernel efficiencies of one GPU architecture (fractions of datasheet peaks, seconds).

    GEMM time is modelled as a smooth maximum of a compute term (wave-quantised tiles, the
    fastest of three tile shapes, as cuBLAS heuristics choose) and a memory term, plus a fixed
    launch/ramp time::

        t = (t_compute**p + t_memory**p) ** (1 / p) + overhead
    """

    gemm_eff_tile_64: float
    """Compute efficiency of 64x64 output tiles (small-M GEMMs), fraction of peak FLOP/s."""
    gemm_eff_tile_128: float
    """Compute efficiency of 128x128 tiles."""
    gemm_eff_tile_256: float
    """Compute efficiency of 256x128 tiles (large GEMMs)."""
    gemm_memory_eff: float
    """Fraction of peak HBM bandwidth reached when streaming GEMM operands."""
    gemm_blend_power: float
    """Exponent p of the smooth maximum between compute and memory time (>= 1)."""
    gemm_overhead_s: float
    """Fixed time per GEMM kernel, seconds."""
    elementwise_memory_eff: float
    """Fraction of peak HBM bandwidth reached by norms, activations, residual adds, RoPE."""
    elementwise_overhead_s: float
    """Fixed time per elementwise kernel, seconds."""
    attn_prefill_compute_eff: float
    """Prefill attention (FlashAttention) compute efficiency, fraction of peak FLOP/s."""
    attn_prefill_memory_eff: float
    """Prefill attention efficiency reading the cached context (paged KV), fraction of peak."""
    attn_prefill_blend_power: float
    """Smooth-maximum exponent for prefill attention."""
    attn_causal_frac: float
    """Share of the new-token square the kernel pays for: 0.5 skips masked tiles, 1.0 not."""
    attn_prefill_overhead_s: float
    """Fixed time per prefill attention kernel, seconds."""
    attn_decode_memory_eff: float
    """Decode attention: fraction of peak HBM bandwidth reached reading the KV cache."""
    attn_decode_per_seq_s: float
    """Decode attention: extra time per sequence in the batch, seconds."""
    attn_decode_overhead_s: float
    """Fixed time per decode attention kernel, seconds."""
    allreduce_latency_s: float
    """All-reduce fixed latency, seconds."""
    allreduce_latency_per_rank_s: float
    """All-reduce latency added per extra participating GPU, seconds."""
    allreduce_intra_eff: float
    """All-reduce bus-bandwidth efficiency over the intra-node link (NVLink or PCIe)."""
    allreduce_inter_eff: float
    """All-reduce bus-bandwidth efficiency over the cross-node network."""
    allreduce_inter_nic_exponent: float
    """A cross-node ring with d GPUs per node gets ``d ** exponent`` NICs' bandwidth (0..1)."""
    p2p_latency_s: float
    """Point-to-point send/recv latency (pipeline stages), seconds."""
    p2p_intra_eff: float
    """Send/recv bandwidth efficiency inside a node."""
    p2p_inter_eff: float
    """Send/recv bandwidth efficiency across nodes."""
    allreduce_pcie_eff: float = 0.0
    """Collective bus-bandwidth efficiency between GPUs of one node that have no NVLink (the
    path goes over PCIe: peer-to-peer when the host allows it, else through host memory),
    fraction of ``pcie_bandwidth_gb_per_s``; 0 = ``allreduce_intra_eff``. Tensor-parallel
    all-reduces and expert-parallel dispatch of such GPUs use it."""
    fitted_on: str = ""
    """How these numbers were obtained (data, held-out part, command)."""

    def __post_init__(self) -> None:
        _check_fraction(
            self,
            (
                "gemm_eff_tile_64",
                "gemm_eff_tile_128",
                "gemm_eff_tile_256",
                "gemm_memory_eff",
                "elementwise_memory_eff",
                "attn_prefill_compute_eff",
                "attn_prefill_memory_eff",
                "attn_decode_memory_eff",
                "allreduce_intra_eff",
                "allreduce_inter_eff",
                "p2p_intra_eff",
                "p2p_inter_eff",
            ),
        )
        _check_nonneg(
            self,
            (
                "gemm_overhead_s",
                "elementwise_overhead_s",
                "attn_prefill_overhead_s",
                "attn_decode_per_seq_s",
                "attn_decode_overhead_s",
                "allreduce_latency_s",
                "allreduce_latency_per_rank_s",
                "p2p_latency_s",
            ),
        )
        for name in ("gemm_blend_power", "attn_prefill_blend_power"):
            if getattr(self, name) < 1.0:
                raise CatalogError(f"field {name!r} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.allreduce_pcie_eff <= 1.5:
            raise CatalogError("field 'allreduce_pcie_eff' must be in [0, 1.5], got "
                               f"{self.allreduce_pcie_eff}")
        if not 0.0 <= self.allreduce_inter_nic_exponent <= 1.0:
            raise CatalogError("field 'allreduce_inter_nic_exponent' must be in [0, 1], got "
                               f"{self.allreduce_inter_nic_exponent}")
        if not 0.5 <= self.attn_causal_frac <= 1.0:
            raise CatalogError(f"field 'attn_causal_frac' must be in [0.5, 1], got "
                               f"{self.attn_causal_frac}")


@dataclass(frozen=True, slots=True)
class EngineParams:
    """Host-side costs of one serving-engine iteration, seconds.

    Host time per iteration ``fixed_s + per_seq_s * num_seqs + per_tp_rank_s * (tp - 1)
    + per_prefill_sq_token_s * sum(c_i ** 2)`` is added to the GPU time. Without CUDA graphs
    the host launches every kernel, so a layer takes ``max(GPU time, per_layer_s)``: at small
    batches the launch rate, not the GPU, sets the pace.
    """

    name: str
    """Engine profile name, e.g. ``vllm_v1``."""
    fixed_s: float
    """Per-iteration scheduling, input preparation and sampling time, seconds."""
    per_seq_s: float
    """Extra host time per scheduled sequence (sampling, detokenisation), seconds."""
    per_layer_s: float
    """Host time to launch one layer's kernels (0 with CUDA graphs), seconds."""
    per_tp_rank_s: float
    """Extra per-iteration coordination time per additional TP worker, seconds."""
    per_prefill_sq_token_s: float = 0.0
    """Host/unsharded time per squared prefill-chunk token (e.g. building masks), seconds."""
    custom_allreduce_latency_s: float = 0.0
    """Latency of the engine's own intra-node all-reduce for small messages (vLLM's CUDA-IPC
    custom all-reduce), seconds; 0 = always NCCL (the fitted collective parameters)."""
    custom_allreduce_max_bytes: int = 0
    """Largest message the custom all-reduce handles; larger ones fall back to NCCL."""
    fused_add_norm: bool = False
    """Whether each residual add runs fused into the RMSNorm/LayerNorm after it (vLLM V1's
    torch.compile does this), halving the per-layer norm + add kernels."""
    graph_allreduce_latency_s: float = 0.0
    """Fixed latency of an intra-node NCCL all-reduce captured in a CUDA graph (no host launch
    or synchronisation in it), seconds; replaces the calibration's ``allreduce_latency_s``,
    which was fitted to eagerly launched collectives. 0 = keep the calibration's."""
    reserved_fixed_gib: float = 1.0
    """Per-GPU memory the engine keeps outside weights and KV (CUDA context, NCCL, graphs), GiB."""
    reserved_per_hidden_bytes: float = 0.0
    """Extra per-GPU workspace per unit of model hidden size, bytes."""
    activation_scale: float = 1.0
    """Multiplier on the profiled activation peak of a ``max_num_batched_tokens`` forward."""
    weight_scale: float = 1.0
    """Multiplier on the catalog's weight bytes (an engine that stores fewer or more)."""
    fitted_on: str = ""
    """How these numbers were obtained."""

    def __post_init__(self) -> None:
        _check_nonneg(
            self,
            (
                "fixed_s",
                "per_seq_s",
                "per_layer_s",
                "per_tp_rank_s",
                "per_prefill_sq_token_s",
                "custom_allreduce_latency_s",
                "custom_allreduce_max_bytes",
                "graph_allreduce_latency_s",
                "reserved_fixed_gib",
                "reserved_per_hidden_bytes",
                "activation_scale",
            ),
        )
        if not 0.5 <= self.weight_scale <= 1.5:
            raise CatalogError(
                f"field 'weight_scale' must be in [0.5, 1.5], got {self.weight_scale}"
            )


@functools.cache
def load_kernel_params(key: str, conf_dir: Path = CONF_DIR) -> KernelParams:
    """Load ``conf/calibration/<key>.yaml``.

    Raises:
        CatalogError: if the file is missing (listing the available keys) or invalid.
    """
    path = conf_dir / "calibration" / f"{key}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (conf_dir / "calibration").glob("*.yaml"))
        raise CatalogError(f"no calibration {key!r}; known: {', '.join(known)}")
    return build_dataclass(KernelParams, load_yaml(path), f"conf/calibration/{path.name}")


@functools.cache
def load_engine_params(name: str, conf_dir: Path = CONF_DIR) -> EngineParams:
    """Load ``conf/engine/<name>.yaml``.

    Raises:
        CatalogError: if the file is missing (listing the available names) or invalid.
    """
    path = conf_dir / "engine" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (conf_dir / "engine").glob("*.yaml"))
        raise CatalogError(f"no engine profile {name!r}; known: {', '.join(known)}")
    return build_dataclass(EngineParams, load_yaml(path), f"conf/engine/{path.name}")


def dump_params(params: KernelParams | EngineParams, path: Path, header: str) -> None:
    """Write fitted parameters as commented YAML (used by the calibration command)."""
    values = {
        k: (float(f"{float(v):.6g}") if isinstance(v, int | float) and not isinstance(v, bool)
            else v)
        for k, v in asdict(params).items()
    }
    body = yaml.safe_dump(values, sort_keys=False, width=100)
    path.write_text("".join(f"# {line}\n" for line in header.splitlines()) + body)
