"""Turn a cluster config into instances: node placement, KV blocks, latency backends, links."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sim.catalog import CatalogError, GpuSpec, ModelSpec
from sim.engine.config import ClusterConfig, SimConfig
from sim.instance import Instance, InstanceConfig
from sim.perf import (
    AnalyticBackend,
    DistServeBackend,
    LatencyBackend,
    ProfileTableBackend,
    get_link,
    load_engine_params,
    plan_memory,
)


@dataclass
class BuiltCluster:
    """Instances with their backends, node of each, and the KV link bandwidth function."""

    instances: list[Instance]
    backends: list[LatencyBackend]
    nodes: list[int]
    link_bandwidth: Callable[[int, int], tuple[float, float]]
    """(src, dst) instance -> (bytes/s, latency s) of a KV transfer link."""


def place(cluster: ClusterConfig) -> list[int]:
    """Node of every instance: pinned ones where asked, the rest first-fit in order.

    Raises:
        ValueError: when the instances need more GPUs than a node or the cluster has.
    """
    free = [cluster.gpus_per_node] * cluster.num_nodes
    nodes = []
    for i, cfg in enumerate(cluster.expanded()):
        need = cfg.num_gpus
        if need > cluster.gpus_per_node:
            raise ValueError(
                f"instance {i} needs {need} GPUs (tp {cfg.tensor_parallel_size} x pp "
                f"{cfg.pipeline_parallel_size}) but a node has {cluster.gpus_per_node}; "
                "instances do not span nodes"
            )
        if cfg.node >= 0:
            if cfg.node >= cluster.num_nodes or free[cfg.node] < need:
                raise ValueError(f"instance {i} pinned to node {cfg.node}, which has "
                                 f"{free[cfg.node] if cfg.node < cluster.num_nodes else 0} "
                                 f"free GPUs of the {need} it needs")
            node = cfg.node
        else:
            node = next((n for n, f in enumerate(free) if f >= need), -1)
            if node < 0:
                total = sum(c.num_gpus for c in cluster.expanded())
                raise ValueError(
                    f"cluster has {cluster.num_nodes} x {cluster.gpus_per_node} = "
                    f"{cluster.num_gpus} GPUs but its instances need {total}; add nodes or "
                    "remove instances"
                )
        free[node] -= need
        nodes.append(node)
    return nodes


def make_backend_for(model: ModelSpec, gpu: GpuSpec, cfg: InstanceConfig,
                     sim: SimConfig) -> LatencyBackend:
    """The latency backend the simulator uses for one instance."""
    tp, pp = cfg.tensor_parallel_size, cfg.pipeline_parallel_size
    if sim.perf_backend == "distserve":
        if not sim.distserve_coeffs_path:
            raise CatalogError("sim.perf_backend=distserve needs sim.distserve_coeffs_path")
        return DistServeBackend(model, gpu, tp=tp, pp=pp, coeffs=sim.distserve_coeffs_path)
    if sim.perf_backend == "profile_table":
        if not sim.profile_dir:
            raise CatalogError("sim.perf_backend=profile_table needs sim.profile_dir")
        return ProfileTableBackend(model, gpu, sim.profile_dir, tp=tp, pp=pp, engine=sim.engine)
    return AnalyticBackend(model, gpu, tp=tp, pp=pp, engine=sim.engine)


def build_instances(model: ModelSpec, gpu: GpuSpec, cluster: ClusterConfig, sim: SimConfig,
                    hash_block_tokens: int) -> BuiltCluster:
    """Create every instance with its KV capacity and (shared) latency backend."""
    cfgs = [c.resolved(gpu.memory_gib, gpu.name) for c in cluster.expanded()]
    nodes = place(cluster)
    engine_name = "distserve" if sim.perf_backend == "distserve" else sim.engine
    engine = load_engine_params(engine_name)
    backends_by_shape: dict[tuple, LatencyBackend] = {}
    instances, backends = [], []
    for i, cfg in enumerate(cfgs):
        if cfg.num_gpu_blocks_override:
            blocks = cfg.num_gpu_blocks_override
        else:
            blocks = plan_memory(
                model, gpu, cfg.tensor_parallel_size, cfg.pipeline_parallel_size, engine,
                gpu_memory_utilization=cfg.gpu_memory_utilization, block_size=cfg.block_size,
                max_num_batched_tokens=cfg.max_num_batched_tokens,
            ).num_blocks
        shape = (cfg.tensor_parallel_size, cfg.pipeline_parallel_size)
        if shape not in backends_by_shape:
            backends_by_shape[shape] = make_backend_for(model, gpu, cfg, sim)
        instances.append(Instance(i, cfg, blocks, hash_block_tokens))
        backends.append(backends_by_shape[shape])
    network = get_link(cluster.network)
    intra_bw = gpu.intra_node_bytes_per_s * cluster.intra_node_efficiency_frac

    def link_bandwidth(src: int, dst: int) -> tuple[float, float]:
        shards = min(cfgs[src].num_gpus, cfgs[dst].num_gpus)
        if nodes[src] == nodes[dst]:
            return intra_bw * shards, 10e-6
        return network.effective_bytes_per_s * shards, network.latency_s

    return BuiltCluster(instances, backends, nodes, link_bandwidth)
