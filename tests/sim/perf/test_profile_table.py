"""Profile-table backend: measured per-layer operator sums replace the analytic dense part."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sim.catalog import CatalogError, get_gpu, get_model
from sim.perf import AnalyticBackend, BatchArrays, BatchShape, ProfileTableBackend, kernels
from sim.perf.profile_table import find_mlp_table
from tests.sim.perf.conftest import (
    MLP_OPS,
    make_engine,
    make_gpu,
    make_model,
    random_shapes,
    write_mlp_csv,
)

ENGINE = make_engine(fixed_s=1e-3)


def dense_from_times(prof: AnalyticBackend, ana: AnalyticBackend, num_tokens: int) -> float:
    """Per-layer dense seconds ``prof`` uses at ``num_tokens`` (via the public API).

    The two backends share attention, head and host terms, so their difference over a
    prefill of ``num_tokens`` is ``num_layers * (dense_prof - dense_analytic)``.
    """
    shape = BatchShape.from_requests([num_tokens])
    diff = prof.time(shape) - ana.time(shape)
    return diff / prof.model.num_layers + sum(ana.breakdown_s(num_tokens).values())


@pytest.fixture
def tiny_table(tmp_path):
    """A tiny-model table: TP1 at 1, 100 and 200 tokens, TP2 at 100 tokens (9 ops each)."""
    rows = {(1, 1): 0.001, (1, 100): 0.01, (1, 200): 0.03, (2, 100): 0.005}
    return write_mlp_csv(tmp_path / "a100" / "test" / "tiny" / "mlp.csv", make_model(), rows)


def test_interpolates_and_extrapolates_the_operator_sum(tiny_table):
    model, gpu = make_model(), make_gpu()
    prof = ProfileTableBackend(model, gpu, tiny_table, engine=ENGINE)
    ana = AnalyticBackend(model, gpu, engine=ENGINE)
    assert len(MLP_OPS) == 9  # `emb` (1000 ms) is not a layer operator
    assert dense_from_times(prof, ana, 100) == pytest.approx(9 * 0.01e-3, rel=1e-9)
    assert dense_from_times(prof, ana, 200) == pytest.approx(9 * 0.03e-3, rel=1e-9)
    assert dense_from_times(prof, ana, 150) == pytest.approx(9 * 0.02e-3, rel=1e-9)
    # past the last sample: slope (0.27 - 0.09) us / 100 tokens -> 0.27 + 0.18 ms at 300
    assert dense_from_times(prof, ana, 300) == pytest.approx(9 * 0.05e-3, rel=1e-9)


def test_empty_batch_has_no_dense_time(tiny_table):
    prof = ProfileTableBackend(make_model(), make_gpu(), tiny_table, engine=ENGINE)
    assert prof.time(BatchShape()) == pytest.approx(1e-3, rel=1e-12)


def test_scalar_and_vectorised_agree(tiny_table):
    prof = ProfileTableBackend(make_model(), make_gpu(), tiny_table, engine=ENGINE,
                               max_table_tokens=1024)
    shapes = random_shapes(seed=11, n=200)
    vec = prof.iteration_times_s(BatchArrays.from_shapes(shapes))
    np.testing.assert_allclose(vec, [prof.time(s) for s in shapes], rtol=1e-9, atol=0)


def test_rows_of_other_tp_degrees_are_ignored(tiny_table):
    model, gpu = make_model(), make_gpu()
    prof = ProfileTableBackend(model, gpu, tiny_table, tp=2, engine=ENGINE)
    ana = AnalyticBackend(model, gpu, tp=2, engine=ENGINE)
    kp = ana.kp
    # one TP2 sample: constant 0.045 ms, plus two analytic all-reduces of 100 x 64 x 2 bytes
    ar = 2 * float(kernels.allreduce_time_s(100 * 128, 2, gpu.intra_node_bytes_per_s, kp))
    assert dense_from_times(prof, ana, 100) == pytest.approx(9 * 0.005e-3 + ar, rel=1e-9)


def test_all_reduce_table_replaces_the_analytic_all_reduce(tiny_table, tmp_path):
    sizes = [1024, 16384, 65536]
    ar = pd.DataFrame({"num_workers": 2, "devices_per_node": [2, 2, 2],
                       "size": sizes, "time_stats.all_reduce.median": [0.01, 0.02, 0.05]})
    ar = pd.concat([ar, ar.assign(devices_per_node=1, **{"time_stats.all_reduce.median": 9.0})])
    path = tmp_path / "all_reduce.csv"
    ar.to_csv(path, index=False)
    model, gpu = make_model(), make_gpu()
    prof = ProfileTableBackend(model, gpu, tiny_table, tp=2, allreduce_table=path, engine=ENGINE)
    ana = AnalyticBackend(model, gpu, tp=2, engine=ENGINE)
    # 100 tokens x 64 x 2 B = 12800 B, between 1024 (0.01 ms) and 16384 (0.02 ms)
    one = (0.01 + (12800 - 1024) / (16384 - 1024) * 0.01) * 1e-3
    assert dense_from_times(prof, ana, 100) == pytest.approx(9 * 0.005e-3 + 2 * one, rel=1e-9)
    tp4 = write_mlp_csv(tmp_path / "tp4" / "mlp.csv", model, {(4, 10): 0.001})
    with pytest.raises(CatalogError, match="no single-node rows with num_workers=4"):
        ProfileTableBackend(model, gpu, tp4, tp=4, allreduce_table=path)


def test_missing_tp_rows_are_named(tiny_table):
    with pytest.raises(CatalogError, match="no rows for tp=4"):
        ProfileTableBackend(make_model(), make_gpu(), tiny_table, tp=4)


def test_find_mlp_table_picks_the_matching_shape(tiny_table, tmp_path):
    other = make_model(hidden_size=128, intermediate_size=256)
    write_mlp_csv(tmp_path / "a100" / "test" / "other" / "mlp.csv", other, {(1, 1): 0.1})
    root = tmp_path / "a100"
    assert find_mlp_table(root, make_model()) == tiny_table
    assert find_mlp_table(root, other).parent.name == "other"
    prof = ProfileTableBackend(make_model(), make_gpu(), root, engine=ENGINE)  # folder search
    ana = AnalyticBackend(make_model(), make_gpu(), engine=ENGINE)
    assert dense_from_times(prof, ana, 100) == pytest.approx(9 * 0.01e-3, rel=1e-9)


def test_find_mlp_table_unknown_shape_lists_what_exists(tiny_table, tmp_path):
    with pytest.raises(CatalogError, match=r"found: tiny\(4, 2, 64, 128\)"):
        find_mlp_table(tmp_path / "a100", make_model(num_kv_heads=4))


# ---- the real A100 profile ---------------------------------------------------------------
@pytest.fixture
def a100_compute(shared_data):
    return shared_data / "vidur_profiles" / "data" / "profiling" / "compute" / "a100"


@pytest.mark.shared
@pytest.mark.parametrize("num_tokens", [1, 512, 2048, 4096])
def test_real_llama2_7b_table_is_the_sum_of_measured_medians(a100_compute, num_tokens):
    path = a100_compute / "meta-llama" / "Llama-2-7b-hf" / "mlp.csv"
    d = pd.read_csv(path)
    rows = d[(d.num_tensor_parallel_workers == 1) & (d.num_tokens == num_tokens)]
    assert len(rows) >= 1
    want_s = sum(rows[f"time_stats.{op}.median"].median() for op in MLP_OPS) * 1e-3
    prof = ProfileTableBackend("Llama-2-7B", "A100-80GB-SXM", path)
    ana = AnalyticBackend("Llama-2-7B", "A100-80GB-SXM")
    assert dense_from_times(prof, ana, num_tokens) == pytest.approx(want_s, rel=1e-9)


@pytest.mark.shared
def test_real_table_at_512_tokens_by_hand(a100_compute):
    # the nine medians of the TP1, 512-token row, in ms
    want_ms = 0.012 + 0.234 + 0.022 + 0.088 + 0.012 + 0.402 + 0.0365 + 0.229 + 0.007
    prof = ProfileTableBackend("Llama-2-7B", "A100-80GB-SXM", a100_compute)
    ana = AnalyticBackend("Llama-2-7B", "A100-80GB-SXM")
    assert dense_from_times(prof, ana, 512) == pytest.approx(want_ms * 1e-3, rel=1e-9)


@pytest.mark.shared
def test_real_tables_are_found_by_shape(a100_compute):
    assert find_mlp_table(a100_compute, get_model("Llama-2-7B")).parent.name == "Llama-2-7b-hf"
    assert find_mlp_table(a100_compute, get_model("Llama-2-70B")).parent.name == "Llama-2-70b-hf"
    assert find_mlp_table(a100_compute, get_model("Llama-3-8B")).parent.name == "Meta-Llama-3-8B"
    with pytest.raises(CatalogError, match="Llama-2-7b-hf"):
        find_mlp_table(a100_compute, get_model("OPT-13B"))


@pytest.mark.shared
def test_real_tp2_table_with_measured_all_reduce(a100_compute, shared_data):
    ar_path = (shared_data / "vidur_profiles" / "data" / "profiling" / "network" / "a100_dgx"
               / "all_reduce.csv")
    prof = ProfileTableBackend("Llama-2-7B", "A100-80GB-SXM", a100_compute, tp=2,
                               allreduce_table=ar_path)
    ana = AnalyticBackend("Llama-2-7B", "A100-80GB-SXM", tp=2)
    mlp = pd.read_csv(a100_compute / "meta-llama" / "Llama-2-7b-hf" / "mlp.csv")
    row = mlp[(mlp.num_tensor_parallel_workers == 2) & (mlp.num_tokens == 512)]
    ops_s = sum(row[f"time_stats.{op}.median"].median() for op in MLP_OPS) * 1e-3
    ar = pd.read_csv(ar_path)
    ar = ar[(ar.num_workers == 2) & (ar.devices_per_node == 2)]
    g = ar.groupby("size")["time_stats.all_reduce.median"].median() * 1e-3
    one_ar = np.interp(512 * 4096 * 2, g.index.to_numpy(float), g.to_numpy())
    assert dense_from_times(prof, ana, 512) == pytest.approx(ops_s + 2 * one_ar, rel=1e-9)
    assert get_gpu("A100-80GB-SXM").name == prof.gpu.name


@pytest.mark.shared
def test_real_table_never_decreases_past_its_last_sample(shared_data):
    """Vidur's H100 Llama-2-7B table ends 4064 -> 2.61 ms, 4096 -> 2.60 ms: noise, not a trend."""
    h100 = shared_data / "vidur_profiles/data/profiling/compute/h100"
    be = ProfileTableBackend("Llama-2-7B", "H100-SXM-80GB", h100, tp=1)
    assert be._dense[8192] > be._dense[4096] > 0
    assert be.prefill_time_s(6144) > be.prefill_time_s(4096)
