"""Offline (clairvoyant) upper bound on the SLO-met requests of one trace on one cluster.

The program knows every arrival and output length and chooses, for each request, whether it
meets its SLOs and if so its Lead ``j``, Follow ``k`` and split. It maximises the number of
met requests under relaxed capacity constraints. Every schedule the simulator can produce
(whatever the router) maps to a feasible solution, so the optimum -- or, under a time limit,
the solver's proven bound, or the LP relaxation's optimum -- is an UPPER BOUND on the met
count of any online policy on that trace.

Variables (``i`` request, ``j`` Lead, ``k`` Follow, ``o`` output tokens, ``p`` prompt)::

    y[i,j,k] in {0,1}   i meets its SLOs with Lead j, Follow k (k == j: colocated)
    q[i,j,k] >= 0       i's outputs 2..s sampled on the Lead (s = split; q = s - 1), j != k,
                        continuous in [0, o - 2]: every integer split, and more
    sum_{j,k} y[i,j,k] <= 1;   maximise sum y

Per-request latency (lower bounds from the performance model; see below)::

    TTFT_lb(i, j) <= ttft_slo                                     (else y[i,j,*] = 0)
    q d(i,j) + (o - 1 - q) d(i,k) + T(i,j,k) y <= tpot_slo (o - 1) y            (j != k)
    d(i,j) <= tpot_slo                                                      (colocated)

Capacity: each met request is two jobs on the instances it uses, its *prefill job* (``p``
prompt tokens on the Lead, inside ``[arrival, arrival + ttft_slo]``) and its *decode job*
(outputs 2..o on Lead and Follow, inside ``[arrival, arrival + ttft_slo + tpot_slo (o - 1)]``).
An instance runs one iteration at a time, and every iteration that computes a token of a
job starts after the job's release and ends before its deadline. So for every instance ``j``
and every time window ``[u, v]``, the iterations holding the jobs whose windows lie in
``[u, v]`` are disjoint and inside it::

    sum_{jobs inside [u, v]} load_j(job) <= v - u
    load_j = theta_p(j) x prompt tokens + c(j) x output tokens after the first

``theta_p``, ``theta_d`` is a linear lower bound of the iteration time valid for *every* batch
the instance can run: ``t(batch) >= theta_p P + theta_d D`` (``P`` prefill tokens, ``D`` decode
sequences), fitted on a covering grid of ``(P, D)`` cells (:func:`fit_token_costs`); an output
token after the first is either one decode sequence or, after a preemption, >= 1 recomputed
prefill token, so it is charged ``c = min(theta_p, theta_d)``. This is optimistic batching:
every token runs at the best per-token cost of the largest batches.

Simplifications (each makes the program easier than the simulator, so it stays a bound):

* only met requests consume capacity; unmet ones are dropped (they cost time in reality);
* capacity is fluid: a job's tokens may run at the best-batch per-token cost at any time in
  its window, and only windows from a finite family are constrained (any family is valid;
  the grid is dyadic in ``bucket_s``, with windows rounded outward to the grid);
* KV memory binds only per request (``p + o`` must fit the Follow, ``p + s`` the Lead, as the
  simulator checks at routing); KV occupancy over time, ``max_num_seqs`` and link sharing are
  not constrained, and the KV hand-over costs its transfer on an idle link;
* TTFT_lb = max(theta_p p, ceil(p / chunk) x shortest prefill iteration); the per-token decode
  lower bound ``d(i, j)`` is the shorter of one decode of context ``p + 1`` alone and a
  one-token prefill alone; both ignore queueing;
* splits are continuous (every integer split is included), ``lead == follow`` is colocation.

Assumption (checked for the analytic backend on random batches in the tests): iteration time
does not decrease when a batch gets more prefill tokens, decode sequences, prefill sequences,
cached tokens, squared chunk tokens or decode context. DistServe's coefficient backend breaks
it (a mixed batch is timed by its prefill part alone; decode time drops where the fit switches
to its large-batch coefficients), so under ``perf_backend=distserve`` the bound is only
checked empirically (a review found the fitted token costs below the iteration time on 20,000
random batches each for OPT-13B TP1/2/4 and OPT-66B TP2/4/8). Prefix caching
across requests is not modelled, so traces with prefix hashes are refused.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from ortools.linear_solver import pywraplp

from sim.catalog import GpuSpec, ModelSpec
from sim.engine import ClusterConfig, SimConfig
from sim.engine.placement import build_instances
from sim.metrics import SLO
from sim.perf import LatencyBackend
from sim.perf.batch import BatchArrays
from sim.workload import Workload

BOUND_SOLVERS = ("SCIP", "HIGHS", "CBC", "CP_SAT")
"""MIP backends of ``pywraplp``; the LP relaxation always uses GLOP."""
TOL = 1e-9
"""Relative slack given to every latency comparison (float rounding in the simulator)."""


@dataclass(frozen=True)
class BoundConfig:
    """How the bound is computed."""

    relax: bool = False
    """True: LP relaxation (y continuous; for long traces); False: integer program."""
    solver: str = "SCIP"
    """MIP backend (one of BOUND_SOLVERS)."""
    time_limit_s: float = 60.0
    """Solver time limit; on expiry the solver's proven bound is returned (still valid)."""
    bucket_s: float = 0.0
    """Window grid step, seconds (0 = ttft_slo / 4)."""
    max_buckets: int = 512
    """Coarsen the grid so the horizon has at most this many buckets."""
    grid_ratio: float = 1.05
    """Geometric step of the (P, D) cells of the token-cost fit (> 1)."""

    def __post_init__(self) -> None:
        if self.solver not in BOUND_SOLVERS:
            raise ValueError(f"bound.solver {self.solver!r} is not one of "
                             f"{', '.join(BOUND_SOLVERS)}")
        if self.time_limit_s <= 0:
            raise ValueError(f"bound.time_limit_s must be > 0, got {self.time_limit_s}")
        if self.bucket_s < 0 or self.max_buckets < 1:
            raise ValueError("bound.bucket_s must be >= 0 and bound.max_buckets >= 1, got "
                             f"{self.bucket_s}, {self.max_buckets}")
        if not self.grid_ratio > 1:
            raise ValueError(f"bound.grid_ratio must be > 1, got {self.grid_ratio}")


