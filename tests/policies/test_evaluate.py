"""Heuristic registry, goodput from attainment curves, intervals, and a tiny evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from envs import EnvConfig
from policies.evaluate import (
    EvalConfig,
    Scenario,
    evaluate,
    goodput_from_curve,
    goodput_table,
    mean_ci,
    summary_table,
    write_report,
)
from policies.heuristics import HEURISTICS, make_heuristic
from sim.engine import ClusterConfig
from sim.instance import InstanceConfig
from sim.routers import Router
from sim.workload import WorkloadConfig
from sim.workload.config import ArrivalConfig


def test_every_heuristic_name_builds_a_router():
    for name in HEURISTICS:
        assert isinstance(make_heuristic(name), Router)
    with pytest.raises(ValueError, match="unknown heuristic 'fastest'.*round_robin"):
        make_heuristic("fastest")


def test_goodput_interpolates_the_first_crossing_and_flags_censoring():
    rates = np.array([1.0, 2.0, 3.0, 4.0])
    rate, flag = goodput_from_curve(rates, np.array([1.0, 0.95, 0.85, 0.5]), 0.9)
    assert rate == pytest.approx(2.5) and flag == ""
    assert goodput_from_curve(rates, np.array([0.8, 0.7, 0.6, 0.5]), 0.9) == (0.0, "below_grid")
    assert goodput_from_curve(rates, np.array([1.0, 1.0, 0.99, 0.95]), 0.9) == (4.0, "above_grid")
    # a later recovery above the target does not count: goodput is where it first fails
    assert goodput_from_curve(rates, np.array([0.95, 0.85, 0.95, 0.5]), 0.9)[0] == \
        pytest.approx(1.5)


def test_mean_ci_matches_the_t_interval():
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and hi - m == pytest.approx(4.302653 / np.sqrt(3), rel=1e-5)
    assert np.isnan(mean_ci([1.0])[1])


def test_eval_config_rejects_bad_grids_and_names():
    with pytest.raises(ValueError, match="ascending"):
        EvalConfig(rate_scales=[1.0, 0.5])
    with pytest.raises(ValueError, match="include 1.0"):
        EvalConfig(rate_scales=[0.5, 2.0])
    with pytest.raises(ValueError, match="eval.heuristics"):
        EvalConfig(heuristics=["nope"])
    with pytest.raises(ValueError, match="two distinct seeds"):
        EvalConfig(seeds=[101, 101])
    with pytest.raises(ValueError, match="eval.heuristics is empty"):
        EvalConfig(heuristics=[])


def test_tiny_evaluation_produces_paired_gains_and_a_report(tmp_path):
    env = EnvConfig(cluster=ClusterConfig(instances=[InstanceConfig(replicas=2)]))
    scn = Scenario(env.model, env.hardware, env.cluster, env.sim, env.slo)
    cfg = EvalConfig(seeds=[1, 2], num_requests=60, rate_scales=[0.25, 1.0, 8.0],
                     heuristics=["round_robin", "random"])
    pols = {h: (lambda h=h: make_heuristic(h)) for h in cfg.heuristics}
    poisson = WorkloadConfig(name="poisson", arrival=ArrivalConfig(rate_per_s=1.0))
    runs = evaluate(scn, {"poisson": poisson}, pols, cfg)
    assert len(runs) == 2 * 2 * 3
    assert (runs.num_completed + runs.num_rejected + runs.num_failed == 60).all()
    # same arrivals compressed: the rate grows with the multiplier
    r = runs[(runs.policy == "random") & (runs.seed == 1)].sort_values("rate_scale")
    assert np.all(np.diff(r.rate_per_s) > 0)
    good = goodput_table(runs, 0.9, 2)
    table = summary_table(runs, good, "random", ["round_robin"])
    rr = table[table.policy == "round_robin"].iloc[0]
    assert rr.gain_vs_best == 0.0 and rr.best_heuristic == "round_robin"
    rnd = table[table.policy == "random"].iloc[0]
    g = good.set_index(["policy", "seed"]).goodput_per_gpu
    assert g["round_robin", 1] > 0 and g["round_robin", 2] > 0
    expect = np.mean([(g["random", s] - g["round_robin", s]) / g["round_robin", s]
                      for s in (1, 2)])
    assert rnd.gain_vs_best == pytest.approx(expect)
    report = write_report(runs, good, table, tmp_path, title="t", target=0.9, num_gpus=2,
                          notes=["n"])
    text = report.read_text()
    assert "| **random** |" in text and (tmp_path / "eval_poisson.png").is_file()
