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
    assert set(table.metric) == {"ttft_s", "tpot_s", "e2e_s"}
    assert table.run.nunique() == 4
    assert (table.measured_s > 0).all() and (table.simulated_s > 0).all()
