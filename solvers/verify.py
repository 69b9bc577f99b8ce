"""Check a plan by simulation: run the planned cluster at the planned rate and measure.

:class:`PlanRouter` routes the way the plan assumes: a request goes colocated or
disaggregated in proportion to the capacity the plan gives each; prefill to the instance
with the least queued prompt work per unit of capacity; decode to the instance with the
most free KV, on the prefill instance's node when the plan has low node affinity.
"""

from __future__ import annotations

import numpy as np

from sim.catalog import get_gpu, get_model
from sim.engine import SimConfig, Simulator
from sim.metrics import SLO, goodput_search, records, summarize
from sim.routers import COLOCATE, Router
from sim.routing import ClusterView, Decision, RequestInfo
from sim.workload import ArrivalConfig, LengthConfig, WorkloadConfig, build_workload
from solvers.capacity import DEFAULT_LENGTHS, CapacityConfig
from solvers.plan import Plan


class PlanRouter(Router):
    """Routes over a plan's instances as the allocation model assumes (see module doc)."""

    name = "plan"

    def __init__(self, plan: Plan) -> None:
        self.role = [i.role for i in plan.instances]
        self.node = plan.nodes_of_instances()
        self.cap = [max(i.capacity_per_s, 1e-9) for i in plan.instances]
        self.low = plan.node_affinity == "low"
        self.colo = [k for k, r in enumerate(self.role) if r == "unified"]
        self.pre = [k for k, r in enumerate(self.role) if r == "prefill"]
        self.dec = [k for k, r in enumerate(self.role) if r == "decode"]
        colo_cap = sum(self.cap[k] for k in self.colo)
        dis_cap = min(sum(self.cap[k] for k in self.pre), sum(self.cap[k] for k in self.dec)) \
            if self.pre and self.dec else 0.0
        self.colo_share = colo_cap / max(colo_cap + dis_cap, 1e-12)
        self._num_colo = 0
        self._num = 0

    def reset(self) -> None:
        """Restart the colocated/disaggregated split."""
        self._num_colo = 0
        self._num = 0

    def __call__(self, view: ClusterView, req: RequestInfo) -> Decision:
        """Choose the path, then the least-loaded instances on it."""
        self._num += 1
        if self.colo and (not self.pre or self._num_colo < self.colo_share * self._num):
            self._num_colo += 1
            w, r = view.values("num_waiting"), view.values("num_running")
            q = view.values("queued_prefill_tokens")
            i = min(self.colo, key=lambda k: ((q[k] + 1) * (w[k] + r[k] + 1) / self.cap[k], k))
            return Decision(i, i, COLOCATE)
        q, w = view.values("queued_prefill_tokens"), view.values("num_waiting")
        i = min(self.pre, key=lambda k: ((q[k] + w[k] + req.num_prompt_tokens) / self.cap[k], k))
        dec = self.dec
        if self.low:
            dec = [k for k in self.dec if self.node[k] == self.node[i]] or self.dec
        used, total = view.values("kv_used_blocks"), view.values("kv_total_blocks")
        tin = view.values("num_transfers_in")
        j = min(dec, key=lambda k: (used[k] / max(total[k], 1) + 1e-3 * tin[k], k))
        return Decision(i, j, 1)


def sim_config(cfg: CapacityConfig) -> SimConfig:
    """The simulator settings matching a capacity config's performance model."""
    return SimConfig(perf_backend=cfg.perf_backend, engine=cfg.engine,
                     distserve_coeffs_path=cfg.distserve_coeffs_path)


def simulate_plan(plan: Plan, rate_per_s: float, cfg: CapacityConfig,
                  lengths_path: str = DEFAULT_LENGTHS, num_requests: int = 1000,
                  seed: int = 0) -> dict:
    """Simulate the plan's cluster under Poisson arrivals at ``rate_per_s``.

    Args:
        plan: the plan.
        rate_per_s: total arrival rate, req/s.
        cfg: capacity config (its backend also times the simulation).
        lengths_path: length table the requests are resampled from.
        num_requests: requests simulated.
        seed: workload seed.

    Returns:
        ``sim.metrics.summarize`` of the run (``slo_attainment`` etc.).
    """
    wl_cfg = WorkloadConfig(name="plan_check", num_requests=num_requests,
                            arrival=ArrivalConfig(process="poisson", rate_per_s=rate_per_s),
                            lengths=LengthConfig(distribution="empirical", path=lengths_path))
    workload = build_workload(wl_cfg, np.random.default_rng(seed))
    slo = SLO(plan.ttft_s, plan.tpot_s, plan.attainment_target_frac)
    cluster = plan.cluster_config()
    sim = Simulator(get_model(plan.model), get_gpu(plan.gpu), cluster, sim_config(cfg),
                    workload, PlanRouter(plan), np.random.default_rng(seed + 1))
    sim.run()
    df = records(sim.entered_requests())
    return summarize(df, slo, cluster.num_gpus_used(),
                     num_not_entered=len(workload) - sim.num_entered)


def simulated_goodput(plan: Plan, cfg: CapacityConfig, lengths_path: str = DEFAULT_LENGTHS,
                      num_requests: int = 1000, seed: int = 0,
                      rel_tol: float = 0.03) -> tuple[float, list[tuple[float, float]]]:
    """Highest rate at which the simulated plan meets its attainment target, req/s."""
    target = plan.attainment_target_frac
    guess = max(plan.predicted_goodput_per_s, 0.1)

    def att(rate: float) -> float:
        return simulate_plan(plan, rate, cfg, lengths_path, num_requests, seed)["slo_attainment"]

    return goodput_search(att, target, guess * 0.25, guess * 1.5, rel_tol)
