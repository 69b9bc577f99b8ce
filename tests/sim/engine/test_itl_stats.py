"""InterTokenGaps: ITL statistics from the compact record equal those of the expansion.

Against :meth:`Simulator.itl_gaps` (the expansion) on real runs and on hand-made records:
count exact, percentiles bit-identical to :func:`weighted_percentile` (so to
``np.percentile`` of the expanded list), mean to 1e-12 relative, CDF exact at every
distinct gap, between them and outside.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.catalog import get_gpu, get_model
from sim.engine import SimConfig, Simulator
from sim.engine.itl import InterTokenGaps
from sim.metrics import SLO, itl_summary, plot_cdfs, records, summarize, weighted_percentile
from sim.routers import make_router
from tests.sim.engine.conftest import (
    colocate_on,
    make_cluster,
    make_instance_cfg,
    make_sim,
    make_workload,
    random_workload,
)

PCTS = (0, 1, 50, 90, 99, 99.9, 100)


def assert_same_stats(gaps: InterTokenGaps, v: np.ndarray, w: np.ndarray) -> None:
    """``gaps`` against the expanded ``(v, w)`` (counts > 0)."""
    n = int(w.sum())
    assert gaps.count == n
    if not n:
        assert math.isnan(gaps.mean_s()) and math.isnan(gaps.percentile_s(50))
        assert gaps.count_le([0.0, 1.0]).tolist() == [0, 0]
        return
    mean = float(np.dot(v, w) / n)  # itl_summary's expanded mean
    assert gaps.mean_s() == pytest.approx(mean, rel=1e-12, abs=0)
    for p in PCTS:
        assert gaps.percentile_s(p) == weighted_percentile(v, w, p), p
    order = np.argsort(v, kind="stable")
    xs, cum = v[order], np.cumsum(w[order])
    u = np.unique(v)
    pts = np.concatenate([u, (u[1:] + u[:-1]) / 2, np.nextafter(u, -np.inf),
                          [u[0] - 1.0, u[-1] + 1.0]])
    want = np.concatenate([[0], cum])[np.searchsorted(xs, pts, side="right")]
    assert gaps.count_le(pts).tolist() == want.tolist()
    assert (gaps.cdf(pts) == want / n).all()
    assert gaps.count_le(pts.reshape(-1, 1)).shape == (pts.size, 1)
    assert gaps.count_le_scalar(float(u[len(u) // 2])) == want[len(u) // 2]
    assert gaps.kth_s(0) == gaps.min_s() == u[0] and gaps.kth_s(n - 1) == gaps.max_s() == u[-1]


def check_sim(sim: Simulator) -> tuple[np.ndarray, ...]:
    """Run ``sim`` and compare its compact gaps with their expansion; returns the parts."""
    sim.run()
    gaps = InterTokenGaps.from_simulator(sim)
    v, w = sim.itl_gaps()
    ev, ew = gaps.expand()
    assert np.array_equal(ev, v) and np.array_equal(ew, w)
    assert_same_stats(gaps, v, w)
    return sim.itl_parts()


@pytest.mark.parametrize("ff", [True, False])
def test_colocated_and_preemptions(ff):
    w = random_workload(seed=5, n=50, rate_per_s=40.0, max_prompt=300, max_output=150)
    _, _, lines, ints = check_sim(make_sim(w, make_instance_cfg(num_gpu_blocks_override=60),
                                           fast_forward=ff, record_itl=True))
    assert len(lines) if ff else not len(lines)


def test_disaggregated_first_iteration_without_gaps():
    """DistServe: hand-ins join decode runs (``first < seqs``, some ``first == 0``, k == 1)."""
    w = random_workload(seed=3, n=60, rate_per_s=30.0, max_prompt=300, max_output=80)
    pre = make_instance_cfg(role="prefill")
    dec = make_instance_cfg(role="decode", max_num_seqs=64)
    _, _, _, ints = check_sim(make_sim(w, pre, dec, router=make_router("distserve"),
                                       record_itl=True))
    assert (ints[:, 2] == 0).any() and (ints[:, 0] == 1).any()


def test_tandem_many_ties():
    w = random_workload(seed=4, n=60, rate_per_s=40.0, max_prompt=300, max_output=100)
    cfg = make_instance_cfg(replicas=3, num_gpu_blocks_override=400, max_num_seqs=64)
    check_sim(make_sim(w, cfg, router=make_router("dynaserve"), record_itl=True))


def test_launch_floor_binds_then_the_line():
    """Eager engine, small active MoE: batch-1 runs start on the launch floor (f > a) and
    one long run crosses onto the line within the run."""
    w = make_workload([0.0, 0.0, 200.0, 200.05, 200.1], [32, 2000, 64, 20, 300],
                      [6000, 1, 3000, 2500, 2000])
    sim = Simulator(get_model("qwen3_30b_a3b"), get_gpu("h200_141gb"),
                    make_cluster(make_instance_cfg(num_gpu_blocks_override=3000)),
                    SimConfig(record_itl=True, engine="vllm_splitwise_2023"), w, colocate_on(0))
    _, _, lines, ints = check_sim(sim)
    a, s, f, _ = lines.T
    assert ((a < f) & (a + s * (ints[:, 0] - 1) > f)).any()


def test_no_gaps():
    """One-token outputs: nothing recorded; the summary matches the expanded one's."""
    w = make_workload([0.0, 0.01, 0.02], [50, 80, 20], [1, 1, 1])
    sim = make_sim(w, make_instance_cfg(), record_itl=True)
    check_sim(sim)
    gaps = InterTokenGaps.from_simulator(sim)
    assert gaps.count == 0 and math.isnan(gaps.min_s())
    x, share = gaps.cdf_points()
    assert x.size == share.size == 0
    new, old = itl_summary(gaps), itl_summary(sim.itl_gaps())
    assert new.keys() == old.keys() == {"num_itl_gaps", "itl_mean_s"}
    assert new["num_itl_gaps"] == 0 and math.isnan(new["itl_mean_s"])