@dataclass
class BoundResult:
    """The bound and how it was obtained."""

    upper_bound_met: int
    """No policy meets both SLOs for more requests of the trace than this."""
    num_requests: int
    """Requests in the trace."""
    num_feasible_alone: int
    """Requests that could meet their SLOs on some (Lead, Follow) with the cluster to themselves."""
    status: str
    """OPTIMAL, FEASIBLE (time limit: the proven bound is used), LP, or TRIVIAL (no solve)."""
    relaxed: bool
    """Whether this is the LP relaxation's optimum."""
    solve_s: float = 0.0
    """Wall time: model building plus solver, seconds."""
    num_variables: int = 0
    """Variables of the program."""
    num_windows: int = 0
    """Capacity (window x instance) constraints."""
    token_costs_s: list[tuple[float, float]] = field(default_factory=list)
    """Per instance ``(theta_p s/prefill token, theta_d s/decode seq)``."""

    @property
    def upper_bound_attainment(self) -> float:
        """The bound as a share of the trace (0-1)."""
        return self.upper_bound_met / self.num_requests if self.num_requests else 0.0


def _geometric_levels(hi: int, ratio: float) -> np.ndarray:
    """0, 1, ..., hi with geometric gaps (every cell ``[l_m, l_{m+1} - 1]``), int64."""
    levels, v = [0], 1
    while v <= hi:
        levels.append(v)
        v = max(v + 1, int(math.floor(v * ratio)))
    return np.array(levels + [hi + 1], dtype=np.int64)


