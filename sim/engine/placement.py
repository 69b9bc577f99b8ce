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
    KernelParams,
    LatencyBackend,
    ProfileTableBackend,
    get_link,
    load_engine_params,
    plan_memory,
)
from sim.perf.analytic import ExpertParallelGroupBackend


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
                f"{cfg.pipeline_parallel_size} x dp {cfg.data_parallel_size}) but a node has "
                f"{cluster.gpus_per_node}; "
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


def check_expert_parallel(model: ModelSpec, cfg: InstanceConfig, sim: SimConfig) -> None:
    """Raise a CatalogError unless an expert-parallel instance fits the model and backend."""
    ep = cfg.expert_parallel_size
    if ep == 1:
        return
    if not model.is_moe:
        raise CatalogError(
            f"instance field 'enable_expert_parallel' needs an MoE model; {model.name} is "
            "dense: set enable_expert_parallel=false and use replicas for data parallelism")
    if model.num_experts % ep:
        raise CatalogError(
            f"instance field 'data_parallel_size'={ep} (expert-parallel degree) does not "
            f"divide {model.name}'s {model.num_experts} experts: pick a divisor of "
            f"{model.num_experts}")
    if sim.perf_backend != "analytic":
        raise CatalogError(f"expert-parallel instances need sim.perf_backend=analytic, got "
                           f"{sim.perf_backend!r}")


def make_backend_for(model: ModelSpec, gpu: GpuSpec, cfg: InstanceConfig,
                     sim: SimConfig, kernel_params: KernelParams | None = None
                     ) -> LatencyBackend:
    """The latency backend the simulator uses for one instance.

    ``cfg`` holds the per-rank limits (a :meth:`~InstanceConfig.resolved` config, before
    :meth:`~InstanceConfig.ep_group`): an expert-parallel group is timed by
    :class:`ExpertParallelGroupBackend` with one rank's ``max_num_batched_tokens``.
    ``kernel_params`` replaces the GPU's calibration (analytic backends).
    """
    tp, pp = cfg.tensor_parallel_size, cfg.pipeline_parallel_size
    check_expert_parallel(model, cfg, sim)
    if cfg.expert_parallel_size > 1:
        return ExpertParallelGroupBackend(model, gpu, ep=cfg.expert_parallel_size, tp=tp,
                                          max_num_batched_tokens=cfg.max_num_batched_tokens,
                                          engine=sim.engine, kernel_params=kernel_params)
    if sim.perf_backend == "distserve":
        if not sim.distserve_coeffs_path:
            raise CatalogError("sim.perf_backend=distserve needs sim.distserve_coeffs_path")
        return DistServeBackend(model, gpu, tp=tp, pp=pp, coeffs=sim.distserve_coeffs_path)
    if sim.perf_backend == "profile_table":
        if not sim.profile_dir:
            raise CatalogError("sim.perf_backend=profile_table needs sim.profile_dir")
        return ProfileTableBackend(model, gpu, sim.profile_dir, tp=tp, pp=pp, engine=sim.engine)
    return AnalyticBackend(model, gpu, tp=tp, pp=pp, engine=sim.engine,
                           kernel_params=kernel_params)


def build_instances(model: ModelSpec, gpu: GpuSpec, cluster: ClusterConfig, sim: SimConfig,
                    hash_block_tokens: int) -> BuiltCluster:
    """Create every instance with its KV capacity and (shared) latency backend.

    An expert-parallel group (``InstanceConfig.enable_expert_parallel``, ep =
    ``data_parallel_size``) becomes one instance whose config is
    :meth:`~InstanceConfig.ep_group` of the resolved per-rank one (vLLM's default limits are
    resolved per rank, then x ep) and whose KV blocks are ep x one rank's (the memory model's
    plan for a rank with the per-rank token budget, or ``num_gpu_blocks_override`` x ep).
    """
    ranks = [c.resolved(gpu.memory_gib, gpu.name) for c in cluster.expanded()]
    cfgs = [rank.ep_group() for rank in ranks]
    nodes = place(cluster)
    engine_name = "distserve" if sim.perf_backend == "distserve" else sim.engine
    engine = load_engine_params(engine_name)
    backends_by_shape: dict[tuple, LatencyBackend] = {}
    instances, backends = [], []
    for i, (rank, cfg) in enumerate(zip(ranks, cfgs, strict=True)):
        ep = rank.expert_parallel_size
        if cfg.num_gpu_blocks_override:
            blocks = cfg.num_gpu_blocks_override
        else:
            blocks = ep * plan_memory(
                model, gpu, rank.tensor_parallel_size, rank.pipeline_parallel_size, engine,
                gpu_memory_utilization=rank.gpu_memory_utilization, block_size=rank.block_size,
                max_num_batched_tokens=rank.max_num_batched_tokens,
            ).num_blocks
        shape = (rank.tensor_parallel_size, rank.pipeline_parallel_size)
        if ep > 1:
            shape += (ep, rank.max_num_batched_tokens)
        if shape not in backends_by_shape:
            backends_by_shape[shape] = make_backend_for(model, gpu, rank, sim)
        instances.append(Instance(i, cfg, blocks, hash_block_tokens))
        backends.append(backends_by_shape[shape])
    network = get_link(cluster.network)
    intra_bw = gpu.intra_node_bytes_per_s * cluster.intra_node_efficiency_frac

    def link_bandwidth(src: int, dst: int) -> tuple[float, float]:
        # a request's KV sits on one data-parallel rank
        shards = min(cfgs[src].num_gpus_per_rank, cfgs[dst].num_gpus_per_rank)
        if nodes[src] == nodes[dst]:
            return intra_bw * shards, 10e-6
        return network.effective_bytes_per_s * shards, network.latency_s

    return BuiltCluster(instances, backends, nodes, link_bandwidth)
