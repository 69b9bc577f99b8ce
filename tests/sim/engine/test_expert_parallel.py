"""Expert-parallel instances (``InstanceConfig.enable_expert_parallel`` + ``data_parallel_size``).

``vllm serve --data-parallel-size ep --enable-expert-parallel`` on an MoE model is one
simulated instance for the lock-stepped ranks: timed by ``ExpertParallelGroupBackend``,
scheduling with ep x one rank's slots, token budget and KV blocks, occupying tp x ep GPUs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from sim.catalog import CatalogError, get_gpu, get_model
from sim.engine import ClusterConfig, SimConfig, Simulator
from sim.engine.placement import build_instances
from sim.instance import InstanceConfig
from sim.metrics import records
from sim.perf import load_engine_params, plan_memory
from sim.perf.analytic import ExpertParallelGroupBackend
from sim.routers import make_router
from tests.sim.engine.conftest import random_workload

MOE = get_model("qwen3_30b_a3b")  # 128 experts
DENSE = get_model("llama31_8b")
H100 = get_gpu("h100_sxm_80gb")
A100 = get_gpu("a100_80gb_sxm")


def ep_cfg(**kw) -> InstanceConfig:
    kw.setdefault("data_parallel_size", 2)
    kw.setdefault("enable_expert_parallel", True)
    return InstanceConfig(**kw)


def test_data_parallel_without_expert_parallel_points_to_replicas():
    with pytest.raises(ValueError, match="data_parallel_size.*replicas=4"):
        InstanceConfig(data_parallel_size=4)


def test_expert_parallel_needs_data_parallel_ranks_and_no_pipeline():
    with pytest.raises(ValueError, match="enable_expert_parallel.*data_parallel_size >= 2"):
        InstanceConfig(enable_expert_parallel=True)
    with pytest.raises(ValueError, match="pipeline_parallel_size=1"):
        ep_cfg(pipeline_parallel_size=2)
    with pytest.raises(ValueError, match="data_parallel_size"):
        ep_cfg(data_parallel_size=0)


def test_expert_parallel_needs_an_moe_model():
    cluster = ClusterConfig(instances=[ep_cfg()])
    with pytest.raises(CatalogError, match="enable_expert_parallel.*MoE.*replicas"):
        build_instances(DENSE, H100, cluster, SimConfig(), 16)


def test_expert_parallel_degree_must_divide_the_experts():
    cluster = ClusterConfig(instances=[ep_cfg(data_parallel_size=3)])
    with pytest.raises(CatalogError, match="data_parallel_size.*128 experts"):
        build_instances(MOE, H100, cluster, SimConfig(), 16)


def test_expert_parallel_needs_the_analytic_backend():
    cluster = ClusterConfig(instances=[ep_cfg()])
    sim = SimConfig(perf_backend="profile_table", profile_dir="/nonexistent")
    with pytest.raises(CatalogError, match="perf_backend=analytic"):
        build_instances(MOE, H100, cluster, sim, 16)


def test_gpu_count_is_tp_times_ep():
    cfg = ep_cfg(tensor_parallel_size=2, data_parallel_size=4)
    assert cfg.num_gpus == 8 and cfg.num_gpus_per_rank == 2 and cfg.expert_parallel_size == 4
    cluster = ClusterConfig(num_nodes=2, instances=[cfg, InstanceConfig(replicas=2)])
    assert cluster.num_gpus_used() == 10
    built = build_instances(MOE, H100, cluster, SimConfig(), 16)
    assert built.nodes == [0, 1, 1]
    with pytest.raises(ValueError, match="dp 4"):
        build_instances(MOE, H100, ClusterConfig(instances=[ep_cfg(tensor_parallel_size=4,
                                                                     data_parallel_size=4)]),
                        SimConfig(), 16)


def test_limits_and_blocks_are_the_per_rank_values_times_ep():
    # vLLM's defaults resolved per rank (H100: 8192 tokens, 1024 seqs), then x ep
    built = build_instances(MOE, H100, ClusterConfig(instances=[ep_cfg(data_parallel_size=4)]),
                            SimConfig(), 16)
    inst, backend = built.instances[0], built.backends[0]
    assert (inst.cfg.max_num_batched_tokens, inst.cfg.max_num_seqs) == (4 * 8192, 4 * 1024)
    rank_blocks = plan_memory(MOE, H100, 1, 1, load_engine_params("vllm_v1"),
                              gpu_memory_utilization=0.9, block_size=16,
                              max_num_batched_tokens=8192).num_blocks
    assert inst.kv.num_blocks == 4 * rank_blocks
    assert isinstance(backend, ExpertParallelGroupBackend)
    assert (backend.ep, backend.tp, backend.budget) == (4, 1, 8192)
    # explicit per-rank flags and vLLM's per-rank num_gpu_blocks
    cfg = ep_cfg(max_num_seqs=64, max_num_batched_tokens=1024, num_gpu_blocks_override=500)
    built = build_instances(MOE, H100, ClusterConfig(instances=[cfg]), SimConfig(), 16)
    inst, backend = built.instances[0], built.backends[0]
    assert (inst.cfg.max_num_batched_tokens, inst.cfg.max_num_seqs) == (2048, 128)
    assert inst.kv.num_blocks == 1000 and backend.budget == 1024


def test_non_expert_parallel_instances_are_unchanged():
    cfg = InstanceConfig(max_num_seqs=64, max_num_batched_tokens=1024)
    assert cfg.ep_group() is cfg and cfg.num_gpus == 1 and cfg.expert_parallel_size == 1


def _old_backend_swap_replay(wl, tp: int, ep: int, seqs: int, budget: int, blocks: int,
                             async_scheduling: bool) -> pd.DataFrame:
    """The fidelity script's ``--ep-mode group`` before the instance option existed."""
    inst = InstanceConfig(tensor_parallel_size=tp, max_num_seqs=seqs * ep,
                          max_num_batched_tokens=budget * ep, num_gpu_blocks_override=blocks * ep,
                          async_scheduling=async_scheduling)
    sim = Simulator(MOE, A100, ClusterConfig(instances=[inst]), SimConfig(), wl,
                    make_router("join_shortest_queue"))
    backend = ExpertParallelGroupBackend(MOE, A100, ep=ep, tp=tp, max_num_batched_tokens=budget,
                                         engine="vllm_v1")
    sim.backends = [backend for _ in sim.backends]
    sim.run()
    return records(sim.entered_requests())


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_simulation_equals_the_old_backend_swap(async_scheduling):
    wl = random_workload(seed=3, n=60, rate_per_s=40.0, max_prompt=600, max_output=80)
    seqs, budget, blocks = 8, 256, 120
    old = _old_backend_swap_replay(wl, 1, 2, seqs, budget, blocks, async_scheduling)
    inst = ep_cfg(max_num_seqs=seqs, max_num_batched_tokens=budget,
                  num_gpu_blocks_override=blocks, async_scheduling=async_scheduling)
    sim = Simulator(MOE, A100, ClusterConfig(instances=[inst]), SimConfig(), wl,
                    make_router("join_shortest_queue"))
    sim.run()
    new = records(sim.entered_requests())
    assert len(new) == len(wl)
    assert np.isfinite(new.e2e_s).all()
    pd.testing.assert_frame_equal(new, old, check_exact=True)


