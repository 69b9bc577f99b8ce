"""Built-in routers: valid decisions, roles, tie-breaking, cycling, seeded randomness."""

from __future__ import annotations

import numpy as np
import pytest

from sim.routers import COLOCATE, ROUTERS, Router, make_router
from sim.routing import ClusterView, Decision, RequestInfo

FIELDS = ("num_waiting", "num_running", "queued_prefill_tokens", "kv_used_blocks",
          "num_transfers_in", "num_transfers_out")


def make_view(role=("unified", "unified"), kv_total_blocks=None, block_size=16,
              **arrays) -> ClusterView:
    """A view with zero load unless given; KV of 1000 blocks per instance by default."""
    n = len(role)
    total = np.full(n, 1000) if kv_total_blocks is None else np.asarray(kv_total_blocks)
    values = {f: np.asarray(arrays.get(f, np.zeros(n)), dtype=np.int64) for f in FIELDS}
    return ClusterView(now_s=0.0, role=tuple(role), block_size=block_size,
                       kv_total_blocks=total.astype(np.int64), **values)


def req(prompt: int = 100, output: int = 50, rid: int = 0) -> RequestInfo:
    return RequestInfo(rid, 0.0, prompt, output)


def random_views(seed: int, count: int = 30):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(1, 7))
        role = tuple(rng.choice(["unified", "prefill", "decode"], n).tolist())
        total = rng.integers(1, 400, n)
        yield make_view(role, kv_total_blocks=total,
                        kv_used_blocks=(total * rng.random(n)).astype(int),
                        **{f: rng.integers(0, 50, n) for f in FIELDS if f != "kv_used_blocks"})


@pytest.mark.parametrize("name", list(ROUTERS))
def test_every_router_returns_a_valid_decision(name):
    router = make_router(name)
    router.reset()
    for i, view in enumerate(random_views(seed=len(name))):
        d = router(view, req(int(10 + 37 * i), int(1 + 11 * i), rid=i))
        assert isinstance(d, Decision) and not d.reject
        assert 0 <= d.lead < view.num_instances and 0 <= d.follow < view.num_instances
        assert d.split_tokens >= 1


@pytest.mark.parametrize("name", ["round_robin", "join_shortest_queue",
                                  "least_outstanding_tokens", "vllm_dp"])
def test_colocating_routers_use_unified_instances(name):
    view = make_view(("prefill", "unified", "decode", "unified"))
    router = make_router(name)
    for i in range(6):
        d = router(view, req(rid=i))
        assert d.lead == d.follow and d.lead in (1, 3) and d.split_tokens == COLOCATE


def test_round_robin_cycles_and_resets():
    view = make_view(("unified", "prefill", "unified", "unified"))
    router = make_router("round_robin")
    assert [router(view, req()).lead for _ in range(7)] == [0, 2, 3, 0, 2, 3, 0]
    router.reset()
    assert router(view, req()).lead == 0


def test_round_robin_skips_instances_too_small_for_the_request():
    view = make_view(("unified",) * 3, kv_total_blocks=[100, 5, 100])  # 5 blocks = 80 tokens
    router = make_router("round_robin")
    assert [router(view, req(60, 40)).lead for _ in range(4)] == [0, 2, 0, 2]


def test_ties_go_to_the_lowest_index():
    view = make_view(("unified",) * 3)
    for name in ("join_shortest_queue", "least_outstanding_tokens", "dynaserve"):
        assert make_router(name)(view, req()).lead == 0
    d = make_router("distserve")(make_view(("decode", "prefill", "prefill", "decode")), req())
    assert (d.lead, d.follow) == (1, 0)


def test_join_shortest_queue_counts_waiting_and_running():
    view = make_view(("unified",) * 3, num_waiting=[2, 0, 1], num_running=[1, 3, 0])
    assert make_router("join_shortest_queue")(view, req()).lead == 2


def test_vllm_dp_weighs_waiting_four_times_running_and_rotates_ties():
    view = make_view(("unified",) * 3, num_waiting=[1, 0, 0], num_running=[0, 5, 4])
    assert make_router("vllm_dp")(view, req()).lead == 0   # scores 4, 5, 4 -> 0 (start 0)
    router = make_router("vllm_dp")
    empty = make_view(("unified",) * 3)
    assert [router(empty, req()).lead for _ in range(4)] == [0, 1, 2, 0]


def test_least_outstanding_tokens_counts_queue_and_resident_kv():
    view = make_view(("unified",) * 3, block_size=16, queued_prefill_tokens=[0, 500, 100],
                     kv_used_blocks=[40, 0, 20])  # loads 640, 500, 420
    assert make_router("least_outstanding_tokens")(view, req()).lead == 2


def test_distserve_respects_pools_and_splits_after_one_token():
    view = make_view(("prefill", "decode", "prefill", "decode", "unified"),
                     queued_prefill_tokens=[900, 0, 100, 0, 0], num_waiting=[0, 0, 1, 0, 0],
                     kv_used_blocks=[0, 800, 0, 100, 0])
    d = make_router("distserve")(view, req())
    assert (d.lead, d.follow, d.split_tokens) == (2, 3, 1)


def test_distserve_without_pools_uses_unified_instances():
    view = make_view(("unified", "unified"), queued_prefill_tokens=[50, 0],
                     kv_used_blocks=[0, 900])
    d = make_router("distserve")(view, req())
    assert (d.lead, d.follow, d.split_tokens) == (1, 0, 1)


def test_dynaserve_split_formula():
    view = make_view(("unified",) * 3, block_size=16, queued_prefill_tokens=[300, 0, 0],
                     kv_used_blocks=[0, 10, 30], num_transfers_in=[0, 0, 0])
    d = make_router("dynaserve")(view, req(100, 90))
    # lead: least 160 (inst 1); follow: least resident among the others, inst 0 (0 tokens)
    li, fj = 160 + 1.0, 0 + 1.0
    assert (d.lead, d.follow) == (1, 0)
    assert d.split_tokens == max(1, round(90 * fj / (li + fj)))


def test_dynaserve_on_one_instance_colocates():
    d = make_router("dynaserve")(make_view(("unified",)), req())
    assert (d.lead, d.follow, d.split_tokens) == (0, 0, COLOCATE)


def test_random_router_is_seeded_and_resettable():
    views = list(random_views(seed=3, count=20))
    infos = [req(50, 1 + i, rid=i) for i in range(20)]

    def decisions(router: Router) -> list[Decision]:
        return [router(v, r) for v, r in zip(views, infos, strict=True)]

    a = make_router("random", seed=4)
    first = decisions(a)
    assert decisions(make_router("random", seed=4)) == first
    a.reset()
    assert decisions(a) == first
    assert decisions(make_router("random", seed=5)) != first
    for d, r in zip(first, infos, strict=True):
        assert 1 <= d.split_tokens <= r.predicted_output_tokens


def test_make_router_rejects_unknown_names():
    with pytest.raises(ValueError, match="round_robin"):
        make_router("nope")


def test_view_helpers():
    view = make_view(("prefill", "decode", "prefill"), kv_total_blocks=[10, 20, 40],
                     kv_used_blocks=[5, 5, 0])
    assert list(view.indices("prefill")) == [0, 2] and view.indices("unified").size == 0
    assert list(view.kv_free_blocks) == [5, 15, 40]
    np.testing.assert_allclose(view.kv_used_frac, [0.5, 0.25, 0.0])
    assert list(view.fits(320)) == [False, True, True]
