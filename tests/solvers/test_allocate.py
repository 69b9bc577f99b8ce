import dataclasses
import importlib.util
from pathlib import Path

import hydra
import pytest
import yaml
from omegaconf import OmegaConf

from sim.engine import ClusterConfig
from sim.engine.placement import place
from solvers.allocate import AllocateConfig, allocate, main
from solvers.plan import (
    KV_ROLE,
    cluster_dict,
    read_plan,
    vllm_command,
    write_cluster_yaml,
    write_plan,
)
from solvers.verify import simulate_plan

REPO = Path(__file__).resolve().parents[2]
SMALL = dict(model="OPT-13B", num_nodes=1, gpus_per_node=4, ttft_s=0.25, tpot_s=0.1,
             modes=("disaggregated",))


@pytest.fixture(scope="module")
def small(opt_lengths):
    return {**SMALL, "lengths_path": opt_lengths}


@pytest.fixture(scope="module")
def opt13_plan(small):
    res = allocate(AllocateConfig(**small))
    assert res.plan is not None and res.allocation.status == "OPTIMAL"
    return res


def test_opt175b_on_small_cluster_is_explained():
    res = allocate(AllocateConfig(model="OPT-175B", num_nodes=1, gpus_per_node=4))
    assert res.plan is None
    assert "OPT-175B needs at least" in res.message and "A100-80GB" in res.message


def test_impossible_slo_is_explained(small):
    res = allocate(AllocateConfig(**{**small, "ttft_s": 0.001}))
    assert res.plan is None and "meets TTFT 0.001" in res.message


def test_min_gpus_rate_too_high_is_explained(small):
    res = allocate(AllocateConfig(**small, objective="min_gpus", rate_per_s=1000.0))
    assert res.plan is None and "exceeds" in res.message


@pytest.mark.parametrize("argv,field", [
    (["--num-nodes", "0"], "num_nodes"),
    (["--model", "GPT-9"], "model"),
    (["--network", "carrier_pigeon"], "network"),
    (["--modes", "telepathy"], "modes"),
    (["--objective", "min_gpus"], "rate_per_s"),
    (["--perf-backend", "distserve"], "distserve_coeffs_path"),
])
def test_cli_bad_input_names_the_field(argv, field, capsys):
    assert main(argv) == 2
    assert field in capsys.readouterr().err


def test_plan_round_trip(opt13_plan, tmp_path):
    plan = opt13_plan.plan
    for name in ("p.yaml", "p.json"):
        assert read_plan(write_plan(plan, tmp_path / name)) == plan
    cc = plan.cluster_config()
    assert place(cc) == [i.nodes[0] for i in plan.instances]
    assert cc.num_gpus_used() == plan.num_gpus
    path = write_cluster_yaml(plan, tmp_path / "cluster" / "planned.yaml")
    loaded = ClusterConfig(**yaml.safe_load(path.read_text()))
    assert [dataclasses.asdict(i) for i in loaded.instances] == \
        [dataclasses.asdict(i) for i in cc.instances]
    for inst in plan.instances:
        assert f"--tensor-parallel-size {inst.tensor_parallel_size}" in inst.vllm_serve
        assert "--kv-transfer-config" in inst.vllm_serve and "NixlConnector" in inst.vllm_serve
        assert f'"kv_role":"{KV_ROLE[inst.role]}"' in inst.vllm_serve
    assert '"kv_connector":"NixlConnector","kv_role":"kv_both"' in vllm_command(
        "m", "unified", 1, 1, 8000)


def test_cluster_yaml_loads_in_simulate_hydra(opt13_plan, tmp_path):

    from tests.test_simulate import REPO, simulate_module  # noqa: F401  (registers schema)
    spec = importlib.util.spec_from_file_location("simulate", REPO / "simulate.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    write_cluster_yaml(opt13_plan.plan, tmp_path / "cluster" / "planned.yaml")
    with hydra.initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = hydra.compose("simulate", overrides=[f"hydra.searchpath=[file://{tmp_path}]",
                                                   "cluster=planned", "model=opt_13b"])
    sim_cfg = OmegaConf.to_object(cfg)
    assert cluster_dict(opt13_plan.plan)["instances"] == [
        {k: getattr(i, k) for k in ("role", "tensor_parallel_size", "pipeline_parallel_size",
                                    "node")} for i in sim_cfg.cluster.instances]


def test_too_long_requests_are_explained():
    # the shipped fixture's prompts mostly exceed OPT's 2048-token context
    res = allocate(AllocateConfig(**SMALL))
    assert res.plan is None and "2048-token context" in res.message


def test_planned_cluster_meets_attainment_in_simulation(opt13_plan, small):
    plan = opt13_plan.plan
    cfg = AllocateConfig(**small).capacity_config()
    s = simulate_plan(plan, plan.predicted_goodput_per_s, cfg, small["lengths_path"],
                      num_requests=800)
    assert s["slo_attainment"] >= plan.attainment_target_frac


def test_cli_writes_plan_and_cluster(tmp_path, capsys, opt_lengths):
    out = tmp_path / "plan.json"
    argv = ["--model", "OPT-13B", "--num-nodes", "1", "--gpus-per-node", "4", "--modes",
            "disaggregated", "colocated", "--lengths-path", opt_lengths, "--out", str(out)]
    assert main(argv) == 0
    assert out.is_file() and (tmp_path / "cluster" / "plan.yaml").is_file()
    assert "goodput" in capsys.readouterr().out


@pytest.mark.shared
def test_distserve_opt13b_choice(shared_data):
    d = shared_data / "distserve"
    res = allocate(AllocateConfig(
        model="OPT-13B", num_nodes=1, gpus_per_node=4, ttft_s=0.2, tpot_s=0.1,
        modes=("disaggregated",), perf_backend="distserve",
        distserve_coeffs_path=str(d / "latency_coeffs_a100_80g.csv"),
        lengths_path=str(d / "sharegpt_lengths.csv")))
    got = sorted((i.role, i.tensor_parallel_size, i.pipeline_parallel_size)
                 for i in res.plan.instances)
    assert got == [("decode", 1, 1), ("prefill", 2, 1)]
    assert 1.4 <= res.plan.predicted_goodput_per_gpu <= 2.0
