"""DistServe backend: its coefficient formulas, exactly, from a hand-made and the real table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sim import perf
from sim.catalog import CatalogError
from sim.perf import BatchArrays, BatchShape, DistServeBackend
from sim.perf.distserve import DECODE_LARGE_BATCH
from tests.sim.perf.conftest import make_distserve_coeffs, random_shapes


def backend(coeffs=None, **kw) -> DistServeBackend:
    kw.setdefault("tp", 1)
    return DistServeBackend("OPT-13B", coeffs=make_distserve_coeffs() if coeffs is None
                            else coeffs, **kw)


def test_prefill_formula_by_hand():
    # l = (100, 50): 10 + 0.1 * 150 + 0.001 * (100^2 + 50^2) = 37.5 ms
    be = backend()
    assert be.time(BatchShape.from_requests([100, 50])) == pytest.approx(37.5e-3, rel=1e-12)
    assert be.prefill_time_s(1000) == pytest.approx((10 + 100 + 1000) * 1e-3, rel=1e-12)


def test_mixed_batch_is_timed_by_the_prefill_formula_alone():
    be = backend()
    mixed = BatchShape.from_requests([100, 50], decode_ctx_tokens=[300] * 40)
    assert be.time(mixed) == pytest.approx(37.5e-3, rel=1e-12)


def test_empty_batch_takes_no_time():
    assert backend().time(BatchShape()) == 0.0


def test_decode_batch_size_switch_at_95():
    # b = 0 in both decode sets isolates a + c * B: the switch is exactly at B = 95
    table = make_distserve_coeffs()
    table.loc[table.phase != "prefill", "b_ms"] = 0.0
    be = backend(table)
    assert DECODE_LARGE_BATCH == 95
    assert be.decode_time_s(94, 500) == pytest.approx((20 + 0.5 * 94) * 1e-3, rel=1e-12)
    assert be.decode_time_s(95, 500) == pytest.approx((5 + 1.0 * 95) * 1e-3, rel=1e-12)
    assert be.decode_time_s(200, 500) == pytest.approx((5 + 1.0 * 200) * 1e-3, rel=1e-12)


def test_decode_context_slope():
    # one more attended token per sequence adds b * B
    be = backend()
    for b, coef in ((10, 0.01), (120, 0.02)):
        d = be.decode_time_s(b, 1001) - be.decode_time_s(b, 1000)
        assert d == pytest.approx(coef * b * 1e-3, rel=1e-9)


def test_decode_formula_by_hand():
    # DistServe: a + b * sum(ctx_i + 1) + c * B, ctx_i = tokens already in the request's cache.
    # Three requests with 100, 200, 300 cached tokens attend to 101, 201, 301 this iteration:
    # 20 + 0.01 * 603 + 0.5 * 3 = 27.53 ms
    be = backend()
    shape = BatchShape.from_requests(decode_ctx_tokens=[101, 201, 301])
    assert be.time(shape) == pytest.approx(27.53e-3, rel=1e-12)


def test_pipeline_stage_time_divides_by_pp():
    be = backend(pp=2)
    args = BatchShape.from_requests([300]).as_args()
    assert be.stage_time_s(*args) == pytest.approx(be.iteration_time_s(*args) / 2, rel=1e-12)
    assert be.iteration_time_s(*args) == backend().iteration_time_s(*args)


def test_engine_column_selects_rows():
    table = pd.concat([make_distserve_coeffs(), make_distserve_coeffs(engine="vllm")
                       .assign(a_ms=99.0)])
    assert backend(table).prefill_time_s(1) == pytest.approx((10 + 0.1 + 0.001) * 1e-3)
    assert backend(table, engine="vllm").prefill_time_s(1) == pytest.approx(
        (99 + 0.1 + 0.001) * 1e-3)


def test_csv_path_is_read(tmp_path):
    path = tmp_path / "coeffs.csv"
    make_distserve_coeffs().to_csv(path, index=False)
    assert backend(path).prefill_time_s(100) == backend().prefill_time_s(100)
    assert backend(str(path)).prefill_time_s(100) == backend().prefill_time_s(100)


def test_scalar_and_vectorised_agree():
    be = backend()
    shapes = random_shapes(seed=5, n=400, max_decode_seqs=200)
    assert any(s.num_decode_seqs >= 95 and not s.num_prefill_tokens for s in shapes)
    assert any(0 < s.num_decode_seqs < 95 and not s.num_prefill_tokens for s in shapes)
    vec = be.iteration_times_s(BatchArrays.from_shapes(shapes))
    scalar = np.array([be.iteration_time_s(*s.as_args()) for s in shapes])
    np.testing.assert_allclose(vec, scalar, rtol=1e-9, atol=0)


def test_decode_line_is_linear_in_context():
    be = backend()
    a, slope, floor, const = be.decode_line(10, 5000)
    for j in (0, 3, 50):
        t = be.iteration_time_s(0, 0, 0, 0, 0, 10, 5000 + 10 * j)
        assert a + slope * j + const == pytest.approx(t, rel=1e-12)
    assert floor == 0.0 and const == 0.0


def test_missing_combinations_are_named():
    with pytest.raises(CatalogError, match="no DistServe distserve coefficients for OPT-13B "
                       "tp=8; have: facebook/opt-13b tp=1"):
        backend(tp=8)
    with pytest.raises(CatalogError, match="OPT-66B"):
        DistServeBackend("OPT-66B", coeffs=make_distserve_coeffs())
    with pytest.raises(CatalogError, match="only for A100-80GB-SXM"):
        backend(gpu="H100-SXM-80GB")
    with pytest.raises(CatalogError, match="needs coeffs"):
        DistServeBackend("OPT-13B")


def test_make_backend_builds_it_by_name():
    be = perf.make_backend("distserve", model="OPT-13B", coeffs=make_distserve_coeffs())
    assert isinstance(be, DistServeBackend)


@pytest.mark.shared
def test_real_coefficients_reproduce_the_prefill_formula(shared_data):
    path = shared_data / "distserve" / "latency_coeffs_a100_80g.csv"
    table = pd.read_csv(path)
    pre = table[table.phase == "prefill"]
    assert len(pre) == 14
    prompts = [17, 600, 2048]
    for r in pre.itertuples():
        be = DistServeBackend(r.model.split("/")[-1], tp=int(r.tp), coeffs=path, engine=r.engine)
        want = (r.a_ms + r.b_ms * sum(prompts) + r.c_ms * sum(p * p for p in prompts)) * 1e-3
        assert be.time(BatchShape.from_requests(prompts)) == pytest.approx(want, rel=1e-12)


@pytest.mark.shared
def test_real_coefficients_switch_decode_sets(shared_data):
    path = shared_data / "distserve" / "latency_coeffs_a100_80g.csv"
    table = pd.read_csv(path).set_index(["engine", "model", "tp", "phase"])
    be = DistServeBackend("OPT-66B", tp=4, coeffs=path)
    for b, phase in ((94, "decoding_smallbs"), (95, "decoding_largebs")):
        r = table.loc[("distserve", "facebook/opt-66b", 4, phase)]
        # slope in the attended context is b_ms per token whichever way ctx is counted
        d = be.decode_time_s(b, 1001) - be.decode_time_s(b, 1000)
        assert d == pytest.approx(r.b_ms * b * 1e-3, rel=1e-9)
        # each sequence attends to 1000 tokens = DistServe's ctx_i + 1
        t = be.decode_time_s(b, 1000)
        assert t == pytest.approx((r.a_ms + r.b_ms * 1000 * b + r.c_ms * b) * 1e-3, rel=1e-12)
