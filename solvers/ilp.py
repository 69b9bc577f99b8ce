"""The allocation and placement integer program (OR-Tools), exact over a candidate list.

Decides how many instances of each candidate (role, tp, pp) run on each node of a cluster of
``num_nodes x gpus_per_node`` identical GPUs. Rates are integers in milli-req/s (capacities
rounded down), so every solver sees the same exact integer model.

Two exact formulations of the same program (``formulation``): ``patterns`` (default) counts
nodes by pattern -- which spanning stage segments a node hosts, and which local content
(among those no other content dominates) -- so identical nodes share variables and the
program's size does not grow with the node count (see :class:`_PatternModel`); ``nodes``
(the fallback when patterns would be too many) has variables per node, as follows.

Variables and constraints (``c`` candidate, ``n`` node, ``M`` GPUs per node)::

    x[c,n] >= 0   instances of a node-local candidate (tp*pp <= M) on node n
    s[c,n] >= 0   pipeline-stage segments (tp GPUs each) of a spanning candidate on node n
    m[c]          spanning instances:  sum_n s[c,n] = pp_c * m[c],  s[c,n] <= m[c]
                  (so each instance's stages sit on pp distinct nodes)
    u[n] = sum g_c x[c,n] + sum tp_c s[c,n] <= M,   u[0] >= u[1] >= ... (symmetry)
    R = colocated capacity + F                      (goodput, milli-req/s)

    high node affinity (fast cross-node links; prefill and decode provisioned independently):
        F <= sum prefill capacities,  F <= sum decode capacities   (KV crosses nodes freely)
    low node affinity (slow cross-node links; KV must stay on NVLink):
        F = sum_n f[n] + sum_pairs cap_pair * m[pair]
        f[n] <= prefill capacity on node n,  f[n] <= decode capacity on node n
        spanning prefill and decode instances only as pairs of equal pp whose stage-k
        segments share a node (s[pair,n] counts a prefill segment plus a decode segment)

Objectives: ``max_goodput`` (R, then fewer GPUs), ``min_gpus`` (fewest GPUs with R >= rate,
then more R), ``goodput_per_gpu`` (R / GPUs, by Dinkelbach's method: a short sequence of the
integer programs ``max q R - p G`` with ``p / q`` the best ratio so far; then, with
``fill_cluster``, the most goodput at that ratio).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction

from ortools.linear_solver import pywraplp

from solvers.capacity import Candidate

SOLVERS = ("CP_SAT", "SCIP", "HIGHS", "CBC")
"""Solver backends of ``pywraplp`` accepted."""
OBJECTIVES = ("goodput_per_gpu", "max_goodput", "min_gpus")
"""What the program optimises."""
AFFINITIES = ("high", "low")
"""Node affinity: high = KV may cross nodes; low = prefill/decode segments share a node."""
MILLI = 1000
"""Rates are integers in 1/MILLI req/s."""


@dataclass(frozen=True)
class Problem:
    """One allocation problem over a candidate list."""

    candidates: tuple[Candidate, ...]
    """Instance configurations with capacities."""
    num_nodes: int
    """Nodes in the cluster."""
    gpus_per_node: int
    """GPUs per node."""
    node_affinity: str = "high"
    """high or low (see the module docstring)."""
    objective: str = "goodput_per_gpu"
    """goodput_per_gpu, max_goodput or min_gpus."""
    rate_per_s: float = 0.0
    """min_gpus: the rate to serve, req/s."""
    fill_cluster: bool = True
    """goodput_per_gpu: replicate the best ratio over as much of the cluster as it allows."""

    def __post_init__(self) -> None:
        if self.num_nodes < 1 or self.gpus_per_node < 1:
            raise ValueError(f"cluster needs num_nodes >= 1 and gpus_per_node >= 1, got "
                             f"{self.num_nodes} x {self.gpus_per_node}")
        if self.node_affinity not in AFFINITIES:
            raise ValueError(f"node_affinity {self.node_affinity!r} is not one of "
                             f"{', '.join(AFFINITIES)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if self.objective == "min_gpus" and not self.rate_per_s > 0:
            raise ValueError(f"objective min_gpus needs rate_per_s > 0, got {self.rate_per_s}")

    def cap(self, c: Candidate) -> int:
        """Capacity of ``c`` in milli-req/s (rounded down: never optimistic)."""
        return int(c.capacity_per_s * MILLI)

    def is_local(self, c: Candidate) -> bool:
        """Whether an instance of ``c`` fits in one node."""
        return c.num_gpus <= self.gpus_per_node

    def usable(self) -> list[Candidate]:
        """Candidates that can be placed at all (a stage fits a node, stages <= nodes)."""
        return [c for c in self.candidates if self.cap(c) > 0 and c.tp <= self.gpus_per_node
                and (self.is_local(c) or c.pp <= self.num_nodes)]

    def pairs(self) -> list[tuple[Candidate, Candidate]]:
        """Low affinity: spanning (prefill, decode) pairs of equal pp whose stages share nodes."""
        if self.node_affinity != "low":
            return []
        span = [c for c in self.usable() if not self.is_local(c)]
        return [(p, d) for p in span if p.role == "prefill" for d in span
                if d.role == "decode" and d.pp == p.pp and p.tp + d.tp <= self.gpus_per_node]


@dataclass
class Allocation:
    """The solver's answer."""

    status: str
    """OPTIMAL, FEASIBLE (time limit: best found), INFEASIBLE or NOT_SOLVED."""
    goodput_per_s: float = 0.0
    """Predicted goodput, req/s (capacities rounded down to milli-req/s)."""
    num_gpus: int = 0
    """GPUs the instances occupy."""
    instances: list[tuple[Candidate, list[int]]] = field(default_factory=list)
    """One entry per instance: its candidate and the node of each pipeline stage."""
    gap_frac: float = 0.0
    """Relative optimality gap of the program a time limit stopped, else of the last program
    solved (0 = proven optimal)."""
    solve_s: float = 0.0
    """Wall time in the solver, seconds."""
    num_solves: int = 0
    """Integer programs solved (Dinkelbach iterations included)."""
    message: str = ""
    """Why there is no plan, when there is none."""
    formulation: str = ""
    """Which integer program was solved (``patterns`` or ``nodes``)."""

    @property
    def goodput_per_gpu(self) -> float:
        """Goodput per GPU used, req/s."""
        return self.goodput_per_s / self.num_gpus if self.num_gpus else 0.0