def random_record(seed: int) -> tuple[np.ndarray, ...]:
    """Singles and runs with ties (within and across), zero counts, flat runs, k == 1,
    first == 0, floors that bind throughout or for a while, slopes tiny against ``a``."""
    rng = np.random.default_rng(seed)
    n, m = rng.integers(0, 25), rng.integers(0, 25)
    grid = np.round(rng.uniform(0.0, 0.05, 8), 3)
    v = rng.choice(np.concatenate([grid, [0.0]]), n)
    cnt = rng.integers(0, 4, n)
    a = rng.choice(np.concatenate([grid, rng.uniform(0, 0.05, 4)]), m)
    s = rng.choice([0.0, 1e-4, 1e-3, 2.5e-4, 1e-19], m)
    f = np.where(rng.random(m) < 0.4, a + rng.choice([1e-4, 3e-3, 0.02], m), 0.0)
    c = rng.choice([0.0, 1e-3, 0.004], m)
    k = rng.integers(1, 40, m)
    seqs = rng.integers(0, 5, m)
    first = np.where(rng.random(m) < 0.3, 0, rng.integers(1, 5, m))
    return v, cnt, np.stack([a, s, f, c], 1), np.stack([k, seqs, first], 1)


def expand_parts(v, cnt, lines, ints) -> tuple[np.ndarray, np.ndarray]:
    """One entry per iteration, as Simulator.itl_gaps builds it (zero counts dropped)."""
    vals, ws = [v], [cnt]
    for (a, s, f, c), (k, seqs, first) in zip(lines, ints, strict=True):
        j = np.arange(k)
        vals.append(np.maximum(f, a + s * j) + c)
        ws.append(np.where(j == 0, first, seqs))
    x, w = np.concatenate(vals), np.concatenate(ws).astype(np.int64)
    return x[w > 0], w[w > 0]


@pytest.mark.parametrize("seed", range(40))
def test_hand_made_records(seed):
    parts = random_record(seed)
    gaps = InterTokenGaps.from_parts(*parts)
    v, w = expand_parts(*parts)
    ev, ew = gaps.expand()
    assert np.array_equal(ev, v) and np.array_equal(ew, w)
    assert_same_stats(gaps, v, w)
    if w.sum():
        x = np.repeat(v, w)
        for p in PCTS:
            assert gaps.percentile_s(p) == np.percentile(x, p)