def fit_token_costs(be: LatencyBackend, max_num_batched_tokens: int, max_num_seqs: int,
                    min_decode_ctx_tokens: int, ratio: float = 1.05,
                    weights: tuple[float, float] = (1.0, 1.0)) -> tuple[float, float]:
    """``(theta_p, theta_d)`` with ``t(batch) >= theta_p P + theta_d D`` for every batch.

    The ``(P, D)`` plane (``P + D <= max_num_batched_tokens``, ``D <= max_num_seqs``) is cut
    into geometric cells. In a cell the time is at least the time at its lower corner with
    every other batch sum at its smallest (one prefill sequence, nothing cached, squared
    chunk tokens = P, each decode attending ``min_decode_ctx_tokens``), and the tokens are at
    most its upper corner; requiring the linear form at the upper corner to stay below that
    time makes it valid on the whole cell (monotonicity, see the module docstring). Among
    valid pairs ``theta_d = r theta_p``, ``r in [0, 1]``, the one maximising the charge
    ``theta_p (w_prompt + r w_output)`` is returned (output tokens are charged
    ``min(theta_p, theta_d)``, so ``r > 1`` gains nothing).

    Args:
        be: the instance's latency backend.
        max_num_batched_tokens: the instance's token budget per iteration.
        max_num_seqs: the instance's sequence limit.
        min_decode_ctx_tokens: smallest context a decode can attend (shortest prompt + 1).
        ratio: geometric step of the cells (> 1).
        weights: ``(prompt tokens, output tokens after the first)`` of the trace, to weigh
            the two costs.

    Returns:
        seconds per prefill token and per decode sequence.
    """
    budget = max_num_batched_tokens
    p_lv = _geometric_levels(budget, ratio)
    d_lv = _geometric_levels(min(max_num_seqs, budget), ratio)
    p0, d0 = np.meshgrid(p_lv[:-1], d_lv[:-1], indexing="ij")
    p1, d1 = np.meshgrid(p_lv[1:] - 1, d_lv[1:] - 1, indexing="ij")
    p0, d0, p1, d1 = (a.ravel() for a in (p0, d0, p1, d1))
    ok = (p0 + d0 <= budget) & (p0 + d0 > 0)
    p0, d0, p1, d1 = p0[ok], d0[ok], p1[ok], d1[ok]
    p_max = np.minimum(p1, budget - d0).astype(np.float64)
    d_max = np.minimum(d1, budget - p0).astype(np.float64)
    z = np.zeros_like(p0)
    t = be.iteration_times_s(BatchArrays(p0, (p0 > 0).astype(np.int64), z, z, p0, d0,
                                         d0 * max(min_decode_ctx_tokens, 1)))
    best = (0.0, 0.0, -1.0)
    for r in np.linspace(0.0, 1.0, 101):
        with np.errstate(divide="ignore"):
            theta_p = float(np.min(t / (p_max + r * d_max)))
        charge = theta_p * (weights[0] + r * weights[1])
        if charge > best[2]:
            best = (theta_p, r * theta_p, charge)
    return best[0] * (1 - 1e-6), best[1] * (1 - 1e-6)


@dataclass(frozen=True)
class _Inst:
    """What the bound needs of one simulated instance."""

    theta_p: float
    """Seconds per prefill token (linear lower bound)."""
    out_cost: float
    """Seconds charged per output token after the first: min(theta_p, theta_d)."""
    min_prefill_s: float
    """Shortest iteration holding a prefill chunk (one token alone), seconds."""
    chunk_tokens: int
    """Largest prefill chunk of one request per iteration, tokens."""
    capacity_tokens: int
    """KV capacity, tokens."""
    max_len_tokens: int
    """Longest prompt + output accepted, tokens."""