@dataclass
class _Items:
    """The candidates a model places, after exact dominance pruning."""

    local: list[Candidate]
    """Node-local candidates (tp * pp <= GPUs per node)."""
    span: list[Candidate]
    """Spanning candidates placed alone (low affinity: unified only)."""
    pair: list[tuple[Candidate, Candidate]]
    """Low affinity: spanning (prefill, decode) pairs whose stage-k segments share a node."""

    @property
    def span_items(self) -> list[tuple[int, int]]:
        """(GPUs per segment, segments) of every spanning item: singles, then pairs."""
        return [(c.tp, c.pp) for c in self.span] + [(p.tp + d.tp, p.pp) for p, d in self.pair]

    def span_cap(self, prob: Problem, k: int) -> int:
        """Goodput contribution (milli-req/s) of one instance of spanning item ``k``."""
        if k < len(self.span):
            return prob.cap(self.span[k])
        p, d = self.pair[k - len(self.span)]
        return min(prob.cap(p), prob.cap(d))


def _items(prob: Problem) -> _Items:
    """Split the usable candidates and drop dominated ones.

    Exact: a dominating one fits wherever they fit. Same role: local B beats local A when
    ``g_B <= g_A``; spanning B beats spanning A when
    ``tp_B <= tp_A`` and ``pp_B <= pp_A``; local B beats spanning A when ``g_B <= tp_A``;
    pairs likewise on (tp sum, pp) -- each time with capacity ``>=``.
    """
    cands, cap = prob.usable(), prob.cap
    low = prob.node_affinity == "low"

    def keep(items, size, value, better):
        out = []
        for k, a in enumerate(items):
            dominated = any(
                better(b, a) and value(b) >= value(a)
                and (value(b) > value(a) or size(b) != size(a) or j < k)
                for j, b in enumerate(items) if j != k)
            if not dominated:
                out.append(a)
        return out

    local = keep([c for c in cands if prob.is_local(c)], lambda c: c.num_gpus, cap,
                 lambda b, a: b.role == a.role and b.num_gpus <= a.num_gpus)
    span = [c for c in cands if not prob.is_local(c)
            and not (low and c.role in ("prefill", "decode"))]
    span = [a for a in keep(span, lambda c: (c.tp, c.pp), cap,
                            lambda b, a: b.role == a.role and b.tp <= a.tp and b.pp <= a.pp)
            if not any(b.role == a.role and b.num_gpus <= a.tp and cap(b) >= cap(a)
                       for b in local)]
    pair = keep(prob.pairs(), lambda q: (q[0].tp + q[1].tp, q[0].pp),
                lambda q: min(cap(q[0]), cap(q[1])),
                lambda b, a: b[0].tp + b[1].tp <= a[0].tp + a[1].tp and b[0].pp <= a[0].pp)
    return _Items(local, span, pair)