def test_ties_and_every_rank():
    """Few distinct values, many ties across singles and runs: every rank and percentile."""
    v = np.array([0.02, 0.01, 0.03, 0.02, 0.05])
    cnt = np.array([3, 0, 2, 1, 4])
    lines = np.array([[0.01, 0.0, 0.0, 0.01],     # flat at 0.02
                      [0.0, 0.01, 0.02, 0.0],     # floor 0.02 for j <= 2, then 0.03, 0.04
                      [0.05, 0.0, 0.0, 0.0],      # one iteration of no gap
                      [0.01, 0.0, 0.03, 0.0]])    # floor binds throughout
    ints = np.array([[4, 2, 0], [5, 1, 3], [1, 7, 0], [2, 0, 2]])
    gaps = InterTokenGaps.from_parts(v, cnt, lines, ints)
    x = np.sort(np.repeat(*expand_parts(v, cnt, lines, ints)))
    assert gaps.count == x.size == (3 + 2 + 1 + 4) + 3 * 2 + (3 + 4) + 0 + 2
    assert [gaps.kth_s(r) for r in range(x.size)] == x.tolist()
    for p in np.linspace(0, 100, 41):
        assert gaps.percentile_s(p) == np.percentile(x, p)


def test_line_estimate_misses():
    """Slopes far below a's rounding and huge k: the estimate is off, the bisection on j
    settles it (and stays O(log k))."""
    a = 0.0123456789
    lines = np.array([[a, 1e-18, 0.0, 0.0], [a, 3e-19, 0.0, 1e-3], [a, 1e-12, a + 1e-9, 0.0]])
    ints = np.array([[30_000, 1, 1], [5_000, 3, 0], [20_000, 2, 5]])
    gaps = InterTokenGaps.from_parts(np.array([a]), np.array([7]), lines, ints)
    v, w = gaps.expand()
    assert gaps.count == int(w.sum())
    assert_same_stats(gaps, v, w)


def test_summary_and_plot_accept_the_compact_form(tmp_path):
    w = random_workload(seed=8, n=40, rate_per_s=30.0)
    sim = make_sim(w, make_instance_cfg(), record_itl=True)
    sim.run()
    gaps, old = InterTokenGaps.from_simulator(sim), sim.itl_gaps()
    df = records(sim.entered_requests())
    new_s, old_s = (summarize(df, SLO(), 1, itl=g) for g in (gaps, old))
    assert new_s.keys() == old_s.keys()
    for key in new_s:
        if key == "itl_mean_s":
            assert new_s[key] == pytest.approx(old_s[key], rel=1e-12, abs=0)
        elif key != "reasons":
            assert new_s[key] == old_s[key] or (np.isnan(new_s[key]) and np.isnan(old_s[key]))
    x, share = gaps.cdf_points(64)  # more iterations than 64: an even grid
    assert x.size == 64 and x[0] == gaps.min_s() and x[-1] == gaps.max_s() and share[-1] == 1
    x, share = gaps.cdf_points(10**6)  # every distinct gap
    assert np.array_equal(x, np.unique(old[0]))
    assert np.array_equal(share, np.cumsum(np.bincount(np.searchsorted(x, old[0]), old[1]))
                          / gaps.count)
    plot_cdfs(df, tmp_path / "cdf.png", SLO(), itl=gaps)
    assert (tmp_path / "cdf.png").stat().st_size > 1000


def test_rejects_bad_records():
    with pytest.raises(ValueError, match="slopes"):
        InterTokenGaps.from_parts(np.zeros(0), np.zeros(0), [[0.1, -1e-3, 0, 0]], [[3, 1, 1]])
    with pytest.raises(ValueError, match=">= 0"):
        InterTokenGaps.from_parts([0.1], [-1], np.zeros((0, 4)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="shapes"):
        InterTokenGaps.from_parts([0.1, 0.2], [1], np.zeros((0, 4)), np.zeros((0, 3)))
    gaps = InterTokenGaps.from_parts([0.1], [2], np.zeros((0, 4)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="percentile"):
        gaps.percentile_s(101)
    with pytest.raises(ValueError, match="rank"):
        gaps.kth_s(2)