def _instances(model: ModelSpec, gpu: GpuSpec, cluster: ClusterConfig, sim: SimConfig,
               wl: Workload, ratio: float):
    """Per-instance bound data, backends and KV link specs, as the simulator builds them."""
    built = build_instances(model, gpu, cluster, sim, wl.hash_block_tokens)
    min_ctx = int(wl.prompt_tokens.min()) + 1
    weights = (float(wl.prompt_tokens.sum()), float((wl.output_tokens - 1).sum()))
    fits: dict[tuple, tuple[float, float]] = {}
    out = []
    for inst, be in zip(built.instances, built.backends, strict=True):
        c = inst.cfg
        key = (id(be), c.max_num_batched_tokens, c.max_num_seqs)
        if key not in fits:
            fits[key] = fit_token_costs(be, c.max_num_batched_tokens, c.max_num_seqs, min_ctx,
                                        ratio, weights)
        theta_p, theta_d = fits[key]
        chunk = c.max_num_batched_tokens
        if c.long_prefill_token_threshold:
            chunk = min(chunk, c.long_prefill_token_threshold)
        max_len = min(model.max_position_embeddings, c.max_model_len or 1 << 62,
                      (1 << 62) if c.enable_chunked_prefill else c.max_num_batched_tokens)
        out.append(_Inst(theta_p, min(theta_p, theta_d), be.iteration_time_s(1, 1, 0, 0, 1, 0, 0),
                         chunk, inst.capacity_tokens, max_len))
    return out, built


def _latency_bounds(insts: list[_Inst], built, wl: Workload, kv_bytes_per_token: float):
    """``(ttft_lb (n, m), tpot-token lb (n, m), transfer lb (n, m, m))`` seconds."""
    p = wl.prompt_tokens.astype(np.float64)
    n, m = len(p), len(insts)
    ttft = np.empty((n, m))
    dec = np.empty((n, m))
    for j, (ins, be) in enumerate(zip(insts, built.backends, strict=True)):
        ttft[:, j] = np.maximum(ins.theta_p * p, np.ceil(p / ins.chunk_tokens) * ins.min_prefill_s)
        ctx = wl.prompt_tokens + 1
        z = np.zeros(n, dtype=np.int64)
        one = np.ones(n, dtype=np.int64)
        t_dec = be.iteration_times_s(BatchArrays(z, z, z, z, z, one, ctx))
        dec[:, j] = np.minimum(t_dec, ins.min_prefill_s)
    xfer = np.zeros((n, m, m))
    for j in range(m):
        for k in range(m):
            if j != k:
                bw, lat = built.link_bandwidth(j, k)
                xfer[:, j, k] = lat + p * kv_bytes_per_token / bw
    return ttft * (1 - TOL), dec * (1 - TOL), xfer * (1 - TOL)


def _options(wl: Workload, slo: SLO, insts: list[_Inst], ttft, dec, xfer):
    """Feasible ``(i, j, k, q_max)`` per request (``k == j``: colocated, q_max unused)."""
    opts: list[list[tuple[int, int, int, int]]] = []
    m = len(insts)
    for i, (p, o) in enumerate(zip(wl.prompt_tokens.tolist(), wl.output_tokens.tolist(),
                                   strict=True)):
        row = []
        budget = slo.tpot_s * (o - 1)
        for j in range(m):
            lead = insts[j]
            if ttft[i, j] > slo.ttft_s or p + o > lead.max_len_tokens:
                continue
            if p + o <= lead.capacity_tokens and (o == 1 or dec[i, j] <= slo.tpot_s):
                row.append((i, j, j, 0))
            q_max = min(o - 2, lead.capacity_tokens - p - 1)
            if q_max < 0:
                continue
            for k in range(m):
                fol = insts[k]
                if k == j or p + o > min(fol.capacity_tokens, fol.max_len_tokens):
                    continue
                best = min(dec[i, k] * (o - 1), q_max * dec[i, j] + (o - 1 - q_max) * dec[i, k])
                if best + xfer[i, j, k] <= budget:
                    row.append((i, j, k, q_max))
        opts.append(row)
    return opts


