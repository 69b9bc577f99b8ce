"""Observation encoder: layout, scales, masks, action decoding, round trip through JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sim.features import (
    COLOCATE,
    INSTANCE_FEATURES,
    REQUEST_FEATURES,
    FeatureConfig,
    ObservationEncoder,
    split_tokens,
)
from sim.routing import ClusterView, RequestInfo


def view(n=3, **kw):
    base = {f: np.zeros(n, np.int64) for f in (
        "num_waiting", "num_running", "queued_prefill_tokens", "kv_used_blocks",
        "num_transfers_in", "num_transfers_out")}
    base.update({k: np.asarray(v, np.int64) for k, v in kw.items()})
    return ClusterView(0.0, ("unified",) * n, 16, kv_total_blocks=np.full(n, 1000), **base)


def enc(mode="tandem", roles=("unified", "unified", "unified"), cfg=None):
    return ObservationEncoder(roles, [1000] * len(roles), 16, 1.0, 0.05, cfg, mode)


def test_features_follow_the_documented_layout_and_scales():
    e = enc()
    v = view(queued_prefill_tokens=[8192, 0, 100], num_waiting=[256, 0, 0],
             num_running=[3, 0, 0], kv_used_blocks=[500, 0, 1000], num_transfers_in=[16, 0, 0])
    obs, mask = e.encode(v, RequestInfo(0, 0.0, 1600, 0))
    obs2, _ = e.encode(view(num_transfers_out=[0, 16, 0]), RequestInfo(1, 0.1, 10, 8191))
    assert obs2[16] == pytest.approx(1.0)                       # instance 1, transfers out
    assert obs2[31] == pytest.approx(math.log1p(8191) / math.log1p(8192), rel=1e-6)
    assert obs2[-1] == pytest.approx(math.log1p(1.0) / math.log1p(1000), rel=1e-5)  # 0.1 s
    assert obs.dtype == np.float32 and obs.shape == (3 * len(INSTANCE_FEATURES)
                                                     + len(REQUEST_FEATURES),)
    inst = obs[:30].reshape(3, 10)
    np.testing.assert_allclose(inst[0, :3], [1.0, 1.0, math.log1p(3) / math.log1p(256)],
                               rtol=1e-6)
    np.testing.assert_allclose(inst[:, 3], [0.5, 0.0, 1.0])
    np.testing.assert_allclose(inst[:, 4], [0.4, 0.9, -0.1], atol=1e-6)  # 100 blocks needed
    assert inst[0, 5] == pytest.approx(1.0)
    np.testing.assert_array_equal(inst[:, 7:], [[1, 0, 0]] * 3)
    req = obs[30:]
    assert req[0] == pytest.approx(math.log1p(1600) / math.log1p(8192), rel=1e-6)
    assert req[2] == pytest.approx(1.0) and req[3] == pytest.approx(0.5)
    assert mask.all() and mask.shape == (3 + 3 + 5,)


def test_rate_estimate_tracks_arrival_gaps_and_resets():
    e = enc(cfg=FeatureConfig(rate_ewma_alpha=1.0))
    v = view()
    e.encode(v, RequestInfo(0, 0.0, 10, 10))
    obs, _ = e.encode(v, RequestInfo(1, 0.1, 10, 10))        # 10 req/s
    assert obs[-2] == pytest.approx(math.log1p(10) / math.log1p(100), rel=1e-5)
    again, _ = e.encode(v, RequestInfo(1, 0.1, 10, 10), observe=False)
    np.testing.assert_array_equal(again, obs)                  # re-encoding changes nothing
    e.reset()
    obs, _ = e.encode(v, RequestInfo(2, 5.0, 10, 10))
    assert obs[-2] == 0.0 and obs[-1] == 0.0
    e.encode(v, RequestInfo(3, 5.0, 10, 10))                   # simultaneous arrivals
    obs, _ = e.encode(v, RequestInfo(4, 5.0, 10, 10))
    assert obs[-2] == 4.0                                      # the highest rate, capped


def test_split_bins_decode_to_one_token_shares_and_colocation():
    assert split_tokens(0.0, 400) == 1
    assert split_tokens(0.25, 400) == 100
    assert split_tokens(0.25, 1) == 1
    assert split_tokens(1.0, 400) == COLOCATE
    e = enc()
    r = RequestInfo(0, 0.0, 100, 400)
    assert e.decode([0, 1, 0], r).split_tokens == 1
    assert e.decode([0, 1, 2], r).split_tokens == 200
    assert e.decode([2, 2, 4], r).split_tokens == COLOCATE
    d = enc("disaggregated", ("prefill", "decode", "decode"))
    assert d.decode([0, 2], r).split_tokens == 1 and d.nvec == [3, 3]
    with pytest.raises(ValueError, match="outside"):
        e.decode([0, 1, 5], r)


def test_masks_follow_roles():
    d = enc("disaggregated", ("prefill", "decode", "unified"))
    assert d.mask(10, 10).tolist() == [True, False, True, False, True, True]


def test_layout_round_trips_through_json():
    e = enc(cfg=FeatureConfig(split_bins=[0.0, 0.5, 1.0], token_scale=4096))
    layout = json.loads(json.dumps(e.layout()))
    e2 = ObservationEncoder.from_layout(layout)
    v = view(queued_prefill_tokens=[5, 6, 7], kv_used_blocks=[1, 2, 3])
    r = RequestInfo(0, 1.0, 300, 40)
    np.testing.assert_array_equal(e.encode(v, r)[0], e2.encode(v, r)[0])
    assert e2.nvec == [3, 3, 3]
    with pytest.raises(ValueError, match="lacks 'roles'"):
        ObservationEncoder.from_layout({k: v for k, v in layout.items() if k != "roles"})


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match="features.token_scale"):
        FeatureConfig(token_scale=0)
    with pytest.raises(ValueError, match="split_bins"):
        FeatureConfig(split_bins=[0.0, 1.5])
    with pytest.raises(ValueError, match="roles"):
        ObservationEncoder(("gpu",), [10], 16, 1.0, 0.1)


@pytest.mark.parametrize("mode,roles", [("tandem", ("unified", "prefill", "decode", "unified")),
                                        ("disaggregated", ("prefill", "decode", "decode"))])
def test_encode_into_writes_exactly_what_encode_values_returns(mode, roles):
    """The router's in-place path: same bits, same mask, same arrival-rate state."""
    rng = np.random.default_rng(3)
    n = len(roles)
    kv = [int(x) for x in rng.integers(0, 3000, n)]
    a = ObservationEncoder(roles, kv, 16, 1.0, 0.05, mode=mode)
    b = ObservationEncoder(roles, kv, 16, 1.0, 0.05, mode=mode)
    obs_buf = np.full((1, a.obs_dim), np.nan, np.float32)
    mask_buf = np.zeros(sum(a.nvec), bool)
    t = 0.0
    for k in range(400):
        big = k % 20 == 0  # clipped features, requests no instance can hold
        lists = [[int(x) for x in rng.integers(0, 10**7 if big else 50, n)] for _ in range(6)]
        t += float(rng.exponential(0.01)) if k % 5 else 0.0
        req = RequestInfo(k, t, int(rng.integers(1, 60000)), int(rng.integers(1, 5000)))
        observe = k % 7 != 0
        obs, mask = a.encode_values(*lists, req, observe)
        b.encode_into(obs_buf, mask_buf, *lists, req, observe)
        assert obs_buf[0].tobytes() == obs.tobytes()
        assert mask_buf.tolist() == mask.tolist()
