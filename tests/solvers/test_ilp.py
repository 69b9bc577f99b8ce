from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solvers.capacity import Candidate
from solvers.ilp import Problem, solve
from tests.solvers.bruteforce import best

ROLES = ("prefill", "decode", "unified")


def cand(role, tp, pp, milli):
    # +0.5 milli so rounding down to milli-req/s gives exactly ``milli``
    return Candidate(role, tp, pp, (milli + 0.5) / 1000)


@st.composite
def problems(draw):
    num_nodes = draw(st.integers(1, 2))
    gpus_per_node = draw(st.integers(1, 4))
    n = draw(st.integers(1, 5))
    cands = tuple(cand(draw(st.sampled_from(ROLES)), draw(st.sampled_from((1, 2, 4))),
                       draw(st.sampled_from((1, 2))), draw(st.integers(1, 20000)))
                  for _ in range(n))
    objective = draw(st.sampled_from(("goodput_per_gpu", "max_goodput", "min_gpus")))
    rate = draw(st.integers(1, 40000)) / 1000 if objective == "min_gpus" else 0.0
    return Problem(cands, num_nodes, gpus_per_node, draw(st.sampled_from(("high", "low"))),
                   objective, rate, fill_cluster=draw(st.booleans()))


def check(prob, solver="CP_SAT"):
    ref = best(prob) if prob.usable() else None
    alloc = solve(prob, solver, time_limit_s=20)
    if ref is None:
        assert alloc.status == "INFEASIBLE" or not alloc.instances
        return
    assert alloc.status == "OPTIMAL", alloc
    got = (round(alloc.goodput_per_s * 1000), alloc.num_gpus)
    if prob.objective == "goodput_per_gpu":
        assert Fraction(*got) == Fraction(*ref)
    assert got == ref
    # the listed instances really use that many GPUs and fit the nodes
    assert sum(c.num_gpus for c, _ in alloc.instances) == alloc.num_gpus
    per_node = [0] * prob.num_nodes
    for c, nodes in alloc.instances:
        assert len(nodes) == c.pp and (len(set(nodes)) == c.pp or c.num_gpus <= prob.gpus_per_node)
        for n in (set(nodes) if c.num_gpus > prob.gpus_per_node else nodes[:1]):
            per_node[n] += c.tp if c.num_gpus > prob.gpus_per_node else c.num_gpus
    assert max(per_node) <= prob.gpus_per_node


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_ilp_equals_brute_force(prob):
    check(prob)


@pytest.mark.parametrize("solver", ["SCIP", "HIGHS", "CBC"])
def test_other_solvers_agree(solver):
    prob = Problem((cand("prefill", 2, 1, 6479), cand("decode", 1, 1, 5281),
                    cand("decode", 2, 1, 11245), cand("unified", 4, 1, 1000),
                    cand("prefill", 4, 2, 30000)), 2, 4, "low")
    check(prob, solver)


def test_distserve_opt13b_choice():
    # DistServe's OPT-13B capacities shape: prefill TP2 + decode TP1 is the best per GPU
    prob = Problem((cand("prefill", 1, 1, 724), cand("prefill", 2, 1, 6279),
                    cand("prefill", 4, 1, 16134), cand("decode", 1, 1, 4756),
                    cand("decode", 2, 1, 10852), cand("decode", 4, 1, 19715)), 1, 4)
    alloc = solve(prob)
    assert sorted((c.role, c.tp) for c, _ in alloc.instances) == [("decode", 1), ("prefill", 2)]
    assert alloc.num_gpus == 3 and alloc.gap_frac == 0.0


def test_low_affinity_keeps_pairs_on_a_node():
    # two nodes of 3: high affinity may put 2 prefill on one node, decodes on the other;
    # low affinity must pair each prefill with a decode on its own node
    cs = (cand("prefill", 1, 1, 5000), cand("decode", 2, 1, 5000), cand("decode", 1, 1, 2000))
    for aff in ("high", "low"):
        alloc = solve(Problem(cs, 2, 3, aff, "max_goodput"))
        if aff == "low":
            for n in range(2):
                roles = {c.role for c, nodes in alloc.instances if nodes[0] == n}
                assert roles in (set(), {"prefill", "decode"})


def test_spanning_pair_low_affinity():
    # prefill and decode need 2 stages each; a stage of each shares a node of 8
    cs = (cand("prefill", 3, 3, 3000), cand("decode", 4, 3, 2500))
    alloc = solve(Problem(cs, 4, 8, "low", "max_goodput"))
    assert alloc.status == "OPTIMAL" and alloc.num_gpus == 21
    (p, pn), (d, dn) = sorted(alloc.instances, key=lambda x: x[0].role == "decode")
    assert sorted(pn) == sorted(dn) and len(set(pn)) == 3


def test_infeasible_rate_is_explained():
    alloc = solve(Problem((cand("unified", 1, 1, 1000),), 1, 2, objective="min_gpus",
                          rate_per_s=5.0))
    assert alloc.status == "INFEASIBLE" and "exceeds" in alloc.message


def test_time_limit_returns_status():
    cs = tuple(cand(r, tp, 1, 1000 + 37 * tp + 11 * i) for i, r in enumerate(ROLES)
               for tp in (1, 2, 4, 8))
    alloc = solve(Problem(cs, 16, 8, "low", "max_goodput"), time_limit_s=0.001)
    assert alloc.status in ("OPTIMAL", "FEASIBLE", "NOT_SOLVED")
    if alloc.status in ("OPTIMAL", "FEASIBLE"):   # a plan that fits the cluster
        assert alloc.instances and 0 < alloc.num_gpus <= 16 * 8
        per_node = [0] * 16
        for c, nodes in alloc.instances:
            for k in nodes:
                per_node[k] += c.num_gpus // len(nodes)
        assert max(per_node) <= 8
    else:                                           # nothing found in time: said so
        assert not alloc.instances and "time limit" in alloc.message
