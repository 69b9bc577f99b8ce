"""The router decides exactly as the simulator-side EncodedPolicy for the same state."""

from __future__ import annotations

import numpy as np

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
