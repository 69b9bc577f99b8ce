"""The router's fast decision path (no ClusterView, session-bound buffers) decides exactly as
the simulator-side EncodedPolicy over ``build_view`` of the same backends."""

from __future__ import annotations

import numpy as np
import pytest

from policies.learned import EncodedPolicy
from policies.onnx_policy import OnnxPolicy
from runtime.backends import Scrape, build_view
from runtime.router import Router, build_parser
from sim.features import ObservationEncoder
from sim.routing import RequestInfo

from .conftest import make_layout, write_linear_policy

ROLES = ["unified", "prefill", "decode", "unified", "unified"]


def _router_and_sim_side(tmp_path, roles):
    layout = make_layout(roles, kv_blocks=4096)
    rng = np.random.default_rng(1)
    w = rng.normal(size=(layout["obs_dim"], sum(layout["nvec"]))).astype(np.float32)
    path = write_linear_policy(tmp_path / "p", layout, w)
    router = Router(build_parser().parse_args(
        ["--backends", *[f"http://127.0.0.1:{9000 + i}" for i in range(len(roles))],
         "--policy", str(path)]))
    net = OnnxPolicy.load(path)
    enc = ObservationEncoder.from_layout(net.sidecar["baton"]["observation"])
    return router, EncodedPolicy(enc, net.act), net


def test_router_decide_equals_encoded_policy_on_the_view(tmp_path):
    router, sim_side, _ = _router_and_sim_side(tmp_path, ROLES)
    rng = np.random.default_rng(2)
    now = 1000.0
    decisions = set()
    for k in range(300):
        for b in router.backends:
            b.scrape = Scrape(int(rng.integers(0, 40)), int(rng.integers(0, 20)),
                              float(rng.uniform(0, 1)))
            b.scrape_ok = True
            b.inflight = int(rng.integers(0, 60))
            b.queued_prefill_tokens = int(rng.integers(0, 20000))
            b.transfers_in, b.transfers_out = (int(x) for x in rng.integers(0, 5, 2))
        info = RequestInfo(k, 0.1 * k + float(rng.uniform(0, 0.05)), int(rng.integers(1, 4000)),
                           int(rng.integers(1, 1000)))
        view = build_view(router.backends, info.arrival_s, router.block_size)
        got = router.decide(info, now)
        assert got == sim_side(view, info)
        decisions.add((got.lead, got.follow, got.split_tokens))
    assert len(decisions) > 5


def test_router_decide_masks_unhealthy_and_answers_none_when_all_are(tmp_path):
    router, _, _ = _router_and_sim_side(tmp_path, ["unified"] * 3)
    for b in router.backends:
        b.scrape, b.scrape_ok = Scrape(), True
    router.backends[0].down_until_s = 2000.0
    seen = {router.decide(RequestInfo(k, 0.01 * k, 10 + 50 * k, 10), 1000.0).lead
            for k in range(50)}
    assert 0 not in seen
    for b in router.backends:
        b.scrape_ok = False
    assert router.decide(RequestInfo(99, 1.0, 10, 10), 1000.0) is None


def test_bound_policy_acts_as_act_and_rejects_empty_dimensions(tmp_path):
    _, _, net = _router_and_sim_side(tmp_path, ROLES)
    bound = net.bind()
    rng = np.random.default_rng(4)
    n_mask = int(net.nvec.sum())
    offsets = np.concatenate([[0], np.cumsum(net.nvec)[:-1]])
    for _ in range(200):
        obs = (rng.random(net.obs_dim) * 5 - 1).astype(np.float32)
        mask = rng.random(n_mask) < 0.5
        mask[offsets + rng.integers(0, net.nvec)] = True
        bound.obs[0], bound.mask[0] = obs, mask
        assert bound() == net.act(obs, mask).tolist()
    bound.mask[0, :len(ROLES)] = False
    with pytest.raises(ValueError, match="dimension 0"):
        bound()
