"""Cluster and simulation configs (Hydra groups ``cluster`` and ``sim``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sim.instance.config import InstanceConfig
from sim.perf.transfer import LINKS

PERF_BACKENDS = ("analytic", "distserve", "profile_table")


@dataclass
class ClusterConfig:
    """Nodes of GPUs and the instances placed on them."""

    num_nodes: int = 1
    """Nodes in the cluster."""
    gpus_per_node: int = 8
    """GPUs per node (NVLink or PCIe between them)."""
    network: str = "infiniband_hdr_200g"
    """Cross-node link preset per GPU pair (see ``sim.perf.transfer.LINKS``)."""
    intra_node_efficiency_frac: float = 0.8
    """Share of the GPU's NVLink/PCIe bandwidth a KV transfer inside a node reaches."""
    instances: list[InstanceConfig] = field(default_factory=lambda: [InstanceConfig()])
    """Instance groups (``replicas`` each), placed first-fit on nodes unless ``node`` is set."""

    def __post_init__(self) -> None:
        if self.num_nodes < 1 or self.gpus_per_node < 1:
            raise ValueError(
                f"cluster needs num_nodes >= 1 and gpus_per_node >= 1, got {self.num_nodes} x "
                f"{self.gpus_per_node}"
            )
        if self.network not in LINKS:
            raise ValueError(f"cluster.network {self.network!r} is not one of {', '.join(LINKS)}")
        if not 0 < self.intra_node_efficiency_frac <= 1:
            raise ValueError("cluster.intra_node_efficiency_frac must be in (0, 1]")
        if not self.instances:
            raise ValueError("cluster.instances is empty: give at least one instance")
        self.instances = [i if isinstance(i, InstanceConfig) else InstanceConfig(**i)
                          for i in self.instances]

    @property
    def num_gpus(self) -> int:
        """GPUs in the cluster."""
        return self.num_nodes * self.gpus_per_node

    def num_gpus_used(self) -> int:
        """GPUs the instances occupy (goodput per GPU divides by this)."""
        return sum(c.num_gpus for c in self.expanded())

    def expanded(self) -> list[InstanceConfig]:
        """One config per instance (groups expanded by ``replicas``)."""
        out = []
        for group in self.instances:
            out.extend([group] * group.replicas)
        return out


@dataclass
class SimConfig:
    """How the simulator times and runs a cluster."""

    perf_backend: str = "analytic"
    """analytic, distserve (DistServe's coefficients) or profile_table."""
    engine: str = "vllm_v1"
    """Engine overhead profile in ``conf/engine`` (analytic backends)."""
    distserve_coeffs_path: str = ""
    """CSV of DistServe's coefficients (perf_backend=distserve)."""
    profile_dir: str = ""
    """Folder of Vidur ``mlp.csv`` tables for this GPU (perf_backend=profile_table)."""
    time_limit_s: float = 0.0
    """Stop at this simulated time; in-flight requests then fail (0 = run to the end)."""
    output_prediction_cv: float = 0.0
    """Relative noise of the output-length prediction given to routers (0 = exact)."""
    check_invariants: bool = False
    """Assert KV invariants after every event (slow; tests)."""
    fast_forward: bool = True
    """Advance decode-only stretches in closed form (False: one event per iteration)."""
    record_itl: bool = False
    """Keep every inter-token gap (vLLM's ITL: ``Simulator.itl_parts``, summarised by
    ``sim.engine.itl.InterTokenGaps``; ``simulate.py`` turns it on). Off it saves ~5-8% of the
    simulator's CPU time; records are the same either way."""

    def __post_init__(self) -> None:
        if self.perf_backend not in PERF_BACKENDS:
            raise ValueError(
                f"sim.perf_backend {self.perf_backend!r} is not one of {', '.join(PERF_BACKENDS)}"
            )
        if self.time_limit_s < 0:
            raise ValueError(f"sim.time_limit_s must be >= 0, got {self.time_limit_s}")
        if self.output_prediction_cv < 0:
            raise ValueError("sim.output_prediction_cv must be >= 0")
