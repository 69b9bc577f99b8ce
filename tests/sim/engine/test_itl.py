"""Inter-token latency (ITL): the simulator's pooled gaps equal every token's recorded time.

A test-only recorder wraps each instance's ``complete`` (one event per iteration,
``fast_forward=False``): after each iteration it notes the time of every token sampled in it
(decode-batch members listed through ``record_batch_members``, explicitly scheduled requests
whose output count moved). The gaps between consecutive tokens of every completed request,
pooled, must equal :meth:`Simulator.itl_gaps` expanded (sorted, to 1e-9 s), with closed-form
decode runs too.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim import accelerate
from sim.engine import ClusterConfig, SimConfig, Simulator
from sim.instance import RequestStatus
from sim.metrics import SLO, itl_summary, records, summarize, weighted_percentile
from sim.routers import ROUTERS, make_router
from sim.workload import Workload
from tests.sim.engine.conftest import (
    GPU,
    MODEL,
    make_instance_cfg,
    make_sim,
    make_workload,
    random_workload,
)
from tests.sim.engine.test_properties import PROPERTY_SETTINGS, instance_cfgs, workloads


def record_tokens(sim: Simulator) -> dict[int, list[float]]:
    """Per request id, the time of every token it samples (filled while ``sim`` runs)."""
    if accelerate.is_compiled():
        pytest.skip("patches Instance.complete, read-only in the compiled build; "
                    "test_compiled.py checks that build's records and gaps equal these")
    times: dict[int, list[float]] = defaultdict(list)
    for inst in sim.instances:
        inst.record_batch_members = True
        complete = inst.complete

        def recorded(plan, complete=complete):
            before = [(r, r.num_output_tokens) for r in plan.reqs]
            stopped = complete(plan)
            for r in plan.batch_reqs or ():
                times[r.rid].append(sim.now_s)
            for r, n in before:
                if r.num_output_tokens > n:
                    times[r.rid].append(sim.now_s)
            return stopped

        inst.complete = recorded
    return times


def expanded(sim: Simulator) -> np.ndarray:
    """The simulator's pooled gaps, one entry per gap, sorted (seconds)."""
    v, w = sim.itl_gaps()
    assert (w > 0).all()
    return np.sort(np.repeat(v, w))


def run_pair(build) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """``build(fast_forward)`` -> Simulator; returns (true gaps, gaps one-by-one, gaps
    fast-forwarded, requests of the one-by-one run), gaps sorted."""
    slow = build(False)
    times = record_tokens(slow)
    reqs = slow.run()
    truth = []
    for r in reqs:
        if r.status != RequestStatus.COMPLETED:
            continue
        ts = times[r.rid]
        assert len(ts) == r.max_output_tokens  # every output sampled once
        assert ts[0] == r.first_token_s and ts[-1] == r.finish_s
        assert all(b >= a for a, b in zip(ts, ts[1:], strict=False))
        truth.extend(np.diff(ts))
    fast = build(True)
    fast.run()
    return np.sort(np.array(truth)), expanded(slow), expanded(fast), reqs


def assert_exact(build) -> list:
    """The pooled gaps of both modes equal the recorded ones; returns the requests."""
    truth, slow, fast, reqs = run_pair(build)
    assert slow.size == truth.size == fast.size
    np.testing.assert_allclose(slow, truth, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast, truth, rtol=0, atol=1e-9)
    df = records(reqs)
    done = df[df.status == int(RequestStatus.COMPLETED)]
    # the gaps of a request sum to its last - first token time, and there are output - 1
    assert truth.size == int((done.output_tokens - 1).sum())
    assert truth.sum() == pytest.approx(float((done.finish_s - done.first_token_s).sum()),
                                        rel=1e-12)
    return reqs


def test_colocated_chunked_prefill():
    w = random_workload(seed=1, n=60, rate_per_s=30.0, max_prompt=400, max_output=80)
    assert_exact(lambda ff: make_sim(w, make_instance_cfg(async_scheduling=False),
                                     fast_forward=ff, record_itl=True))


def test_colocated_no_chunking_two_instances():
    w = random_workload(seed=2, n=60, rate_per_s=40.0, max_prompt=200, max_output=60)
    cfg = make_instance_cfg(replicas=2, enable_chunked_prefill=False, async_scheduling=False)
    assert_exact(lambda ff: make_sim(w, cfg, router=make_router("join_shortest_queue"),
                                     fast_forward=ff, record_itl=True))


def test_disaggregated_distserve():
    """Output 2 comes from the decode instance: transfer and queueing in its gap."""
    w = random_workload(seed=3, n=60, rate_per_s=30.0, max_prompt=300, max_output=80)
    pre = make_instance_cfg(role="prefill", async_scheduling=False)
    dec = make_instance_cfg(role="decode", async_scheduling=False, max_num_seqs=64)
    reqs = assert_exact(lambda ff: make_sim(w, pre, dec, router=make_router("distserve"),
                                            fast_forward=ff, record_itl=True))
    assert any(r.transfer_end_s > 0 for r in reqs)


def test_tandem_dynaserve():
    """Split points inside the outputs: the Lead samples 1..split, the Follow the rest."""
    w = random_workload(seed=4, n=60, rate_per_s=40.0, max_prompt=300, max_output=100)
    cfg = make_instance_cfg(replicas=3, num_gpu_blocks_override=400, max_num_seqs=64)
    reqs = assert_exact(lambda ff: make_sim(w, cfg, router=make_router("dynaserve"),
                                            fast_forward=ff, record_itl=True))
    assert any(1 < r.split_tokens < r.max_output_tokens for r in reqs)


