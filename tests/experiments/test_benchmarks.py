"""Smoke runs of the benchmark and fidelity scripts on tiny budgets (numbers are not checked)."""

from __future__ import annotations

import pytest

from experiments import bench_perf, bench_sim, fidelity_vllm_runs


def test_bench_perf_prints_both_paths(capsys):
    bench_perf.main(["--n", "2000", "--n-scalar", "200", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "scalar path" in out and "vectorised path" in out and "max relative difference" in out


def test_bench_sim_runs_on_tiny_sizes(capsys):
    bench_sim.main(["--repeats", "1", "--requests", "200", "--sizes", "300"])
    out = capsys.readouterr().out
    assert "DistServe reference" in out and "Scaling" in out
    assert out.count("\n") >= 8


@pytest.mark.shared
def test_fidelity_replays_every_real_run(shared_data, tmp_path, capsys):
    table = fidelity_vllm_runs.compare(shared_data)
    assert set(table.metric) == {"ttft_s", "tpot_s", "e2e_s", "itl_s"}
    assert set(table[table.metric == "itl_s"].stat) == {"mean"}  # first/last times only
    assert table.run.nunique() == 4
    assert (table.measured_s > 0).all() and (table.simulated_s > 0).all()


@pytest.mark.parametrize(("meta", "expected"), [
    ({"resolved_config": {"scheduler_config": {"async_scheduling": False}},
      "vllm_version": "0.19.0"}, False),                        # recorded wins
    ({"resolved_config": {"scheduler_config": {"async_scheduling": True}}}, True),
    ({"vllm_version": "0.19.0", "engine_kwargs": {}}, True),     # vLLM >= 0.14 default
    ({"vllm_version": "0.13.2", "engine_kwargs": {}}, False),
    ({"vllm_version": "0.19.0", "engine_kwargs": {"pipeline_parallel_size": 2}}, False),
    ({"vllm_version": "dev", "engine_kwargs": {}}, False),       # unknown version: off
    ({}, False),
])
def test_async_scheduling_follows_the_record_then_vllms_default(meta, expected):
    assert fidelity_vllm_runs.recorded_async_scheduling(meta) is expected
