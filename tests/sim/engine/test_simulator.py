"""The cluster event loop: closed-form oracles, hand-overs, rejections, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sim.engine import ClusterConfig, SimConfig, Simulator
from sim.engine.placement import build_instances, place
from sim.instance import Reason, RequestStatus
from sim.metrics import SLO, records, summarize
from sim.perf import AnalyticBackend
from sim.routers import make_router
from sim.routing import Decision
from sim.workload import Workload, WorkloadConfig, build_workload
from tests.sim.engine.conftest import (
    GPU,
    MODEL,
    TIMESTAMPS,
    ScriptedRouter,
    check_request_invariants,
    make_cluster,
    make_instance_cfg,
    make_sim,
    make_workload,
    random_workload,
    record_batches,
)

REL = 1e-9


def backend(tp: int = 1, pp: int = 1) -> AnalyticBackend:
    """An independent copy of the backend the simulator builds for a TPxPP instance."""
    return AnalyticBackend(MODEL, GPU, tp=tp, pp=pp, engine="vllm_v1")


def prefill_s(be, new: int, ctx: int = 0) -> float:
    """One iteration prefilling ``new`` tokens of one prompt after ``ctx`` computed ones."""
    return be.iteration_time_s(new, 1, ctx, new * ctx, new * new, 0, 0)


def link_between(*instances, src: int = 0, dst: int = 1, **cluster_kw) -> tuple[float, float]:
    """``(bytes/s, latency s)`` of the KV link the placement gives ``src -> dst``."""
    built = build_instances(MODEL, GPU, make_cluster(*instances, **cluster_kw), SimConfig(), 16)
    return built.link_bandwidth(src, dst)


def decode_sum_s(be, prompt: int, first: int, last: int) -> float:
    """Decode iterations sampling outputs first+1 .. last of one request, one by one."""
    return sum(be.iteration_time_s(0, 0, 0, 0, 0, 1, prompt + j) for j in range(first, last))


# ---- one request on an idle instance -------------------------------------------------------
@pytest.mark.parametrize("fast_forward", [True, False])
@pytest.mark.parametrize(("tp", "prompt", "output"), [(1, 200, 1), (1, 256, 40), (2, 31, 17)])
def test_one_request_closed_form(fast_forward, tp, prompt, output):
    w = make_workload([3.5], [prompt], [output])
    sim = make_sim(w, make_instance_cfg(tensor_parallel_size=tp), fast_forward=fast_forward)
    (r,) = sim.run()
    be = backend(tp)
    ttft = prefill_s(be, prompt)
    assert r.status == RequestStatus.COMPLETED
    assert r.first_scheduled_s == 3.5
    assert r.first_token_s - r.arrival_s == pytest.approx(ttft, rel=REL)
    decode = decode_sum_s(be, prompt, 1, output)
    assert r.finish_s - r.arrival_s == pytest.approx(ttft + decode, rel=REL)
    row = records([r]).iloc[0]
    assert row.ttft_s == pytest.approx(ttft, rel=REL)
    assert row.e2e_s == pytest.approx(ttft + decode, rel=REL)
    assert row.tpot_s == pytest.approx(decode / (output - 1) if output > 1 else 0.0, rel=REL)


def test_long_prompt_ttft_is_the_sum_of_its_chunks():
    w = make_workload([0.0], [600], [1])
    (r,) = make_sim(w, make_instance_cfg(max_num_batched_tokens=256)).run()
    be = backend()
    expected = prefill_s(be, 256) + prefill_s(be, 256, 256) + prefill_s(be, 88, 512)
    assert r.first_token_s == pytest.approx(expected, rel=REL)


def test_pipeline_parallel_ttft_is_one_pass_through_all_stages():
    w = make_workload([0.0], [128], [1])
    (r,) = make_sim(w, make_instance_cfg(pipeline_parallel_size=2)).run()
    assert r.first_token_s == pytest.approx(prefill_s(backend(pp=2), 128), rel=REL)


def test_prefix_hit_shortens_the_second_prefill():
    shared = [[1, 2, 3, 4, 5]] * 2
    w = make_workload([0.0, 5.0], [100, 100], [2, 2], hashes=shared)
    a, b = make_sim(w, make_instance_cfg()).run()
    assert b.num_cached_prompt_tokens == 80 and a.num_cached_prompt_tokens == 0
    be = backend()
    assert a.first_token_s == pytest.approx(prefill_s(be, 100), rel=REL)
    assert b.first_token_s - b.arrival_s == pytest.approx(prefill_s(be, 20, 80), rel=REL)


# ---- KV hand-over ----------------------------------------------------------------------------
@pytest.mark.parametrize("cross_node", [False, True])
def test_disaggregated_request_closed_form(cross_node):
    prompt, output = 300, 20
    pre = make_instance_cfg(role="prefill", tensor_parallel_size=2, max_num_batched_tokens=512)
    dec = make_instance_cfg(role="decode", tensor_parallel_size=1)
    cluster_kw = {"num_nodes": 2, "gpus_per_node": 2} if cross_node else {}
    w = make_workload([1.0], [prompt], [output])
    sim = make_sim(w, pre, dec, router=make_router("distserve"), cluster_kw=cluster_kw)
    (r,) = sim.run()
    assert (r.lead, r.follow, r.split_tokens) == (0, 1, 1)
    assert r.status == RequestStatus.COMPLETED
    ttft = prefill_s(backend(2), prompt)
    assert r.first_token_s - r.arrival_s == pytest.approx(ttft, rel=REL)
    assert r.lead_done_s == r.first_token_s == r.transfer_start_s  # decode side idle: pulled
    built = build_instances(MODEL, GPU, make_cluster(pre, dec, **cluster_kw), SimConfig(), 16)
    bw, lat = built.link_bandwidth(0, 1)
    assert (built.nodes[0] != built.nodes[1]) == cross_node
    num_bytes = prompt * MODEL.kv_bytes_per_token  # num_computed_tokens after split 1
    assert r.transfer_end_s - r.transfer_start_s == pytest.approx(lat + num_bytes / bw, rel=REL)
    decode = decode_sum_s(backend(1), prompt, 1, output)
    assert r.finish_s - r.transfer_end_s == pytest.approx(decode, rel=REL)


def test_cross_node_link_is_slower_than_nvlink():
    pre, dec = make_instance_cfg(role="prefill"), make_instance_cfg(role="decode")
    near = build_instances(MODEL, GPU, make_cluster(pre, dec), SimConfig(), 16)
    far = build_instances(MODEL, GPU, make_cluster(pre, dec, num_nodes=2, gpus_per_node=1),
                          SimConfig(), 16)
    assert far.link_bandwidth(0, 1)[0] < near.link_bandwidth(0, 1)[0]
    assert far.link_bandwidth(0, 1)[1] > near.link_bandwidth(0, 1)[1]


@pytest.mark.parametrize("split", [1, 7, 19])
def test_tandem_split_lead_samples_exactly_split_tokens(split):
    prompt, output = 120, 20
    w = make_workload([0.0], [prompt], [output])
    insts = (make_instance_cfg(), make_instance_cfg())
    sim = make_sim(w, *insts, router=ScriptedRouter([Decision(0, 1, split)]),
                   fast_forward=False)
    logs = record_batches(sim)
    (r,) = sim.run()
    assert r.status == RequestStatus.COMPLETED and r.split_tokens == split
    assert len(logs[0]) == split  # one prefill + split - 1 decodes on the Lead
    assert len(logs[1]) == output - split  # the rest on the Follow
    be = backend()
    assert r.lead_done_s - r.first_token_s == pytest.approx(
        decode_sum_s(be, prompt, 1, split), rel=REL, abs=1e-15)
    bw, lat = link_between(*insts)
    kv_bytes = (prompt + split - 1) * MODEL.kv_bytes_per_token
    assert r.transfer_end_s - r.transfer_start_s == pytest.approx(lat + kv_bytes / bw, rel=REL)
    assert r.finish_s - r.transfer_end_s == pytest.approx(
        decode_sum_s(be, prompt, split, output), rel=REL)


@pytest.mark.parametrize("decision", [Decision(0, 1, 20), Decision(0, 1, 500), Decision(0, 0, 3)])
def test_split_at_or_past_the_output_is_colocated(decision):
    w = make_workload([0.0], [64], [20])
    sim = make_sim(w, make_instance_cfg(), make_instance_cfg(),
                   router=ScriptedRouter([decision]))
    logs = record_batches(sim)
    (r,) = sim.run()
    assert (r.lead, r.follow, r.split_tokens) == (0, 0, 20)
    assert r.lead_done_s < 0 and r.transfer_start_s < 0 and r.transfer_end_s < 0
    assert r.status == RequestStatus.COMPLETED and logs[1] == []


def test_concurrent_hand_overs_share_the_link():
    """Two equal prompts prefilled in one batch hand over together: each transfer takes 2x."""
    w = make_workload([0.0, 0.0], [100, 100], [3, 3])
    pre = make_instance_cfg(role="prefill")
    dec = make_instance_cfg(role="decode")
    sim = make_sim(w, pre, dec, router=ScriptedRouter([Decision(0, 1, 1)] * 2))
    a, b = sim.run()
    assert a.transfer_start_s == b.transfer_start_s
    bw, lat = link_between(pre, dec)
    single = lat + 100 * MODEL.kv_bytes_per_token / bw
    for r in (a, b):
        assert r.transfer_end_s - r.transfer_start_s == pytest.approx(2 * single, rel=1e-9)


# ---- fast-forwarded decode runs == one event per iteration ------------------------------------
FF_CASES = {
    "colocated": ((make_instance_cfg(num_gpu_blocks_override=60),
                   make_instance_cfg(num_gpu_blocks_override=90)), "round_robin"),
    "disaggregated": ((make_instance_cfg(role="prefill", num_gpu_blocks_override=60),
                       make_instance_cfg(role="decode", num_gpu_blocks_override=60)),
                      "distserve"),
    "tandem": ((make_instance_cfg(num_gpu_blocks_override=60, replicas=3),), "dynaserve"),
    "colocated_async": ((make_instance_cfg(num_gpu_blocks_override=60, async_scheduling=True),
                         make_instance_cfg(num_gpu_blocks_override=90, async_scheduling=True)),
                        "round_robin"),
    "disaggregated_async": ((make_instance_cfg(role="prefill", num_gpu_blocks_override=60,
                                               async_scheduling=True),
                             make_instance_cfg(role="decode", num_gpu_blocks_override=60,
                                               async_scheduling=True)), "distserve"),
    "tandem_async": ((make_instance_cfg(num_gpu_blocks_override=60, replicas=3,
                                        async_scheduling=True),), "dynaserve"),
}


@pytest.fixture(scope="module")
def ff_pairs():
    """Each FF case run with and without fast-forward on the same workload."""
    out = {}
    for name, (insts, router) in FF_CASES.items():
        w = random_workload(seed=1, n=60, rate_per_s=20.0, max_prompt=400, max_output=120)
        runs = []
        for ff in (True, False):
            sim = make_sim(w, *insts, router=make_router(router), fast_forward=ff)
            runs.append((records(sim.run()), sim))
        out[name] = runs
    return out


@pytest.mark.parametrize("case", list(FF_CASES))
def test_fast_forward_gives_identical_timestamps(ff_pairs, case):
    (fast, sim_fast), (slow, sim_slow) = ff_pairs[case]
    assert (fast.status == slow.status).all()
    assert (fast.num_preemptions == slow.num_preemptions).all()
    assert fast[["lead", "follow", "split_tokens"]].equals(slow[["lead", "follow", "split_tokens"]])
    for col in TIMESTAMPS:
        np.testing.assert_allclose(fast[col].fillna(-1), slow[col].fillna(-1), rtol=REL, atol=0)
    assert sim_fast.num_iterations == sim_slow.num_iterations
    assert sim_fast.num_events < sim_slow.num_events  # runs really were fast-forwarded
    assert sim_fast.num_runs > 0 and sim_slow.num_runs == 0


def test_fast_forward_cases_cover_preemption_and_hand_overs(ff_pairs):
    assert ff_pairs["colocated"][0][0].num_preemptions.sum() > 0
    disagg = ff_pairs["disaggregated"][0][0]
    assert (disagg.transfer_end_s.notna() == (disagg.output_tokens > 1)).all()
    tandem = ff_pairs["tandem"][0][0]
    assert ((tandem.split_tokens > 1) & (tandem.lead != tandem.follow)).any()


# ---- rejections, failures, conservation -----------------------------------------------------
def test_rejections_carry_reasons_and_are_counted():
    big = make_instance_cfg(num_gpu_blocks_override=200, max_model_len=1000)
    tiny = make_instance_cfg(num_gpu_blocks_override=4, max_model_len=1000)  # 64 tokens
    cases = [
        (Decision(0, 0, 1 << 30), 900, 200, Reason.PROMPT_EXCEEDS_MAX_MODEL_LEN),
        (Decision(1, 1, 1 << 30), 60, 10, Reason.PROMPT_EXCEEDS_KV_CAPACITY),
        (Decision(0, 1, 1), 100, 10, Reason.FOLLOW_CANNOT_HOLD_KV),
        (Decision(2, 0, 1), 10, 10, Reason.INVALID_DECISION),
        (Decision(0, -1, 1), 10, 10, Reason.INVALID_DECISION),
        (Decision(0, 1, 0), 10, 10, Reason.INVALID_DECISION),
        (Decision(0, 0, 1, reject=True), 10, 10, Reason.ROUTER_REJECTED),
        (Decision(0, 0, 1 << 30), 900, 100, Reason.NONE),  # exactly max_model_len: served
        (Decision(1, 1, 1 << 30), 54, 10, Reason.NONE),  # exactly 64 tokens: served
    ]
    n = len(cases)
    w = make_workload(np.arange(n) * 10.0, [c[1] for c in cases], [c[2] for c in cases])
    sim = make_sim(w, big, tiny, router=ScriptedRouter([c[0] for c in cases]))
    reqs = sim.run()
    for r, (_, _, _, reason) in zip(reqs, cases, strict=True):
        assert r.reason == reason, r.rid
        if reason == Reason.NONE:
            assert r.status == RequestStatus.COMPLETED
        else:
            assert r.status == RequestStatus.REJECTED
            assert r.finish_s == r.arrival_s and r.first_scheduled_s < 0
    summary = summarize(records(reqs), SLO(), num_gpus=2)
    assert summary["num_rejected"] == n - 2 and summary["num_completed"] == 2
    assert summary["reasons"] == {"prompt_exceeds_max_model_len": 1,
                                  "prompt_exceeds_kv_capacity": 1,
                                  "follow_cannot_hold_kv": 1, "invalid_decision": 3,
                                  "router_rejected": 1}


def test_model_context_length_bounds_max_model_len():
    w = make_workload([0.0], [131_000], [100])
    (r,) = make_sim(w, make_instance_cfg(num_gpu_blocks_override=20_000)).run()
    assert r.reason == Reason.PROMPT_EXCEEDS_MAX_MODEL_LEN


def test_time_limit_fails_in_flight_requests():
    w = make_workload([0.0, 0.0, 0.01, 50.0], [50, 50, 50, 50], [2, 500, 500, 5])
    sim = make_sim(w, make_instance_cfg(), time_limit_s=0.5)
    reqs = sim.run()
    assert sim.num_entered == 3 and len(reqs) == 3  # the arrival at 50 s never entered
    done, late1, late2 = reqs
    assert done.status == RequestStatus.COMPLETED and done.finish_s < 0.5
    for r in (late1, late2):
        assert r.status == RequestStatus.FAILED and r.reason == Reason.SIMULATION_ENDED
        assert r.finish_s == 0.5 and 0 < r.num_output_tokens < 500
    summary = summarize(records(reqs), SLO(), 1, num_not_entered=len(w) - sim.num_entered)
    counts = (summary["num_completed"], summary["num_failed"], summary["num_not_entered"])
    assert counts == (1, 2, 1)


def test_conservation_on_a_mixed_run():
    w = random_workload(seed=3, n=50, max_prompt=900)
    insts = (make_instance_cfg(num_gpu_blocks_override=50, max_model_len=800),
             make_instance_cfg(num_gpu_blocks_override=30))
    sim = make_sim(w, *insts, router=make_router("random", seed=2), time_limit_s=1.5)
    reqs = sim.run()
    check_request_invariants(reqs, sim.num_entered)
    s = summarize(records(reqs), SLO(), 2)
    assert s["num_requests"] == s["num_completed"] + s["num_rejected"] + s["num_failed"]
    assert min(s["num_completed"], s["num_rejected"], s["num_failed"]) > 0  # all three occur


# ---- determinism ------------------------------------------------------------------------------
def _records_for(workload_seed: int) -> pd.DataFrame:
    cfg = WorkloadConfig(num_requests=80)
    cfg.arrival.rate_per_s = 30.0
    cfg.lengths.prompt_mean, cfg.lengths.output_mean = 300.0, 60.0
    w = build_workload(cfg, np.random.default_rng(workload_seed))
    sim = Simulator(MODEL, GPU, ClusterConfig(instances=[
        make_instance_cfg(num_gpu_blocks_override=400, replicas=2)]),
        SimConfig(output_prediction_cv=0.3), w, make_router("dynaserve"),
        np.random.default_rng(7))
    return records(sim.run())


def test_same_seed_gives_identical_records():
    a, b = _records_for(11), _records_for(11)
    pd.testing.assert_frame_equal(a, b)
    assert a.num_preemptions.sum() > 0 or a.transfer_end_s.notna().any()


def test_different_workload_seed_gives_different_records():
    a, b = _records_for(11), _records_for(12)
    assert not a.equals(b)


# ---- driving API and configs --------------------------------------------------------------------
def test_manual_driving_matches_run():
    w = random_workload(seed=5, n=30)
    insts = (make_instance_cfg(num_gpu_blocks_override=60),) * 2
    auto = records(make_sim(w, *insts, router=make_router("join_shortest_queue")).run())
    sim = make_sim(w, *insts)
    router = make_router("join_shortest_queue")
    seen = []
    while (info := sim.next_arrival()) is not None:
        view = sim.view()
        assert view.now_s == info.arrival_s and view.num_instances == 2
        seen.append(int(view.num_waiting.sum() + view.num_running.sum()))
        sim.route(router(view, info))
    pd.testing.assert_frame_equal(records(sim.entered_requests()), auto)
    assert max(seen) > 0


def test_view_shows_queued_work():
    w = make_workload([0.0, 0.0], [100, 100], [5, 5])
    sim = make_sim(w, make_instance_cfg(), make_instance_cfg())
    sim.next_arrival()
    sim.route(Decision(1, 1, 1 << 30))
    sim.next_arrival()
    view = sim.view()
    assert list(view.num_waiting) == [0, 1] and list(view.queued_prefill_tokens) == [0, 100]
    assert list(view.kv_total_blocks) == [200, 200] and view.block_size == 16


def test_driving_api_misuse_raises():
    w = make_workload([0.0, 1.0], [10, 10], [1, 1])
    sim = make_sim(w, make_instance_cfg())
    with pytest.raises(RuntimeError, match="next_arrival"):
        sim.route(Decision(0, 0, 1))
    sim.next_arrival()
    with pytest.raises(RuntimeError, match="route"):
        sim.next_arrival()
    bare = Simulator(MODEL, GPU, make_cluster(), SimConfig(), w)
    with pytest.raises(ValueError, match="router"):
        bare.run()


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [({"perf_backend": "magic"}, "perf_backend"), ({"time_limit_s": -1.0}, "time_limit_s"),
     ({"output_prediction_cv": -0.1}, "output_prediction_cv")],
)
def test_sim_config_validation(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        SimConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [({"network": "smoke_signals"}, "network"), ({"instances": []}, "empty"),
     ({"num_nodes": 0}, "num_nodes"), ({"intra_node_efficiency_frac": 0.0}, "efficiency")],
)
def test_cluster_config_validation(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ClusterConfig(**kwargs)


def test_placement_first_fit_and_errors():
    cfg = make_cluster(make_instance_cfg(tensor_parallel_size=2, replicas=3),
                       make_instance_cfg(tensor_parallel_size=4), num_nodes=2, gpus_per_node=8)
    assert place(cfg) == [0, 0, 0, 1]
    assert cfg.num_gpus_used() == 10
    with pytest.raises(ValueError, match="instances do not span nodes"):
        place(make_cluster(make_instance_cfg(tensor_parallel_size=4), gpus_per_node=2))
    with pytest.raises(ValueError, match="add nodes"):
        place(make_cluster(make_instance_cfg(replicas=3), gpus_per_node=2))
    with pytest.raises(ValueError, match="pinned to node 1"):
        place(make_cluster(make_instance_cfg(node=1), num_nodes=1))


# ---- known bugs (strict xfail: remove the marker once fixed) -----------------------------------
def test_prompt_over_budget_without_chunking_is_rejected():
    w = make_workload([0.0], [100], [4])
    (r,) = make_sim(w, make_instance_cfg(enable_chunked_prefill=False,
                                         max_num_batched_tokens=64)).run()
    assert r.status == RequestStatus.REJECTED


def test_hand_ins_respect_max_num_seqs():
    insts = (make_instance_cfg(num_gpu_blocks_override=1000),
             make_instance_cfg(num_gpu_blocks_override=1000, max_num_seqs=1))
    nodes = {"num_nodes": 2, "gpus_per_node": 1}  # a slow cross-node hand-over
    probe = make_sim(make_workload([0.0], [2000], [5]), *insts,
                     router=ScriptedRouter([Decision(0, 1, 1)]), cluster_kw=nodes)
    (p,) = probe.run()
    mid = 0.5 * (p.transfer_start_s + p.transfer_end_s)
    w = make_workload([0.0, mid], [2000, 16], [5, 50])  # request 1 lands on the Follow mid-way
    sim = make_sim(w, *insts, router=ScriptedRouter([Decision(0, 1, 1), 1]), cluster_kw=nodes,
                   fast_forward=False)
    logs = record_batches(sim)
    sim.run()
    assert max(seqs for seqs, _ in logs[1]) <= 1


def test_cached_prefix_of_a_waiting_request_does_not_deadlock():
    w = make_workload([0.0, 1.0, 1.001], [65, 80, 65], [1, 60, 1],
                      hashes=[[1, 2, 3, 4], [], [1, 2, 3, 4]])
    reqs = make_sim(w, make_instance_cfg(num_gpu_blocks_override=10, max_num_batched_tokens=512)
                    ).run()
    assert all(r.status == RequestStatus.COMPLETED for r in reqs)


def test_crossed_hand_overs_do_not_deadlock():
    w = make_workload([0.0, 0.0], [100, 100], [40, 40])
    insts = (make_instance_cfg(num_gpu_blocks_override=10),) * 2  # 160 tokens each
    sim = make_sim(w, *insts, router=ScriptedRouter([Decision(0, 1, 20), Decision(1, 0, 20)]))
    reqs = sim.run()
    assert all(r.is_terminal for r in reqs)


def test_pipeline_parallel_request_waits_for_the_whole_pipeline():
    """A request gets at most one token per full pipeline latency (no self-overlap)."""
    w = Workload(np.array([0.0]), np.array([64]), np.array([200]))
    tpots = {}
    for pp in (1, 2, 4):
        sim = make_sim(w, make_instance_cfg(pipeline_parallel_size=pp),
                       router=make_router("round_robin"))
        df = records(sim.run())
        be = sim.backends[0]
        one = be.iteration_time_s(0, 0, 0, 0, 0, 1, 64 + 100)
        tpots[pp] = float(df.tpot_s.iloc[0])
        assert tpots[pp] >= 0.9 * one
    assert tpots[4] >= tpots[1] * 0.9  # more stages never make one request faster


def test_hand_over_starts_after_the_lead_token():
    w = Workload(np.array([0.0]), np.array([200]), np.array([10]))
    sim = make_sim(w, make_instance_cfg(pipeline_parallel_size=2), make_instance_cfg(),
                   router=ScriptedRouter([Decision(0, 1, 1)]))
    r = sim.run()[0]
    assert r.lead_done_s <= r.transfer_start_s < r.transfer_end_s <= r.finish_s
