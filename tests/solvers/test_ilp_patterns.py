"""The pattern formulation (node counts per pattern) against brute force and the per-node one."""

from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solvers.ilp import Problem, solve
from tests.solvers.bruteforce import best
from tests.solvers.test_ilp import ROLES, cand, problems


def _placement_ok(prob, alloc):
    per_node = [0] * prob.num_nodes
    for c, nodes in alloc.instances:
        assert len(nodes) == c.pp
        if c.num_gpus > prob.gpus_per_node:
            assert len(set(nodes)) == c.pp  # stages of a spanning instance on distinct nodes
            for n in nodes:
                per_node[n] += c.tp
        else:
            assert len(set(nodes)) == 1
            per_node[nodes[0]] += c.num_gpus
    assert max(per_node) <= prob.gpus_per_node
    assert sum(per_node) == alloc.num_gpus


def _value(prob, alloc):
    got = (round(alloc.goodput_per_s * 1000), alloc.num_gpus)
    if prob.objective == "goodput_per_gpu":
        return Fraction(*got), got
    return got


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_both_formulations_equal_brute_force(prob):
    ref = best(prob) if prob.usable() else None
    for form in ("patterns", "nodes"):
        alloc = solve(prob, time_limit_s=20, formulation=form)
        assert alloc.formulation in ("", form)
        if ref is None:
            assert alloc.status == "INFEASIBLE" or not alloc.instances
            continue
        assert alloc.status == "OPTIMAL", alloc
        assert (round(alloc.goodput_per_s * 1000), alloc.num_gpus) == ref
        _placement_ok(prob, alloc)


@st.composite
def larger_problems(draw):
    """Up to 5 nodes (beyond brute force): patterns must match the per-node model."""
    num_nodes = draw(st.integers(2, 5))
    gpus_per_node = draw(st.sampled_from((2, 4, 8)))
    n = draw(st.integers(1, 6))
    cands = tuple(cand(draw(st.sampled_from(ROLES)), draw(st.sampled_from((1, 2, 3, 4))),
                       draw(st.sampled_from((1, 2, 3, 4))), draw(st.integers(1, 20000)))
                  for _ in range(n))
    objective = draw(st.sampled_from(("goodput_per_gpu", "max_goodput", "min_gpus")))
    rate = draw(st.integers(1, 60000)) / 1000 if objective == "min_gpus" else 0.0
    return Problem(cands, num_nodes, gpus_per_node, draw(st.sampled_from(("high", "low"))),
                   objective, rate, fill_cluster=draw(st.booleans()))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(larger_problems())
def test_patterns_equal_nodes_on_larger_clusters(prob):
    a = solve(prob, time_limit_s=30, formulation="patterns")
    b = solve(prob, time_limit_s=30, formulation="nodes")
    assert a.status == b.status
    if a.status != "OPTIMAL":
        return
    assert (round(a.goodput_per_s * 1000), a.num_gpus) == (round(b.goodput_per_s * 1000),
                                                            b.num_gpus)
    if a.instances:
        _placement_ok(prob, a)


def test_spanning_segments_need_distinct_nodes():
    # 2 nodes x 4: a pp=2 tp=2 instance needs one segment on each node, so two instances
    # put 2 segments on each node; three pp=2 stage pairs cannot fit on one node twice
    cs = (cand("unified", 2, 3, 9000),)
    for form in ("patterns", "nodes"):
        alloc = solve(Problem(cs, 3, 4, "high", "max_goodput"), formulation=form)
        assert alloc.status == "OPTIMAL" and alloc.num_gpus == 12
        assert round(alloc.goodput_per_s * 1000) == 18000
        _placement_ok(Problem(cs, 3, 4), alloc)
    # one node-filling segment kind with pp 3 on 4 nodes: one instance only (3 of 4 nodes)
    cs = (cand("unified", 4, 3, 9000),)
    alloc = solve(Problem(cs, 4, 4, "high", "max_goodput"))
    assert alloc.num_gpus == 12 and round(alloc.goodput_per_s * 1000) == 9000


@pytest.mark.parametrize(("aff", "nodes"), [("high", 16), ("low", 64)])
def test_large_cluster_with_spanning_candidates_is_fast(aff, nodes):
    # OPT-66B-like shapes on many nodes of 8: pattern counts do not grow with the node count
    cs = (cand("prefill", 2, 1, 2980), cand("prefill", 3, 1, 4478), cand("prefill", 4, 2, 9100),
          cand("prefill", 3, 4, 16000), cand("decode", 3, 1, 2623), cand("decode", 4, 1, 4845),
          cand("decode", 4, 4, 24000), cand("decode", 2, 8, 21000), cand("unified", 6, 4, 9000))
    alloc = solve(Problem(cs, nodes, 8, aff), time_limit_s=60)
    assert alloc.formulation == "patterns"
    assert alloc.status == "OPTIMAL", alloc.status
    _placement_ok(Problem(cs, nodes, 8), alloc)
