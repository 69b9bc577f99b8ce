"""The offline bound: valid against every built-in router on random tiny traces, and its parts."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.catalog import get_gpu, get_model
from sim.engine import ClusterConfig, SimConfig, Simulator
from sim.instance import InstanceConfig
from sim.metrics import SLO, records, slo_met
from sim.perf import AnalyticBackend
from sim.perf.batch import BatchArrays
from sim.routers import ROUTERS, make_router
from sim.workload import Workload
from solvers.offline_bound import BoundConfig, fit_token_costs, offline_bound

MODEL = get_model("Llama-3.1-8B")
GPU = get_gpu("A100-80GB-SXM")


def _trace(seed: int, n: int, rate_per_s: float) -> Workload:
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.gamma(0.5, 1 / (0.5 * rate_per_s), n))
    prompt = np.clip(rng.lognormal(np.log(600), 0.9, n), 8, 5000).astype(int)
    output = np.clip(rng.lognormal(np.log(60), 0.9, n), 1, 600).astype(int)
    return Workload(arrival, prompt, output)


def _cluster(roles: list[str], tps: list[int], two_nodes: bool) -> ClusterConfig:
    insts = [InstanceConfig(role=r, tensor_parallel_size=tp, node=(k % 2) if two_nodes else 0)
             for k, (r, tp) in enumerate(zip(roles, tps, strict=True))]
    return ClusterConfig(num_nodes=2 if two_nodes else 1, gpus_per_node=4,
                         network="ethernet_25g", instances=insts)


def _met(cluster: ClusterConfig, wl: Workload, slo: SLO, router: str) -> int:
    kwargs = {"seed": 1} if router == "random" else {}
    sim = Simulator(MODEL, GPU, cluster, SimConfig(), wl, make_router(router, **kwargs))
    sim.run()
    return int(slo_met(records(sim.entered_requests()), slo).sum())


@settings(max_examples=int(os.environ.get("BATON_PROPERTY_EXAMPLES", "6")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(10, 40),
       rate=st.floats(2.0, 60.0), roles=st.lists(st.sampled_from(["unified", "prefill",
                                                                  "decode"]),
                                                 min_size=1, max_size=3),
       tp2=st.booleans(), two_nodes=st.booleans(),
       ttft=st.sampled_from([0.15, 0.4, 1.0]), tpot=st.sampled_from([0.02, 0.05, 0.1]))
def test_bound_is_never_below_any_router(seed, n, rate, roles, tp2, two_nodes, ttft, tpot):
    tps = [2 if (tp2 and k == 0) else 1 for k in range(len(roles))]
    cluster = _cluster(roles, tps, two_nodes)
    wl = _trace(seed, n, rate)
    slo = SLO(ttft_s=ttft, tpot_s=tpot)
    exact = offline_bound(MODEL, GPU, cluster, SimConfig(), wl, slo, BoundConfig())
    lp = offline_bound(MODEL, GPU, cluster, SimConfig(), wl, slo, BoundConfig(relax=True))
    assert exact.status in ("OPTIMAL", "FEASIBLE", "TRIVIAL")
    assert exact.upper_bound_met <= lp.upper_bound_met <= n
    for name in ROUTERS:
        met = _met(cluster, wl, slo, name)
        assert met <= exact.upper_bound_met, (name, met, exact)


def test_bound_binds_under_overload():
    """Far more prefill work than the cluster can do: the bound drops below the trace."""
    wl = _trace(3, 120, 300.0)
    cluster = _cluster(["unified"], [1], False)
    slo = SLO(ttft_s=0.4, tpot_s=0.05)
    res = offline_bound(MODEL, GPU, cluster, SimConfig(), wl, slo)
    assert res.status == "OPTIMAL"
    assert res.upper_bound_met < res.num_feasible_alone <= 120
    best = max(_met(cluster, wl, slo, name) for name in ROUTERS)
    assert best <= res.upper_bound_met


def test_impossible_slo_gives_zero():
    wl = _trace(0, 10, 5.0)
    res = offline_bound(MODEL, GPU, _cluster(["unified"], [1], False), SimConfig(), wl,
                        SLO(ttft_s=1e-4, tpot_s=1e-4))
    assert res.upper_bound_met == 0 and res.status == "TRIVIAL"


def test_prefix_hashes_are_refused():
    wl = Workload([0.0, 0.1], [32, 32], [4, 4], hash_offsets=np.array([0, 2, 4]),
                  hash_ids=np.array([1, 2, 1, 2]))
    with pytest.raises(ValueError, match="prefix"):
        offline_bound(MODEL, GPU, _cluster(["unified"], [1], False), SimConfig(), wl, SLO())


def test_bad_config():
    with pytest.raises(ValueError, match="solver"):
        BoundConfig(solver="GUROBI")
    with pytest.raises(ValueError, match="grid_ratio"):
        BoundConfig(grid_ratio=1.0)


@pytest.mark.parametrize("tp", [1, 2])
def test_token_costs_lower_bound_random_batches(tp):
    """theta_p P + theta_d D <= t(batch) on random feasible batches of real chunk shapes."""
    be = AnalyticBackend(MODEL, GPU, tp=tp)
    theta_p, theta_d = fit_token_costs(be, 2048, 256, 9)
    rng = np.random.default_rng(tp)
    rows = []
    for _ in range(3000):
        d = int(rng.integers(0, 257))
        ctx = rng.integers(9, 8000, d)
        k = int(rng.integers(0, 6))
        chunks = rng.integers(1, max(2, (2048 - d) // max(k, 1)), k) if k else np.zeros(0, int)
        if chunks.sum() + d > 2048 or chunks.sum() + d == 0:
            continue
        cached = rng.integers(0, 3000, k)
        rows.append((chunks.sum(), k, cached.sum(), (chunks * cached).sum(),
                     (chunks * chunks).sum(), d, ctx.sum()))
    cols = np.array(rows, dtype=np.int64).T
    t = be.iteration_times_s(BatchArrays(*cols))
    assert np.all(theta_p * cols[0] + theta_d * cols[5] <= t)
    assert theta_p > 0


def test_backend_monotone_in_each_sum():
    """The bound's assumption: more of any batch sum never makes an iteration faster."""
    be = AnalyticBackend(MODEL, GPU, tp=1)
    rng = np.random.default_rng(0)
    n = 2000
    p = rng.integers(1, 1500, n)
    base = [p, np.ones(n, np.int64), rng.integers(0, 2000, n), np.zeros(n, np.int64), p * p // 2,
            rng.integers(0, 200, n), np.zeros(n, np.int64)]
    base[3] = base[2] * 4
    base[6] = base[5] * rng.integers(2, 3000, n)
    t0 = be.iteration_times_s(BatchArrays(*base))
    for field, step in ((0, 37), (1, 1), (2, 500), (3, 5000), (4, 10_000), (5, 3), (6, 4000)):
        more = [a.copy() for a in base]
        more[field] = more[field] + step
        assert np.all(be.iteration_times_s(BatchArrays(*more)) >= t0 - 1e-12), field