def test_ep_group_is_per_rank_resolved_first():
    rank = ep_cfg(data_parallel_size=2).resolved(A100.memory_gib, A100.name)
    assert (rank.max_num_batched_tokens, rank.max_num_seqs) == (2048, 256)
    group = rank.ep_group()
    assert (group.max_num_batched_tokens, group.max_num_seqs) == (4096, 512)
    assert dataclasses.replace(group).num_gpus == 2
    with pytest.raises(ValueError, match="resolved"):
        ep_cfg().ep_group()


def test_hydra_cluster_override_reaches_the_expert_parallel_fields():
    """``cluster.instances.N.enable_expert_parallel`` composes through the typed schema."""
    from tests.hydra_entry import compose, import_entry

    import_entry("simulate.py")
    cfg = compose("simulate", "cluster=single", "cluster.instances.0.enable_expert_parallel=true",
                  "cluster.instances.0.data_parallel_size=2")
    inst = cfg.cluster.instances[0]
    assert inst.enable_expert_parallel is True and inst.data_parallel_size == 2
    assert inst.num_gpus == 2 * inst.tensor_parallel_size
    assert compose("simulate", "cluster=single").cluster.instances[0].enable_expert_parallel \
        is False
    with pytest.raises(Exception, match="data_parallel_size >= 2"):
        compose("simulate", "cluster=single", "cluster.instances.0.enable_expert_parallel=true")
