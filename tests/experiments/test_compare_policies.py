"""Smoke test of the comparison command on tiny budgets (numbers are not checked)."""

from __future__ import annotations

import pandas as pd

from experiments import compare_policies
from policies.heuristics import HEURISTICS


def test_quick_comparison_writes_every_output(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = compare_policies.main(["--quick", "--num-requests", "80", "--bound-requests", "30",
                                  "--out", str(out)])
    assert code == 0
    table = pd.read_csv(out / "compare.csv")
    assert set(HEURISTICS) | {compare_policies.ILP} == set(table.policy)
    assert (table.bound_met >= table.short_met).all()  # the bound is an upper bound
    assert table.goodput_per_gpu.notna().all()
    for name in ("compare.md", "compare.tex", "runs.csv", "compare_bursty.png"):
        assert (out / name).stat().st_size > 0
    assert "\\begin{tabular}" in (out / "compare.tex").read_text()
    assert "gap to bound" in capsys.readouterr().out


def test_unknown_workload_is_one_clear_line(tmp_path, capsys):
    code = compare_policies.main(["--quick", "--workload", "nope", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "workload 'nope' not found" in err and "bursty" in err