def _stages(pp: int, per_node: list[int]) -> list[list[int]]:
    """Nodes of each stage of the instances with ``per_node[n]`` segments on node ``n``.

    There are ``sum(per_node) / pp`` instances and each ``per_node[n]`` is at most that, so
    each instance gets distinct nodes.
    """
    count = sum(per_node) // pp
    segs = [n for n, k in enumerate(per_node) for _ in range(k)]
    # segs sorted by node, each node <= count times: stride count gives distinct nodes
    return [[segs[j * count + i] for j in range(pp)] for i in range(count)]


class _Model:
    """An integer program for one :class:`Problem`: solver, objective handling, values."""

    formulation = ""

    def __init__(self, prob: Problem, items: _Items, solver: str, num_workers: int) -> None:
        self.prob, self.items = prob, items
        self.local, self.span, self.pair = items.local, items.span, items.pair
        self.span_items = items.span_items
        self.solver = pywraplp.Solver.CreateSolver(solver)
        if self.solver is None:
            raise ValueError(f"solver {solver!r} is unavailable; use one of {', '.join(SOLVERS)}")
        self.solver.SuppressOutput()
        if solver == "CP_SAT":
            self.solver.SetSolverSpecificParametersAsString(f"num_workers:{num_workers}")
        self.rate = self.gpus = 0

    def _span_count_vars(self) -> dict[int, pywraplp.Variable]:
        """m[k]: instances of spanning item k."""
        prob, m = self.prob, self.prob.gpus_per_node
        return {k: self.solver.IntVar(0, prob.num_nodes * (m // tp) // pp, f"m{k}")
                for k, (tp, pp) in enumerate(self.span_items)}

    def _flow_bound(self) -> int:
        p = self.prob
        return sum(p.cap(c) * (p.num_nodes * p.gpus_per_node // c.num_gpus)
                   for c in p.usable()) + 1

    def solve(self, objective, maximize: bool, time_limit_s: float):
        """Solve with ``objective``; returns (status name, objective, bound, seconds)."""
        s = self.solver
        s.Objective().Clear()
        if maximize:
            s.Maximize(objective)
        else:
            s.Minimize(objective)
        if time_limit_s > 0:
            s.SetTimeLimit(max(int(time_limit_s * 1000), 1))
        t0 = time.perf_counter()
        code = s.Solve()
        wall = time.perf_counter() - t0
        names = {pywraplp.Solver.OPTIMAL: "OPTIMAL", pywraplp.Solver.FEASIBLE: "FEASIBLE",
                 pywraplp.Solver.INFEASIBLE: "INFEASIBLE"}
        status = names.get(code, "NOT_SOLVED")
        if status in ("OPTIMAL", "FEASIBLE"):
            return status, s.Objective().Value(), s.Objective().BestBound(), wall
        return status, 0.0, 0.0, wall

    def value(self, expr) -> int:
        """Integer value of a linear expression (or variable) in the last solution."""
        if isinstance(expr, (int, float)):
            return int(round(expr))
        return int(round(expr.solution_value()))

    def _span_instances(self, m: dict, per_node: list[tuple[int, ...]]):
        """Spanning instances of the last solution from per-node segment counts."""
        out = []
        for k, (_, pp) in enumerate(self.span_items):
            stages = _stages(pp, [seg[k] for seg in per_node])
            assert len(stages) == self.value(m[k])
            if k < len(self.span):
                out.extend((self.span[k], st) for st in stages)
            else:
                p, d = self.pair[k - len(self.span)]
                for st in stages:
                    out.extend([(p, st), (d, st)])
        return out


class _NodeModel(_Model):
    """One variable per (item, node): exact for any cluster, symmetric over identical nodes.

    Variables and constraints (``c`` candidate, ``n`` node, ``M`` GPUs per node)::

        x[c,n] >= 0   instances of a node-local candidate on node n
        s[k,n] >= 0   segments of spanning item k on node n
        m[k]          spanning instances:  sum_n s[k,n] = pp_k * m[k],  s[k,n] <= m[k]
        u[n] = sum g_c x[c,n] + sum tp_k s[k,n] <= M,   u[0] >= u[1] >= ... (symmetry)
        low affinity: f[n] <= prefill capacity on node n,  f[n] <= decode capacity on node n
    """

    formulation = "nodes"

    def __init__(self, prob: Problem, items: _Items, solver: str, num_workers: int) -> None:
        super().__init__(prob, items, solver, num_workers)
        s, nodes, m = self.solver, range(prob.num_nodes), prob.gpus_per_node
        self.x = {(i, n): s.IntVar(0, m // c.num_gpus, f"x{i}_{n}")
                  for i, c in enumerate(self.local) for n in nodes}
        self.m = self._span_count_vars()
        self.s = {}
        for k, (tp, pp) in enumerate(self.span_items):
            terms = []
            for n in nodes:
                v = s.IntVar(0, min(self.m[k].ub(), m // tp), f"s{k}_{n}")
                s.Add(v <= self.m[k])
                self.s[k, n] = v
                terms.append(v)
            s.Add(sum(terms) == pp * self.m[k])
        self.used = []
        for n in nodes:
            u = sum(c.num_gpus * self.x[i, n] for i, c in enumerate(self.local))
            u += sum(tp * self.s[k, n] for k, (tp, _) in enumerate(self.span_items))
            var = s.IntVar(0, m, f"u{n}")
            s.Add(var == u)
            self.used.append(var)
        for n in range(prob.num_nodes - 1):
            s.Add(self.used[n] >= self.used[n + 1])
        self.gpus = sum(self.used)
        self.rate = self._rate_expr(prob.node_affinity == "low")

    def _role_cap(self, role: str, n: int | None):
        """Capacity of ``role`` instances (node ``n`` only, or all), linear expression."""
        p, nodes = self.prob, ([n] if n is not None else range(self.prob.num_nodes))
        expr = sum(p.cap(c) * self.x[i, k] for i, c in enumerate(self.local) if c.role == role
                   for k in nodes)
        if n is None:
            expr += sum(p.cap(c) * self.m[k] for k, c in enumerate(self.span) if c.role == role)
        return expr

    def _rate_expr(self, low: bool):
        s, p = self.solver, self.prob
        bound = self._flow_bound()
        colo = self._role_cap("unified", None)
        if not low:
            flow = s.IntVar(0, bound, "F")
            s.Add(flow <= self._role_cap("prefill", None))
            s.Add(flow <= self._role_cap("decode", None))
            return colo + flow
        flows = []
        for n in range(p.num_nodes):
            f = s.IntVar(0, bound, f"f{n}")
            s.Add(f <= self._role_cap("prefill", n))
            s.Add(f <= self._role_cap("decode", n))
            flows.append(f)
        off = len(self.span)
        pairs = sum(self.items.span_cap(p, off + k) * self.m[off + k]
                    for k in range(len(self.pair)))
        return colo + sum(flows) + pairs

    def extract(self) -> list[tuple[Candidate, list[int]]]:
        """Instances of the last solution, each with its stages' nodes."""
        out = []
        for (i, n), v in self.x.items():
            out.extend((self.local[i], [n] * self.local[i].pp) for _ in range(self.value(v)))
        per_node = [tuple(self.value(self.s[k, n]) for k in range(len(self.span_items)))
                    for n in range(self.prob.num_nodes)]
        return out + self._span_instances(self.m, per_node)


class _Contents:
    """What a node's local instances can be, up to dominance.

    ``best[r][g]`` is the most capacity of role ``r`` local instances on exactly ``g`` GPUs
    (an unbounded knapsack) with its instance counts; a node's local content is a split
    ``(g_prefill, g_decode, g_unified)`` of its GPUs filled that way. Only contents no other
    content dominates are kept: fewer-or-equal GPUs and at least the capacity of each role
    (high affinity: capacities add up over the cluster), or of ``unified + min(prefill,
    decode)`` (low affinity: a node's prefill and decode pair up on that node only).
    """

    ROLES = ("prefill", "decode", "unified")

    def __init__(self, prob: Problem, local: list[Candidate], limit: int) -> None:
        m = prob.gpus_per_node
        self.items = {r: [c for c in local if c.role == r] for r in self.ROLES}
        self.best = {r: self._knapsack([(c.num_gpus, prob.cap(c)) for c in self.items[r]], m)
                     for r in self.ROLES}
        sizes = {r: [g for g in range(m + 1) if self.best[r][g] is not None]
                 for r in self.ROLES}
        splits = [(a, b, c) for a in sizes["prefill"] for b in sizes["decode"] if a + b <= m
                  for c in sizes["unified"] if 0 < a + b + c <= m]
        if len(splits) > limit:
            raise _TooLarge(f"{len(splits)} node contents")
        low = prob.node_affinity == "low"

        def key(split):
            caps = [self.best[r][g][0] for r, g in zip(self.ROLES, split, strict=True)]
            return (caps[2] + min(caps[0], caps[1]),) if low else tuple(caps)

        order = sorted(((sum(sp), key(sp), sp) for sp in splits),
                       key=lambda t: (t[0], [-v for v in t[1]]))
        kept: list[tuple[int, tuple[int, ...], tuple[int, int, int]]] = []
        for g, k, sp in order:
            if not any(g2 <= g and all(a >= b for a, b in zip(k2, k, strict=True))
                       for g2, k2, _ in kept):
                kept.append((g, k, sp))
        self.splits = [sp for _, _, sp in kept]
        """Kept contents: GPUs of each role."""

    @staticmethod
    def _knapsack(items: list[tuple[int, int]], m: int):
        best: list[tuple[int, tuple[int, ...]] | None] = [None] * (m + 1)
        best[0] = (0, (0,) * len(items))
        for g in range(1, m + 1):
            for i, (size, cap) in enumerate(items):
                prev = best[g - size] if size <= g else None
                if prev is not None and (best[g] is None or prev[0] + cap > best[g][0]):
                    counts = list(prev[1])
                    counts[i] += 1
                    best[g] = (prev[0] + cap, tuple(counts))
        return best

    def gpus(self, split) -> int:
        return sum(split)

    def cap(self, split, role: str) -> int:
        """Capacity of the role's instances in a content, milli-req/s."""
        return self.best[role][split[self.ROLES.index(role)]][0]

    def instances(self, split) -> list[Candidate]:
        """The local instances of a content."""
        out = []
        for r, g in zip(self.ROLES, split, strict=True):
            for c, k in zip(self.items[r], self.best[r][g][1], strict=True):
                out.extend([c] * k)
        return out


class _TooLarge(Exception):
    """The pattern formulation would be too large; use the per-node one."""


def _segment_patterns(sizes: list[int], m: int, limit: int) -> list[tuple[int, ...]]:
    """Every count vector of spanning segments (``sizes`` GPUs each) fitting ``m`` GPUs."""
    out: list[tuple[int, ...]] = []

    def rec(i: int, left: int, acc: tuple[int, ...]) -> None:
        if len(out) > limit:
            raise _TooLarge(f"more than {limit} node patterns of spanning segments")
        if i == len(sizes):
            out.append(acc)
            return
        for k in range(left // sizes[i] + 1):
            rec(i + 1, left - k * sizes[i], acc + (k,))

    rec(0, m, ())
    return out


class _PatternModel(_Model):
    """Counts of nodes by pattern: no per-node variables, so no symmetry among identical nodes.

    A node holds spanning segments (a count vector ``sigma`` over the spanning items) and local
    instances (a content ``l``, see :class:`_Contents`). Integer counts ``y[sigma]`` (nodes
    with that segment pattern, ``sum y = N``) and ``z[l]`` (nodes with that local content);
    a content fits next to a pattern when ``g(l) <= M - tp . sigma``, and the contents can be
    matched to the nodes iff, for every ``t = 1..M`` (Hall's condition for nested sets)::

        sum_{l: g(l) >= t} z[l] <= sum_{sigma: M - tp . sigma >= t} y[sigma]

    Spanning item ``k``: ``sum_sigma sigma_k y[sigma] = pp_k m[k]`` and a node holds at most
    ``m[k]`` of its segments (stages of one instance on distinct nodes): for ``j >= 2``,
    ``sum_{sigma_k >= j} y[sigma] <= N b[k,j]``, ``m[k] >= j b[k,j]`` with ``b`` binary.
    Goodput as the per-node model (high affinity: totals; low affinity: each content's
    ``unified + min(prefill, decode)`` plus the spanning pairs).
    """

    formulation = "patterns"

    def __init__(self, prob: Problem, items: _Items, solver: str, num_workers: int,
                 limit: int) -> None:
        m, nn = prob.gpus_per_node, prob.num_nodes
        self.sigmas = _segment_patterns([tp for tp, _ in items.span_items], m, limit)
        self.contents = _Contents(prob, items.local, limit)
        super().__init__(prob, items, solver, num_workers)
        s = self.solver
        self.seg_gpus = [sum(tp * k for (tp, _), k in zip(self.span_items, sig, strict=True))
                         for sig in self.sigmas]
        self.y = [s.IntVar(0, nn, f"y{i}") for i in range(len(self.sigmas))]
        self.z = [s.IntVar(0, nn, f"z{i}") for i in range(len(self.contents.splits))]
        s.Add(sum(self.y) == nn)
        splits = self.contents.splits
        for t in range(1, m + 1):
            need = [v for v, sp in zip(self.z, splits, strict=True) if sum(sp) >= t]
            if need:
                s.Add(sum(need) <= sum(v for v, g in zip(self.y, self.seg_gpus, strict=True)
                                       if m - g >= t))
        self.m = self._span_count_vars()
        for k, (_, pp) in enumerate(self.span_items):
            s.Add(sum(sig[k] * v for sig, v in zip(self.sigmas, self.y, strict=True))
                  == pp * self.m[k])
            for j in range(2, max(sig[k] for sig in self.sigmas) + 1):
                b = s.BoolVar(f"b{k}_{j}")
                s.Add(sum(v for sig, v in zip(self.sigmas, self.y, strict=True) if sig[k] >= j)
                      <= nn * b)
                s.Add(self.m[k] >= j * b)
        self.gpus = (sum(g * v for g, v in zip(self.seg_gpus, self.y, strict=True))
                     + sum(sum(sp) * v for sp, v in zip(splits, self.z, strict=True)))
        self.rate = self._rate_expr(prob.node_affinity == "low")

    def _rate_expr(self, low: bool):
        p, cs = self.prob, self.contents

        def local(role):
            return sum(cs.cap(sp, role) * v for sp, v in zip(cs.splits, self.z, strict=True))

        def span(role):
            return sum(p.cap(c) * self.m[k] for k, c in enumerate(self.span) if c.role == role)

        colo = local("unified") + span("unified")
        if not low:
            flow = self.solver.IntVar(0, self._flow_bound(), "F")
            self.solver.Add(flow <= local("prefill") + span("prefill"))
            self.solver.Add(flow <= local("decode") + span("decode"))
            return colo + flow
        off = len(self.span)
        pairs = sum(self.items.span_cap(p, off + k) * self.m[off + k]
                    for k in range(len(self.pair)))
        paired = sum(min(cs.cap(sp, "prefill"), cs.cap(sp, "decode")) * v
                     for sp, v in zip(cs.splits, self.z, strict=True))
        return colo + paired + pairs

    def extract(self) -> list[tuple[Candidate, list[int]]]:
        """Instances of the last solution: patterns and contents matched to nodes."""
        m = self.prob.gpus_per_node
        nodes = [i for i, v in enumerate(self.y) for _ in range(self.value(v))]
        nodes.sort(key=lambda i: self.seg_gpus[i])  # most free GPUs first
        conts = [sp for sp, v in zip(self.contents.splits, self.z, strict=True)
                 for _ in range(self.value(v))]
        conts.sort(key=sum, reverse=True)  # largest content on the freest node (Hall)
        conts += [(0, 0, 0)] * (len(nodes) - len(conts))
        load = [(self.seg_gpus[i] + sum(sp), i, sp) for i, sp in zip(nodes, conts, strict=True)]
        assert all(u <= m for u, _, _ in load)
        load.sort(key=lambda t: -t[0])  # node 0 the fullest, as the per-node model
        out = [(c, [n] * c.pp) for n, (_, _, sp) in enumerate(load)
               for c in self.contents.instances(sp)]
        return out + self._span_instances(self.m, [self.sigmas[i] for _, i, _ in load])


FORMULATIONS = ("auto", "patterns", "nodes")
"""auto = patterns unless they would be too many (then per node)."""
PATTERN_LIMIT = 20000
"""auto: most segment patterns or node contents before falling back to the per-node model."""


def _build(prob: Problem, solver: str, num_workers: int, formulation: str) -> _Model:
    items = _items(prob)
    if formulation in ("auto", "patterns"):
        try:
            return _PatternModel(prob, items, solver, num_workers, PATTERN_LIMIT)
        except _TooLarge:
            if formulation == "patterns":
                raise
    return _NodeModel(prob, items, solver, num_workers)


def _gap(obj: float, bound: float) -> float:
    return abs(bound - obj) / max(abs(obj), 1e-9)


def solve(prob: Problem, solver: str = "CP_SAT", time_limit_s: float = 60.0,
          num_workers: int = 2, formulation: str = "auto") -> Allocation:
    """Solve ``prob``; never returns an infeasible plan silently (status says what happened).

    Args:
        prob: the problem.
        solver: one of :data:`SOLVERS`.
        time_limit_s: wall-clock limit per integer program, seconds (0 = none).
        num_workers: CP-SAT search workers.
        formulation: one of :data:`FORMULATIONS` (same optimum; ``patterns`` is much faster
            on clusters of many identical nodes).

    Returns:
        The allocation with status, gap and wall time. INFEASIBLE has a message.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver {solver!r} is not one of {', '.join(SOLVERS)}")
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation {formulation!r} is not one of {', '.join(FORMULATIONS)}")
    if not prob.usable():
        return Allocation("INFEASIBLE", message="no candidate configuration can be placed")
    model = _build(prob, solver, num_workers, formulation)
    big = prob.num_nodes * prob.gpus_per_node + 1
    if prob.objective == "max_goodput":
        res = model.solve(big * model.rate - model.gpus, True, time_limit_s)
        return _finish(model, [res])
    if prob.objective == "min_gpus":
        need = int(round(prob.rate_per_s * MILLI))
        model.solver.Add(model.rate >= need)
        rmax = sum(prob.cap(c) * (big // c.num_gpus) for c in prob.usable()) + 1
        res = model.solve(rmax * model.gpus - model.rate, False, time_limit_s)
        alloc = _finish(model, [res])
        if alloc.status == "INFEASIBLE":
            alloc.message = (f"rate {prob.rate_per_s:g} req/s exceeds what "
                             f"{prob.num_nodes} x {prob.gpus_per_node} GPUs can serve under "
                             "the SLOs")
        return alloc
    return _dinkelbach(prob, model, big, time_limit_s)


def _dinkelbach(prob: Problem, model: _Model, big: int, time_limit_s: float) -> Allocation:
    """Maximise R / G exactly: solve max q R - p G until no solution beats p / q.

    ``time_limit_s`` is the budget of the whole sequence; when it runs out the best plan
    found so far returns with status FEASIBLE and its gap.
    """
    t_end = time.perf_counter() + time_limit_s if time_limit_s > 0 else None

    def left() -> float:
        return 0.0 if t_end is None else max(t_end - time.perf_counter(), 0.01)

    results = [model.solve(big * model.rate - model.gpus, True, left())]
    if results[-1][0] not in ("OPTIMAL", "FEASIBLE"):
        return _finish(model, results)
    best = _finish(model, results)
    ratio = Fraction(model.value(model.rate), max(model.value(model.gpus), 1))
    if ratio == 0:
        return Allocation("INFEASIBLE", message="no allocation meets the SLOs at any rate")
    for _ in range(50):
        p, q = ratio.numerator, ratio.denominator
        res = model.solve(q * model.rate - p * model.gpus, True, left())
        results.append(res)
        gpus = model.value(model.gpus) if res[0] in ("OPTIMAL", "FEASIBLE") else 0
        if gpus == 0:
            break
        new = Fraction(model.value(model.rate), gpus)
        if new > ratio:
            best = _finish(model, results)
        if new <= ratio or res[0] != "OPTIMAL":
            ratio = max(ratio, new)
            break
        ratio = new
    p, q = ratio.numerator, ratio.denominator
    keep = model.solver.Add(q * model.rate - p * model.gpus >= 0)
    some = model.solver.Add(model.rate >= 1)
    if prob.fill_cluster:
        results.append(model.solve(big * model.rate - model.gpus, True, left()))
    else:
        results.append(model.solve(model.gpus, False, left()))
    alloc = _finish(model, results)
    for con in (keep, some):
        con.SetBounds(-model.solver.infinity(), model.solver.infinity())
    if not alloc.instances:  # the last program ran out of time: keep the best plan found
        best.status, best.solve_s, best.num_solves = "FEASIBLE", alloc.solve_s, alloc.num_solves
        return best
    return alloc


def _finish(model: _Model, results: list) -> Allocation:
    status, obj, bound, _ = results[-1]
    wall = sum(r[3] for r in results)
    worst = "FEASIBLE" if any(r[0] == "FEASIBLE" for r in results) else status
    if status not in ("OPTIMAL", "FEASIBLE"):
        message = ("the integer program has no feasible allocation" if status == "INFEASIBLE"
                   else f"the solver stopped ({status}) after {wall:.3f} s without finding an "
                        "allocation; raise the time limit")
        return Allocation(status, solve_s=wall, num_solves=len(results), message=message,
                          formulation=model.formulation)
    rate = model.value(model.rate)
    return Allocation(
        status=worst if status == "OPTIMAL" else status,
        goodput_per_s=rate / MILLI,
        num_gpus=model.value(model.gpus),
        instances=model.extract(),
        # a program stopped by the time limit decides the gap (not a later one proven optimal)
        gap_frac=max([_gap(r[1], r[2]) for r in results if r[0] == "FEASIBLE"]
                     or [_gap(obj, bound)]),
        solve_s=wall,
        num_solves=len(results),
        formulation=model.formulation,
    )
