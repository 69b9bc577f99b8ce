"""simulate.py: Hydra composition, typed validation, and each sweep mode's outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra.errors import ConfigCompositionException

from sim.catalog import CatalogError, ModelSpec
from sim.engine import ClusterConfig
from sim.instance import InstanceConfig
from sim.run import SimulateConfig, run_simulation
from tests.hydra_entry import compose as hydra_compose
from tests.hydra_entry import import_entry

REPO = Path(__file__).resolve().parents[1]
SMALL = ["workload=trace_csv", "workload.max_requests=60"]


@pytest.fixture(scope="module", autouse=True)
def simulate_module():
    """Import simulate.py by path: registers ``simulate_schema`` in Hydra's ConfigStore."""
    return import_entry("simulate.py")


def compose(*overrides: str) -> SimulateConfig:
    """Compose conf/simulate.yaml with ``overrides`` and convert it to dataclasses."""
    return hydra_compose("simulate", *overrides)


def test_defaults_compose_to_typed_config():
    cfg = compose()
    assert isinstance(cfg, SimulateConfig)
    assert isinstance(cfg.model, ModelSpec) and cfg.model.name == "Llama-3.1-8B"
    assert isinstance(cfg.cluster, ClusterConfig)
    assert all(isinstance(i, InstanceConfig) for i in cfg.cluster.instances)
    assert cfg.router.name == "round_robin" and cfg.sweep.mode == "single"


def test_single_run_writes_records_summary_and_plot(tmp_path):
    cfg = compose("workload=trace_csv", "cluster=single")
    summary = run_simulation(cfg, tmp_path)
    df = pd.read_csv(tmp_path / "records.csv")
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["num_requests"] == summary["num_requests"] == len(df) == 200
    assert on_disk["num_completed"] + on_disk["num_rejected"] + on_disk["num_failed"] == 200
    assert on_disk["num_gpus"] == 1 and on_disk["num_events"] > 0
    done = df[df.outcome == "completed"]
    assert (done.ttft_s <= done.e2e_s).all() and (done.lead == 0).all()
    assert on_disk["ttft_mean_s"] == pytest.approx(done.ttft_s.mean())
    # ITL: output - 1 gaps per completed request, summing to its last - first token time
    assert on_disk["num_itl_gaps"] == int((done.output_tokens - 1).sum())
    assert on_disk["itl_mean_s"] * on_disk["num_itl_gaps"] == pytest.approx(
        (done.finish_s - done.first_token_s).sum(), rel=1e-9)
    assert on_disk["itl_p50_s"] <= on_disk["itl_p90_s"] <= on_disk["itl_p99_s"]
    assert 0.0 <= on_disk["slo_attainment"] <= 1.0
    assert (tmp_path / "latency_cdf.png").stat().st_size > 1000


def test_single_run_is_deterministic(tmp_path):
    cfg = compose(*SMALL, "router=random")
    run_simulation(cfg, tmp_path / "a")
    run_simulation(compose(*SMALL, "router=random"), tmp_path / "b")
    a = pd.read_csv(tmp_path / "a" / "records.csv")
    pd.testing.assert_frame_equal(a, pd.read_csv(tmp_path / "b" / "records.csv"))


def test_distserve_opt13b_cluster(tmp_path):
    cfg = compose("workload=trace_csv", "cluster=distserve_opt13b", "model=opt_13b",
                  "router=distserve")
    summary = run_simulation(cfg, tmp_path)
    assert summary["num_gpus"] == 3
    df = pd.read_csv(tmp_path / "records.csv")
    done = df[df.outcome == "completed"]
    assert len(done) > 0 and (done.lead == 0).all() and (done.split_tokens == 1).all()
    handed = done[done.output_tokens > 1]
    assert (handed.follow == 1).all() and handed.transfer_end_s.notna().all()
    too_long = df.prompt_tokens + df.output_tokens > 2048  # OPT-13B's context
    assert (df[too_long].reason_text == "prompt+output tokens exceed max_model_len").all()


def test_rate_sweep(tmp_path):
    cfg = compose(*SMALL, "sweep.mode=rates", "sweep.rate_scales=[0.5,2.0]")
    summary = run_simulation(cfg, tmp_path)
    sweep = pd.read_csv(tmp_path / "sweep.csv")
    assert list(sweep.rate_scale) == [0.5, 2.0] and len(summary["sweep"]) == 2
    assert sweep.request_rate_per_s[1] == pytest.approx(4 * sweep.request_rate_per_s[0])
    assert (sweep.num_requests == 60).all()
    assert (tmp_path / "attainment_vs_rate.png").is_file()
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(
        json.dumps(summary, default=float))


def test_goodput_search(tmp_path):
    cfg = compose(*SMALL, "sweep.mode=goodput", "sweep.lo_rate_per_s=1.0",
                  "sweep.hi_rate_per_s=4.0", "sweep.rel_tol=0.25")
    result = run_simulation(cfg, tmp_path)
    on_disk = json.loads((tmp_path / "goodput.json").read_text())
    assert on_disk == result and on_disk["num_gpus"] == 1
    assert on_disk["goodput_per_gpu_req_per_s"] == on_disk["goodput_req_per_s"]
    target = on_disk["slo"]["attainment_target_frac"]
    curve = {p["rate_per_s"]: p["slo_attainment"] for p in on_disk["curve"]}
    good = on_disk["goodput_req_per_s"]
    assert curve[1.0] >= target  # the trace at 1 req/s is easy for one A100
    assert good >= 1.0 and curve[good] >= target
    assert any(r > good and a < target for r, a in curve.items())  # bracketed from above
    assert (tmp_path / "attainment_vs_rate.png").is_file()


def test_unknown_key_names_the_field():
    with pytest.raises(ConfigCompositionException, match="cluster.bogus"):
        compose("cluster.bogus=1")


@pytest.mark.parametrize(
    ("override", "pattern"),
    [("router.name=nope", "router.name 'nope'"), ("sweep.mode=x", "sweep.mode 'x'"),
     ("cluster.instances.0.max_num_seqs=-1", "max_num_seqs"),
     ("sim.perf_backend=magic", "sim.perf_backend")],
)
def test_bad_values_name_the_field(override, pattern):
    with pytest.raises(ValueError, match=pattern):
        compose(override)


def test_tensor_parallel_size_must_divide_the_heads(tmp_path):
    cfg = compose(*SMALL, "model=opt_13b", "cluster.instances.0.tensor_parallel_size=3")
    with pytest.raises(CatalogError, match="tensor_parallel_size=3"):
        run_simulation(cfg, tmp_path)


def test_command_line_smoke(tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(
        [sys.executable, "simulate.py", "workload=trace_csv", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("records.csv", "summary.json", "latency_cdf.png", ".hydra/config.yaml"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "summary.json").read_text())["num_requests"] == 200
