import math

import numpy as np
import pytest

from sim.catalog import get_gpu, get_model
from sim.metrics import SLO
from solvers.capacity import (
    CapacityConfig,
    LengthStats,
    build_candidates,
    candidate,
    make_backend,
    ttft_attainment,
)

A100 = get_gpu("A100-80GB-SXM")
OPT13 = get_model("OPT-13B")
FIXED = LengthStats.fixed(512, 64)


def test_md1_attainment_closed_form():
    d, rate, slo = 0.05, 10.0, 0.2
    rho = rate * d
    mean_wait = rate * d * d / (2 * (1 - rho))  # M/D/1 (Pollaczek-Khinchine)
    want = 1 - rho * math.exp(-rho * (slo - d) / mean_wait)
    got = ttft_attainment(rate, np.array([d]), np.array([d]), slo)
    assert got == pytest.approx(want, rel=1e-12)
    assert ttft_attainment(1 / d, np.array([d]), np.array([d]), slo) == 0.0
    assert ttft_attainment(0.0, np.array([d]), np.array([0.3]), slo) == 0.0


def test_prefill_capacity_meets_target_and_tightens_with_slo():
    cfg = CapacityConfig()
    loose = candidate(OPT13, A100, "prefill", 1, 1, FIXED, SLO(0.5, 0.1, 0.9), cfg)
    tight = candidate(OPT13, A100, "prefill", 1, 1, FIXED, SLO(0.1, 0.1, 0.9), cfg)
    assert 0 < tight.capacity_per_s < loose.capacity_per_s < 1 / loose.service_s
    svc = np.array([loose.service_s])
    att = ttft_attainment(loose.capacity_per_s, svc, svc, 0.5)
    assert att == pytest.approx(0.9, abs=1e-6)
    hopeless = candidate(OPT13, A100, "prefill", 1, 1, FIXED, SLO(0.001, 0.1, 0.9), cfg)
    assert hopeless.capacity_per_s == 0.0


def test_decode_capacity_is_littles_law_at_the_chosen_batch():
    cfg = CapacityConfig()
    slo = SLO(0.25, 0.03, 0.9)
    c = candidate(OPT13, A100, "decode", 1, 1, FIXED, slo, cfg)
    be = make_backend(OPT13, A100, 1, 1, cfg)
    t = be.iteration_time_s(0, 0, 0, 0, 0, c.max_batch,
                            round(c.max_batch * FIXED.decode_ctx_tokens))
    assert t <= slo.tpot_s
    assert c.capacity_per_s == pytest.approx(c.max_batch / (63 * t))
    smaller_kv = candidate(OPT13, A100, "decode", 1, 1, LengthStats.fixed(4000, 2000), slo, cfg)
    assert smaller_kv.max_batch < c.max_batch


def test_candidates_exclude_what_does_not_fit():
    cands = build_candidates(get_model("OPT-66B"), A100, FIXED, SLO(2.5, 0.15, 0.9),
                             CapacityConfig(), max_gpus=4)
    assert cands and all(c.num_gpus >= 2 for c in cands)


def test_colocated_capacity_positive_and_bounded():
    c = candidate(OPT13, A100, "unified", 2, 1, FIXED, SLO(0.25, 0.1, 0.9), CapacityConfig())
    p = candidate(OPT13, A100, "prefill", 2, 1, FIXED, SLO(0.25, 0.1, 0.9), CapacityConfig())
    assert 0 < c.capacity_per_s <= p.capacity_per_s


def test_bad_inputs():
    with pytest.raises(ValueError, match="perf_backend"):
        CapacityConfig(perf_backend="nope")
    with pytest.raises(ValueError, match="distserve_coeffs_path"):
        CapacityConfig(perf_backend="distserve")
    with pytest.raises(ValueError, match=">= 1"):
        LengthStats(np.array([0]), np.array([3]))
    with pytest.raises(ValueError, match="role"):
        candidate(OPT13, A100, "boss", 1, 1, FIXED, SLO(), CapacityConfig())
