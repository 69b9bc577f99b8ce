"""Brute-force enumeration of every allocation of a small problem (the ILP's oracle)."""

from __future__ import annotations

import itertools
from fractions import Fraction

from solvers.ilp import Problem


def _patterns(sizes: list[int], budget: int) -> list[tuple[int, ...]]:
    """Every count vector over items of ``sizes`` GPUs with total <= budget."""
    out = []

    def rec(i: int, left: int, acc: list[int]) -> None:
        if i == len(sizes):
            out.append(tuple(acc))
            return
        for k in range(left // sizes[i] + 1):
            rec(i + 1, left - k * sizes[i], acc + [k])

    rec(0, budget, [])
    return out


def enumerate_allocations(prob: Problem):
    """Yield ``(rate_milli, gpus)`` of every allocation (nodes <= 2)."""
    assert prob.num_nodes <= 2
    cands = prob.usable()
    local = [c for c in cands if prob.is_local(c)]
    low = prob.node_affinity == "low"
    span = [c for c in cands if not prob.is_local(c)
            and not (low and c.role in ("prefill", "decode"))]
    pairs = prob.pairs()
    # spanning items: (per-node GPUs, pp, kind, payload); with <= 2 nodes pp must be 2
    items = [(c.tp, c.pp, "single", c) for c in span] + [(p.tp + d.tp, p.pp, "pair", (p, d))
                                                        for p, d in pairs]
    items = [it for it in items if it[1] == prob.num_nodes]
    m = prob.gpus_per_node
    for counts in itertools.product(*[range(m // it[0] + 1) for it in items]):
        per_node = sum(k * it[0] for k, it in zip(counts, items, strict=True))
        if per_node > m:
            continue
        pats = _patterns([c.num_gpus for c in local], m - per_node)
        for combo in itertools.product(pats, repeat=prob.num_nodes):
            yield _value(prob, local, items, counts, combo, low)


def _value(prob, local, items, counts, combo, low):
    cap = prob.cap
    gpus = sum(k * it[0] * it[1] for k, it in zip(counts, items, strict=True))
    gpus += sum(k * c.num_gpus for pat in combo for k, c in zip(pat, local, strict=True))

    def role_sum(role, pats):
        return sum(k * cap(c) for pat in pats for k, c in zip(pat, local, strict=True)
                   if c.role == role)

    span_role = {r: sum(k * cap(it[3]) for k, it in zip(counts, items, strict=True)
                        if it[2] == "single" and it[3].role == r)
                 for r in ("prefill", "decode", "unified")}
    rate = role_sum("unified", combo) + span_role["unified"]
    if low:
        rate += sum(min(role_sum("prefill", [pat]), role_sum("decode", [pat])) for pat in combo)
        rate += sum(k * min(cap(it[3][0]), cap(it[3][1]))
                    for k, it in zip(counts, items, strict=True) if it[2] == "pair")
    else:
        rate += min(role_sum("prefill", combo) + span_role["prefill"],
                    role_sum("decode", combo) + span_role["decode"])
    return rate, gpus


def best(prob: Problem) -> tuple[int, int] | None:
    """Optimal ``(rate_milli, gpus)`` for the problem's objective, or None if infeasible."""
    vals = set(enumerate_allocations(prob))
    if prob.objective == "max_goodput":
        return max(vals, key=lambda v: (v[0], -v[1]))
    if prob.objective == "min_gpus":
        need = int(round(prob.rate_per_s * 1000))
        ok = [v for v in vals if v[0] >= need]
        return min(ok, key=lambda v: (v[1], -v[0])) if ok else None
    ratios = [v for v in vals if v[1] > 0 and v[0] > 0]
    if not ratios:
        return None
    top = max(Fraction(r, g) for r, g in ratios)
    at_top = [v for v in ratios if Fraction(v[0], v[1]) == top]
    if prob.fill_cluster:
        return max(at_top, key=lambda v: (v[0], -v[1]))
    return min(at_top, key=lambda v: (v[1], -v[0]))