def test_preemption_heavy():
    """Small KV: many recomputes; a preempted request's gap spans its recompute."""
    w = random_workload(seed=5, n=50, rate_per_s=40.0, max_prompt=300, max_output=150)
    for flag in (False, True):
        cfg = make_instance_cfg(num_gpu_blocks_override=60, async_scheduling=flag)
        reqs = assert_exact(lambda ff, cfg=cfg: make_sim(w, cfg, fast_forward=ff,
                                                         record_itl=True))
        assert sum(r.num_preemptions for r in reqs) >= 10


def test_disaggregated_preemption_and_prefix_caching_async():
    """Decode pool short of KV (preemptions after hand-ins), shared prefixes, async."""
    rng = np.random.default_rng(6)
    n = 50
    prompt = rng.integers(32, 300, n)
    hashes = [[1000 * int(rng.integers(0, 3)) + j for j in range(p // 16)] for p in prompt]
    w = make_workload(np.cumsum(rng.exponential(1 / 30, n)), prompt,
                      rng.integers(1, 120, n), hashes)
    pre = make_instance_cfg(role="prefill", async_scheduling=True, enable_prefix_caching=True)
    dec = make_instance_cfg(role="decode", replicas=2, async_scheduling=True,
                            num_gpu_blocks_override=70, max_num_seqs=64)
    reqs = assert_exact(lambda ff: make_sim(w, pre, dec, router=make_router("distserve"),
                                            fast_forward=ff, record_itl=True))
    assert sum(r.num_preemptions for r in reqs) > 0


def test_async_scheduling_colocated():
    w = random_workload(seed=7, n=60, rate_per_s=50.0, max_prompt=300, max_output=80)
    assert_exact(lambda ff: make_sim(w, make_instance_cfg(async_scheduling=True,
                                                          replicas=2),
                                     router=make_router("round_robin"), fast_forward=ff,
                                     record_itl=True))


def test_one_output_token_has_no_gap():
    w = make_workload([0.0, 0.01, 0.02], [50, 80, 20], [1, 1, 1])
    sim = make_sim(w, make_instance_cfg(), record_itl=True)
    sim.run()
    v, c = sim.itl_gaps()
    assert v.size == 0 and c.size == 0
    s = summarize(records(sim.entered_requests()), SLO(), 1, itl=sim.itl_gaps())
    assert s["num_itl_gaps"] == 0 and np.isnan(s["itl_mean_s"])
    w = make_workload([0.0, 0.01], [50, 80], [1, 5])
    sim = make_sim(w, make_instance_cfg(), record_itl=True)
    sim.run()
    assert int(sim.itl_gaps()[1].sum()) == 4


@PROPERTY_SETTINGS
@given(data=st.data(), router=st.sampled_from(sorted(ROUTERS)))
def test_itl_exact_anywhere(data, router):
    """Any roles, router, KV pressure, prefixes, async or not: gaps exact in both modes."""
    w: Workload = data.draw(workloads(max_requests=30, max_prompt=300, max_output=80,
                                      hashed=data.draw(st.booleans())))
    insts = data.draw(st.lists(instance_cfgs(), min_size=1, max_size=3))
    kwargs = {"seed": 5} if router == "random" else {}

    def build(ff):
        return Simulator(MODEL, GPU, ClusterConfig(num_nodes=4, gpus_per_node=8,
                                                   instances=insts),
                         SimConfig(fast_forward=ff, record_itl=True), w,
                         make_router(router, **kwargs))

    assert_exact(build)


def test_summary_reports_itl_like_np_percentile():
    w = random_workload(seed=8, n=40, rate_per_s=30.0)
    sim = make_sim(w, make_instance_cfg(), record_itl=True)
    sim.run()
    gaps = sim.itl_gaps()
    x = np.repeat(*gaps)
    s = summarize(records(sim.entered_requests()), SLO(), 1, itl=gaps)
    assert s["num_itl_gaps"] == x.size
    assert s["itl_mean_s"] == pytest.approx(x.mean(), rel=1e-12)
    for p in (50, 90, 99):
        assert s[f"itl_p{p}_s"] == np.percentile(x, p)
    assert "itl_mean_s" not in summarize(records(sim.entered_requests()), SLO(), 1)
    assert itl_summary(None) == {}


def test_itl_off_by_default_same_records():
    """``record_itl`` only adds bookkeeping: the records are the same without it."""
    w = random_workload(seed=9, n=40, rate_per_s=40.0)
    out = []
    for flag in (False, True):
        sim = make_sim(w, make_instance_cfg(num_gpu_blocks_override=80), record_itl=flag)
        out.append(records(sim.run()))
    assert out[0].equals(out[1])
    with pytest.raises(RuntimeError, match="record_itl"):
        sim = make_sim(w, make_instance_cfg())
        sim.run()
        sim.itl_gaps()


@pytest.mark.parametrize("seed", range(5))
def test_weighted_percentile_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    v = np.round(rng.random(30), 2)
    c = rng.integers(1, 6, 30)
    x = np.repeat(v, c)
    for q in (0, 1, 25, 50, 90, 99, 100, float(rng.random() * 100)):
        assert weighted_percentile(v, c, q) == np.percentile(x, q)
