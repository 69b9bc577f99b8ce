"""Property tests: random small clusters, routers and workloads keep the simulator's invariants.

Each example runs with ``check_invariants=True`` (KV block invariants asserted after every
event) and a batch recorder, then checks every request: terminal and counted, timestamps in
lifecycle order, every output sampled exactly once. ``BATON_PROPERTY_EXAMPLES`` raises the
number of examples for a longer local hunt.

The first three tests were written while four bugs were open and stay focused on one regime
each; ``test_anything_goes`` draws from the whole space (any roles, any router, KV pressure,
sequence caps, chunked prefill on or off, shared prefixes).
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from sim.engine import ClusterConfig, SimConfig, Simulator
from sim.instance import InstanceConfig
from sim.metrics import SLO, records, summarize
from sim.routers import make_router
from sim.workload import Workload
from tests.sim.engine.conftest import GPU, MODEL, check_request_invariants, record_batches

PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("BATON_PROPERTY_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ROLES = ("unified", "prefill", "decode")
COLOCATED = ("round_robin", "join_shortest_queue", "least_outstanding_tokens")
NO_SEQ_CAP = 64
"""max_num_seqs above any workload size here: the cap never binds."""


@st.composite
def instance_cfgs(draw, role: str | None = None, min_blocks: int = 40, max_blocks: int = 150,
                  max_num_seqs: int | None = None) -> InstanceConfig:
    """One small instance; without chunked prefill max_model_len = the budget (as vLLM)."""
    chunked = draw(st.sampled_from([True, True, False]))
    budget = draw(st.integers(32, 512))
    cap = draw(st.booleans())  # without chunking, vLLM caps max_model_len at the budget
    return InstanceConfig(
        role=role or draw(st.sampled_from(ROLES)),
        tensor_parallel_size=draw(st.integers(1, 2)),
        pipeline_parallel_size=draw(st.sampled_from([1, 1, 2])),
        scheduler_reserve_full_isl=draw(st.booleans()),
        num_gpu_blocks_override=draw(st.integers(min_blocks, max(min_blocks, max_blocks))),
        max_num_batched_tokens=budget,
        max_num_seqs=max_num_seqs or draw(st.integers(1, 16)),
        enable_chunked_prefill=chunked,
        enable_prefix_caching=draw(st.booleans()),
        long_prefill_token_threshold=draw(st.sampled_from([0, 0, 48])),
        max_model_len=0 if chunked or not cap else budget,
        async_scheduling=draw(st.booleans()),
    )


@st.composite
def workloads(draw, max_requests: int = 60, max_prompt: int = 600, max_output: int = 200,
              hashed: bool = False) -> Workload:
    """Poisson arrivals, uniform lengths; hashed: prompts share prefixes of 3 chains."""
    n = draw(st.integers(10, max_requests))
    max_prompt = draw(st.integers(16, max_prompt))
    max_output = draw(st.integers(1, max_output))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrival = np.cumsum(rng.exponential(1.0 / draw(st.floats(1.0, 200.0)), n))
    prompt = rng.integers(1, max_prompt + 1, n)
    output = rng.integers(1, max_output + 1, n)
    offsets = ids = None
    if hashed:
        chunks, unique = [], 10_000
        for p in prompt.tolist():
            blocks = p // 16
            shared = int(rng.integers(0, blocks + 1))
            chain = 1000 * int(rng.integers(0, 3))
            chunks.append([chain + j for j in range(shared)]
                          + list(range(unique, unique + blocks - shared)))
            unique += blocks
        offsets = np.concatenate(([0], np.cumsum([len(c) for c in chunks]))).astype(np.int64)
        ids = np.array([x for c in chunks for x in c], dtype=np.int64)
    return Workload(arrival, prompt, output, offsets, ids)


def run_and_check(insts: list[InstanceConfig], w: Workload, router: str,
                  fast_forward: bool) -> None:
    """Simulate and assert every invariant."""
    kwargs = {"seed": 5} if router == "random" else {}
    sim = Simulator(MODEL, GPU, ClusterConfig(num_nodes=4, gpus_per_node=8, instances=insts),
                    SimConfig(check_invariants=True, fast_forward=fast_forward), w,
                    make_router(router, **kwargs))
    logs = record_batches(sim)
    reqs = sim.run()
    assert sim.num_entered == len(w)
    check_request_invariants(reqs, len(w))
    for inst, log in zip(sim.instances, logs, strict=True):
        for seqs, tokens in log:
            assert seqs <= inst.cfg.max_num_seqs
            assert tokens <= inst.cfg.max_num_batched_tokens
        assert not inst.running and not inst.waiting and not inst.pending_kv
        assert inst.kv.num_used == 0  # every block came back
    for r in reqs:
        if r.reason == 0:
            assert r.instance == r.follow
    s = summarize(records(reqs), SLO(), len(insts))
    assert s["num_requests"] == s["num_completed"] + s["num_rejected"] + s["num_failed"]
    assert s["num_failed"] == 0
    target(float(s["num_preemptions"]), label="preemptions")  # steer towards KV pressure


@PROPERTY_SETTINGS
@given(insts=st.lists(instance_cfgs(), min_size=1, max_size=4), w=workloads(),
       router=st.sampled_from(COLOCATED), fast_forward=st.booleans())
def test_colocated_clusters_under_kv_pressure(insts, w, router, fast_forward):
    """No prefix hashes under KV pressure (bug C: pinned prefixes can deadlock)."""
    run_and_check(insts, w, router, fast_forward)


@PROPERTY_SETTINGS
@given(pre=st.lists(instance_cfgs(role="prefill"), min_size=1, max_size=2),
       dec=st.lists(instance_cfgs(role="decode", max_num_seqs=NO_SEQ_CAP), min_size=1,
                    max_size=2),
       w=workloads(), fast_forward=st.booleans())
def test_disaggregated_pools_under_kv_pressure(pre, dec, w, fast_forward):
    """DistServe pools: Leads and Follows disjoint (bug D), no sequence cap on the decode pool
    (bug B: hand-ins can overflow it), no prefix hashes (bug C)."""
    run_and_check(pre + dec, w, "distserve", fast_forward)


@st.composite
def roomy_clusters(draw, w: Workload) -> list[InstanceConfig]:
    """Instances whose KV holds the whole workload at once (no preemption, no KV waits)."""
    need = int(sum(-(-(p + o) // 16) for p, o in zip(w.prompt_tokens.tolist(),
                                                       w.output_tokens.tolist(), strict=True)))
    insts = draw(st.lists(instance_cfgs(min_blocks=max(40, need), max_blocks=400,
                                        max_num_seqs=NO_SEQ_CAP),
                          min_size=1, max_size=4))
    return insts


@PROPERTY_SETTINGS
@given(data=st.data(), router=st.sampled_from(["dynaserve", "random", "distserve",
                                                "round_robin"]),
       fast_forward=st.booleans())
def test_tandem_and_prefix_caching_with_roomy_kv(data, router, fast_forward):
    """Any split, any roles, shared prefixes; KV roomy and no sequence cap (bugs B, C, D)."""
    w = data.draw(workloads(max_requests=25, max_prompt=160, max_output=40, hashed=True))
    insts = data.draw(roomy_clusters(w))
    insts = [InstanceConfig(**{**i.__dict__, "enable_prefix_caching": True}) for i in insts]
    run_and_check(insts, w, router, fast_forward)


@PROPERTY_SETTINGS
@given(data=st.data(), router=st.sampled_from(sorted(__import__("sim.routers").routers.ROUTERS)),
       fast_forward=st.booleans())
def test_anything_goes(data, router, fast_forward):
    """Whole space: KV pressure, sequence caps, crossed hand-overs, prefixes, any router."""
    w = data.draw(workloads(max_requests=40, max_prompt=400, max_output=120,
                            hashed=data.draw(st.booleans())))
    insts = data.draw(st.lists(instance_cfgs(), min_size=1, max_size=4))
    run_and_check(insts, w, router, fast_forward)


@PROPERTY_SETTINGS
@given(data=st.data(), router=st.sampled_from(sorted(__import__("sim.routers").routers.ROUTERS)))
def test_fast_forward_is_exact(data, router):
    """Closed-form decode runs give the same records as one event per iteration, anywhere."""
    w = data.draw(workloads(max_requests=40, max_prompt=400, max_output=120,
                            hashed=data.draw(st.booleans())))
    insts = data.draw(st.lists(instance_cfgs(), min_size=1, max_size=4))
    kwargs = {"seed": 5} if router == "random" else {}
    out = []
    for ff in (True, False):
        sim = Simulator(MODEL, GPU, ClusterConfig(num_nodes=4, gpus_per_node=8, instances=insts),
                        SimConfig(fast_forward=ff), w, make_router(router, **kwargs))
        out.append(records(sim.run()))
    fast, slow = out
    assert (fast.status == slow.status).all() and (fast.reason == slow.reason).all()
    for col in ("first_token_s", "lead_done_s", "transfer_start_s", "transfer_end_s",
                "finish_s"):
        np.testing.assert_allclose(fast[col].fillna(-1), slow[col].fillna(-1), rtol=1e-9)
