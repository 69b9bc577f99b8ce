"""GPU specifications (``conf/hardware/*.yaml``): peak compute, memory and link speeds."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from sim.catalog._load import CONF_DIR, CatalogError, build_dataclass, load_yaml, lookup
from sim.catalog._load import normalise_name as _norm

GIB = 1 << 30


@dataclass(slots=True)
class GpuSpec:
    """One GPU model as its vendor's datasheet states it.

    YAML fields carry their unit in the name (GiB, TFLOP/s, GB/s with 1 GB = 1e9 bytes);
    the properties below convert once to base units (bytes, FLOP/s, bytes/s).
    """

    name: str
    """Display name, e.g. ``A100-80GB-SXM``; lookups ignore case and punctuation."""
    memory_gib: float
    """Device memory, GiB: what CUDA reports to vLLM where known (RTX 4090: 23.52), else the
    nvidia-smi total (A100-80GB: 80), which is ~0.5 GiB more than CUDA reports."""
    peak_dense_tflops: float
    """Peak dense (non-sparse) bf16/fp16 tensor-core throughput, TFLOP/s (fp32 accumulate)."""
    hbm_bandwidth_gb_per_s: float
    """Peak device-memory bandwidth, GB/s."""
    num_sms: int
    """Streaming multiprocessors (sets GEMM wave quantisation)."""
    l2_cache_mib: float
    """L2 cache size, MiB."""
    nvlink_bandwidth_gb_per_s: float
    """NVLink bandwidth per GPU per direction, GB/s (0 when the GPU has none)."""
    pcie_bandwidth_gb_per_s: float
    """Host interface bandwidth per direction, GB/s (PCIe Gen4 x16 ~ 32, Gen5 ~ 64)."""
    network_bandwidth_gb_per_s: float
    """Default scale-out network bandwidth per GPU per direction, GB/s (e.g. 25 for 200 Gb/s)."""
    calibration: str
    """Which ``conf/calibration/<name>.yaml`` fitted efficiencies apply (e.g. ``a100``)."""
    tdp_watts: float = 0.0
    """Board power, W (informational)."""
    notes: str = ""
    """Where the numbers come from."""

    def __post_init__(self) -> None:
        for field in (
            "memory_gib",
            "peak_dense_tflops",
            "hbm_bandwidth_gb_per_s",
            "num_sms",
            "l2_cache_mib",
            "pcie_bandwidth_gb_per_s",
            "network_bandwidth_gb_per_s",
        ):
            value = getattr(self, field)
            if not value > 0:
                raise CatalogError(f"field {field!r} must be > 0, got {value}")
        if self.nvlink_bandwidth_gb_per_s < 0:
            raise CatalogError("field 'nvlink_bandwidth_gb_per_s' must be >= 0")
        if not self.calibration:
            raise CatalogError("field 'calibration' must name a conf/calibration/*.yaml file")

    @property
    def memory_bytes(self) -> int:
        """Device memory, bytes."""
        return int(self.memory_gib * GIB)

    @property
    def peak_flops_per_s(self) -> float:
        """Peak dense half-precision throughput, FLOP/s."""
        return self.peak_dense_tflops * 1e12

    @property
    def hbm_bytes_per_s(self) -> float:
        """Peak memory bandwidth, bytes/s."""
        return self.hbm_bandwidth_gb_per_s * 1e9

    @property
    def nvlink_bytes_per_s(self) -> float:
        """NVLink bandwidth per direction, bytes/s (0 if absent)."""
        return self.nvlink_bandwidth_gb_per_s * 1e9

    @property
    def pcie_bytes_per_s(self) -> float:
        """PCIe bandwidth per direction, bytes/s."""
        return self.pcie_bandwidth_gb_per_s * 1e9

    @property
    def intra_node_bytes_per_s(self) -> float:
        """Bandwidth between two GPUs of one node: NVLink if present, else PCIe, bytes/s."""
        return self.nvlink_bytes_per_s or self.pcie_bytes_per_s

    @property
    def network_bytes_per_s(self) -> float:
        """Default cross-node bandwidth per GPU, bytes/s."""
        return self.network_bandwidth_gb_per_s * 1e9


@functools.cache
def _gpus(conf_dir: Path) -> dict[str, GpuSpec]:
    entries: dict[str, GpuSpec] = {}
    for path in sorted((conf_dir / "hardware").glob("*.yaml")):
        spec = build_dataclass(GpuSpec, load_yaml(path), f"conf/hardware/{path.name}")
        for key in {_norm(spec.name), _norm(path.stem)}:
            if key in entries and entries[key].name != spec.name:
                raise CatalogError(
                    f"conf/hardware/{path.name}: name {spec.name!r} clashes with "
                    f"{entries[key].name!r}"
                )
            entries[key] = spec
    return entries


def all_gpus(conf_dir: Path = CONF_DIR) -> list[GpuSpec]:
    """Every GPU in the catalog, sorted by name."""
    return sorted({g.name: g for g in _gpus(conf_dir).values()}.values(), key=lambda g: g.name)


def get_gpu(name: str | GpuSpec, conf_dir: Path = CONF_DIR) -> GpuSpec:
    """Look up a GPU by name or file stem (case-insensitive).

    Raises:
        CatalogError: listing the known GPUs when ``name`` is unknown.
    """
    if isinstance(name, GpuSpec):
        return name
    return lookup(_gpus(conf_dir), name, "GPU")


def gpu_from_dict(raw: dict, source: str = "hardware config") -> GpuSpec:
    """Validate a GPU given inline (e.g. from a Hydra config) instead of by name."""
    return build_dataclass(GpuSpec, raw, source)
