"""The router decides exactly as the simulator-side EncodedPolicy for the same state."""

from __future__ import annotations

import numpy as np
import pytest

from policies.learned import EncodedPolicy
from policies.onnx_policy import OnnxPolicy
from runtime.backends import Scrape, build_view, parse_metrics
from runtime.router import Router, build_parser
from sim.features import ObservationEncoder
from sim.routing import RequestInfo

from .conftest import make_layout, write_linear_policy

ROLES = ["unified", "prefill", "decode", "unified"]


def test_router_decisions_equal_encoded_policy(tmp_path):
    layout = make_layout(ROLES, kv_blocks=4096)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(layout["obs_dim"], sum(layout["nvec"]))).astype(np.float32)
    path = write_linear_policy(tmp_path / "p", layout, w)
    router = Router(build_parser().parse_args(
        ["--backends", *[f"http://127.0.0.1:{9000 + i}" for i in range(4)], "--policy",
         str(path)]))
    net = OnnxPolicy.load(path)
    sim_side = EncodedPolicy(ObservationEncoder.from_layout(net.sidecar["baton"]["observation"]),
                             net.act)
    decisions = set()
    for k in range(300):
        for b in router.backends:
            b.scrape = Scrape(int(rng.integers(0, 40)), int(rng.integers(0, 20)),
                              float(rng.uniform(0, 1)))
            b.inflight = int(rng.integers(0, 60))
            b.queued_prefill_tokens = int(rng.integers(0, 20000))
            b.transfers_in, b.transfers_out = (int(x) for x in rng.integers(0, 5, 2))
        view = build_view(router.backends, 0.1 * k, router.block_size)
        info = RequestInfo(k, 0.1 * k + float(rng.uniform(0, 0.05)), int(rng.integers(1, 4000)),
                           int(rng.integers(1, 1000)))
        got = router.decider(view, info, [True] * 4)
        assert got == sim_side(view, info)
        decisions.add((got.lead, got.follow, got.split_tokens))
    assert len(decisions) > 5  # the states really drive the decisions


def test_unhealthy_backends_are_masked(tmp_path):
    layout = make_layout(["unified"] * 3)
    bias = np.zeros(sum(layout["nvec"]), np.float32)
    bias[0] = bias[3] = 1.0  # prefers 0 as Lead and Follow
    path = write_linear_policy(tmp_path / "p", layout, bias=bias)
    router = Router(build_parser().parse_args(
        ["--backends", "http://a:1", "http://b:1", "http://c:1", "--policy", str(path)]))
    view = build_view(router.backends, 0.0, 16)
    d = router.decider(view, RequestInfo(0, 0.0, 10, 10), [False, True, True])
    assert d.lead != 0 and d.follow != 0


def test_view_from_scraped_metrics_and_legacy_names():
    text = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:cache_config_info{block_size="16",num_gpu_blocks="800"} 1.0
"""
    s = parse_metrics(text)
    assert (s.num_running, s.num_waiting, s.kv_used_frac, s.num_gpu_blocks) == (3, 2, 0.25, 800)
    router = Router(build_parser().parse_args(["--backends", "http://a:1=prefill"]))
    b = router.backends[0]
    b.scrape, b.kv_total_blocks, b.inflight, b.queued_prefill_tokens = s, 800, 9, 1234
    v = build_view(router.backends, 1.0, 16)
    assert v.role == ("prefill",)
    assert v.values("num_running") == [3] and v.values("num_waiting") == [6]  # 9 sent - 3
    assert v.values("kv_used_blocks") == [200] and v.values("queued_prefill_tokens") == [1234]


# ---- the emulator's engine and the simulator: same timestamps ------------------------------
# (arrival offset s, prompt tokens, outputs): arrivals at an idle engine, during a prefill,
# during decodes, a prompt chunked over the 512-token budget, and one after a quiet spell
PARITY_WORKLOAD = [(0.0, 300, 8), (0.012, 700, 5), (0.03, 120, 6), (0.045, 1500, 3),
                   (0.11, 64, 4), (0.35, 200, 2)]


async def _engine_timestamps(backend, async_scheduling: bool) -> tuple[list, int]:
    """Run PARITY_WORKLOAD through a real engine loop; per request (ready, first scheduled,
    first token, finish) relative to the first submission, and the engine's stall count."""
    import asyncio

    from runtime.engine import EmulatedEngine, Seq

    eng = EmulatedEngine(backend, num_blocks=2048, block_size=16, max_num_seqs=8,
                         max_num_batched_tokens=512, async_scheduling=async_scheduling)
    task = asyncio.create_task(eng.run())
    loop = asyncio.get_running_loop()
    seqs = []
    try:
        t0 = loop.time()
        for i, (dt, prompt, out) in enumerate(PARITY_WORKLOAD):
            await asyncio.sleep(max(0.0, t0 + dt - loop.time()))
            seqs.append(Seq(str(i), prompt, out, loop.time()))
            eng.submit(seqs[-1])
        for s in seqs:
            while (await s.events.get())[0] != "end":
                pass
    finally:
        task.cancel()
    base = seqs[0].ready_s
    return ([(s.ready_s - base, s.first_scheduled_s - base, s.first_token_s - base,
              s.finish_s - base) for s in seqs], eng.num_stalls)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_engine_timestamps_equal_the_simulators(async_scheduling):
    """The emulator's engine and the simulator, fed the same arrivals (the times the engine
    saw them), schedule every request at the same times, with and without async scheduling:
    first iteration start, first token, last token."""
    import asyncio

    from tests.sim.engine.conftest import make_instance_cfg, make_sim, make_workload

    cfg = make_instance_cfg(max_num_batched_tokens=512, max_num_seqs=8,
                            num_gpu_blocks_override=2048, enable_prefix_caching=False,
                            async_scheduling=async_scheduling)
    probe = make_sim(make_workload([0.0], [10], [1]), cfg)
    backend = probe.backends[0]  # the simulator's own latency model times the engine too
    for _ in range(3):  # a loop stall > MAX_CATCH_UP_S on a busy machine shifts the engine
        live, stalls = asyncio.run(_engine_timestamps(backend, async_scheduling))
        if not stalls:
            break
    else:
        pytest.skip("the machine stalled the engine loop in every attempt")
    prompts = [p for _, p, _ in PARITY_WORKLOAD]
    outputs = [o for _, _, o in PARITY_WORKLOAD]
    for fast_forward in (True, False):
        sim = make_sim(make_workload([r[0] for r in live], prompts, outputs), cfg,
                       fast_forward=fast_forward)
        reqs = sim.run()
        for (_, sched_s, first_s, finish_s), r in zip(live, reqs, strict=True):
            assert r.first_scheduled_s == pytest.approx(sched_s, abs=1e-6), r.rid
            assert r.first_token_s == pytest.approx(first_s, abs=1e-6), r.rid
            assert r.finish_s == pytest.approx(finish_s, abs=1e-6), r.rid
    if async_scheduling:  # the workload does exercise the option: some request waited for N+2
        sync_cfg = make_instance_cfg(max_num_batched_tokens=512, max_num_seqs=8,
                                     num_gpu_blocks_override=2048, enable_prefix_caching=False,
                                     async_scheduling=False)
        sync = make_sim(make_workload([r[0] for r in live], prompts, outputs), sync_cfg).run()
        assert any(a.first_scheduled_s > b.first_scheduled_s + 1e-6
                   for a, b in zip(reqs, sync, strict=True))