def _windows(num_buckets: int) -> list[tuple[int, int]]:
    """Grid windows ``[u, v)``: lengths growing by ~1.5x, starts every quarter length."""
    lengths, length = [], 1
    while length < num_buckets:
        lengths.append(length)
        length = max(length + 1, int(length * 1.5))
    lengths.append(num_buckets)
    out = []
    for length in lengths:
        stride = max(1, length // 4)
        out.extend((u, min(u + length, num_buckets))
                   for u in range(0, max(num_buckets - length, 0) + 1, stride))
        if out[-1][1] != num_buckets:
            out.append((num_buckets - length, num_buckets))
    return sorted(set(out))


def _grid(wl: Workload, slo: SLO, cfg: BoundConfig):
    """Bucket step and each job's ``[release, deadline)`` bucket indices (rounded outward).

    Returns:
        ``(bucket_s, num_buckets, rel (2n,) int64, dl (2n,) int64)``; jobs ``0..n-1`` are the
        prefill jobs, ``n..2n-1`` the decode jobs.
    """
    a = wl.arrival_s
    o = wl.output_tokens.astype(np.float64)
    t0 = float(a.min())
    ends = np.concatenate([a + slo.ttft_s, a + slo.ttft_s + slo.tpot_s * (o - 1)])
    horizon = float(ends.max()) - t0
    step = cfg.bucket_s or slo.ttft_s / 4
    if horizon / step > cfg.max_buckets:
        step = horizon / cfg.max_buckets
    num = max(1, int(math.ceil(horizon / step - 1e-9)))
    rel = np.floor((np.concatenate([a, a]) - t0) / step - 1e-9).clip(0).astype(np.int64)
    dl = np.ceil((ends - t0) / step + 1e-9).astype(np.int64)
    return step, int(max(num, dl.max())), rel, dl


class _Program:
    """The (mixed-)integer program of one trace."""

    def __init__(self, opts, wl: Workload, slo: SLO, insts: list[_Inst], dec, xfer,
                 cfg: BoundConfig) -> None:
        s = pywraplp.Solver.CreateSolver("GLOP" if cfg.relax else cfg.solver)
        if s is None:
            raise ValueError(f"bound.solver {cfg.solver!r} is unavailable in this OR-Tools")
        s.SuppressOutput()
        self.s, inf = s, s.infinity()
        n = len(wl)
        out = wl.output_tokens.tolist()
        prompt = wl.prompt_tokens.tolist()
        # load[job][j]: list of (coefficient s, variable); job i prefill, n + i decode
        load: list[dict[int, list]] = [dict() for _ in range(2 * n)]
        obj = s.Objective()
        for i, row in enumerate(opts):
            if not row:
                continue
            one = s.Constraint(-inf, 1.0)
            o, p, budget = out[i], prompt[i], slo.tpot_s * (out[i] - 1)
            for _, j, k, q_max in row:
                y = s.NumVar(0, 1, "") if cfg.relax else s.IntVar(0, 1, "")
                one.SetCoefficient(y, 1.0)
                obj.SetCoefficient(y, 1.0)
                load[i].setdefault(j, []).append((insts[j].theta_p * p, y))
                if k == j:
                    if o > 1:
                        load[n + i].setdefault(j, []).append((insts[j].out_cost * (o - 1), y))
                    continue
                q = s.NumVar(0, q_max, "")
                s.Add(q <= q_max * y)
                # q d_j + (o - 1 - q) d_k + T y <= tpot (o - 1) y
                s.Add(q * float(dec[i, j] - dec[i, k])
                      + y * float((o - 1) * dec[i, k] + xfer[i, j, k] - budget) <= 0)
                load[n + i].setdefault(j, []).append((insts[j].out_cost, q))
                ck = insts[k].out_cost
                load[n + i].setdefault(k, []).extend([(ck * (o - 1), y), (-ck, q)])
        obj.SetMaximization()
        self.load = load

    def add_windows(self, step: float, num_buckets: int, rel: np.ndarray, dl: np.ndarray,
                    m: int) -> int:
        """Add every window x instance constraint that can bind; returns how many."""
        s = self.s
        max_load = np.zeros((len(self.load), m))
        for job, per in enumerate(self.load):
            for j, terms in per.items():
                max_load[job, j] = sum(c for c, _ in terms if c > 0)
        added = 0
        for u, v in _windows(num_buckets):
            inside = np.flatnonzero((rel >= u) & (dl <= v))
            if inside.size == 0:
                continue
            cap = (v - u) * step
            for j in np.flatnonzero(max_load[inside].sum(axis=0) > cap):
                con = s.Constraint(-s.infinity(), cap)
                for job in inside.tolist():
                    for c, var in self.load[job].get(int(j), ()):
                        con.SetCoefficient(var, con.GetCoefficient(var) + c)
                added += 1
        return added

    def solve(self, cfg: BoundConfig, fallback: int) -> tuple[int, str]:
        """``(bound, status)``: floor of the proven bound (LP optimum or MIP best bound)."""
        s = self.s
        s.SetTimeLimit(int(cfg.time_limit_s * 1000))
        status = s.Solve()
        if cfg.relax:
            if status != pywraplp.Solver.OPTIMAL:
                return fallback, "TRIVIAL"
            return min(fallback, int(math.floor(s.Objective().Value() + 1e-3))), "LP"
        if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
            return fallback, "TRIVIAL"
        bound = min(fallback, int(math.floor(s.Objective().BestBound() + 1e-3)))
        return bound, "OPTIMAL" if status == pywraplp.Solver.OPTIMAL else "FEASIBLE"


def offline_bound(model: ModelSpec, gpu: GpuSpec, cluster: ClusterConfig, sim: SimConfig,
                  workload: Workload, slo: SLO, cfg: BoundConfig | None = None) -> BoundResult:
    """Upper bound on the requests of ``workload`` any router can serve within both SLOs.

    Args:
        model: model every instance serves.
        gpu: GPU type.
        cluster: instances (as the simulator builds them: KV blocks, limits, links).
        sim: perf backend options (the simulator's).
        workload: the trace (no prefix hashes).
        slo: TTFT and TPOT SLOs.
        cfg: bound options.

    Returns:
        The bound, its status and sizes.

    Raises:
        ValueError: for a trace with prefix hashes or an empty trace.
    """
    cfg = cfg or BoundConfig()
    if workload.hash_offsets is not None:
        raise ValueError("offline_bound: the trace has prefix hashes; cross-request prefix "
                         "caching is not modelled, so the bound would not be valid -- drop "
                         "the hashes (and disable prefix caching) first")
    if len(workload) == 0:
        raise ValueError("offline_bound: the trace is empty")
    t0 = time.perf_counter()
    insts, built = _instances(model, gpu, cluster, sim, workload, cfg.grid_ratio)
    ttft, dec, xfer = _latency_bounds(insts, built, workload, model.kv_bytes_per_token)
    opts = _options(workload, slo, insts, ttft, dec, xfer)
    feasible = sum(1 for row in opts if row)
    costs = [(x.theta_p, x.out_cost) for x in insts]
    res = BoundResult(feasible, len(workload), feasible, "TRIVIAL", cfg.relax,
                      token_costs_s=costs)
    if feasible:
        prog = _Program(opts, workload, slo, insts, dec, xfer, cfg)
        step, num, rel, dl = _grid(workload, slo, cfg)
        res.num_windows = prog.add_windows(step, num, rel, dl, len(insts))
        res.num_variables = prog.s.NumVariables()
        res.upper_bound_met, res.status = prog.solve(cfg, feasible)
    res.solve_s = time.perf_counter() - t0
    return res
