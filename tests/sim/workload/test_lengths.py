"""Length distributions and the length-table loader."""

from __future__ import annotations

import numpy as np
import pytest

from sim.workload import (
    LENGTH_DISTRIBUTIONS,
    REPO_ROOT,
    empirical,
    fixed,
    load_length_table,
    lognormal,
)
from tests.sim.workload.conftest import SHARED_DATA, TRACES, needs_shared

FIXTURE = REPO_ROOT / "sim/workload/fixtures/sharegpt_like_lengths.csv"


def test_registry():
    assert set(LENGTH_DISTRIBUTIONS) == {"fixed", "lognormal", "empirical"}


def test_fixed():
    p, o = fixed(5, np.random.default_rng(0), prompt_tokens=512, output_tokens=64)
    assert p.dtype == o.dtype == np.int64
    assert p.tolist() == [512] * 5 and o.tolist() == [64] * 5
    with pytest.raises(ValueError, match="output_tokens"):
        fixed(5, np.random.default_rng(0), prompt_tokens=512, output_tokens=0)


def test_lognormal_means_without_clipping():
    p, o = lognormal(20_000, np.random.default_rng(0), prompt_mean=500.0, prompt_cv=0.5,
                     output_mean=100.0, output_cv=1.0, max_prompt_tokens=10**9,
                     max_output_tokens=10**9)
    assert p.mean() == pytest.approx(500.0, rel=0.02)
    assert p.std() / p.mean() == pytest.approx(0.5, rel=0.05)
    assert o.mean() == pytest.approx(100.0, rel=0.04)
    assert p.dtype == o.dtype == np.int64


def test_lognormal_clipping_is_explicit():
    p, o = lognormal(20_000, np.random.default_rng(0), prompt_mean=4000.0, prompt_cv=2.0,
                     output_mean=5.0, output_cv=3.0, min_tokens=4, max_prompt_tokens=8192,
                     max_output_tokens=50)
    assert p.min() >= 4 and p.max() == 8192 and o.min() == 4 and o.max() == 50
    assert p.mean() < 4000.0  # the clip cuts the tail


def test_lognormal_same_seed_same_draws():
    kw = {"prompt_mean": 100.0, "prompt_cv": 1.0, "output_mean": 10.0, "output_cv": 1.0}
    a = lognormal(100, np.random.default_rng(3), **kw)
    b = lognormal(100, np.random.default_rng(3), **kw)
    c = lognormal(100, np.random.default_rng(4), **kw)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_lognormal_bad_parameters():
    with pytest.raises(ValueError, match="prompt_mean"):
        lognormal(3, np.random.default_rng(0), prompt_mean=0.0, prompt_cv=1.0,
                  output_mean=1.0, output_cv=1.0)
    with pytest.raises(ValueError, match="min_tokens"):
        lognormal(3, np.random.default_rng(0), prompt_mean=1.0, prompt_cv=1.0,
                  output_mean=1.0, output_cv=1.0, min_tokens=0)


def test_empirical_keeps_pairs():
    table = np.array([[10, 1], [200, 2], [3000, 3]], dtype=np.int64)
    p, o = empirical(3000, np.random.default_rng(0), table=table)
    pairs = set(zip(p.tolist(), o.tolist(), strict=True))
    assert pairs == {(10, 1), (200, 2), (3000, 3)}
    assert np.bincount(o)[1:].min() > 900  # uniform over rows
    with pytest.raises(ValueError, match="shape"):
        empirical(3, np.random.default_rng(0), table=np.zeros((0, 2)))


def test_shipped_fixture_matches_sharegpt_shape():
    table = load_length_table(FIXTURE)
    assert table.shape == (2000, 2) and table.dtype == np.int64
    # Lognormal matched to ShareGPT mean/median (2,340 / 1,730 and 439 / 415), clipped.
    assert np.median(table[:, 0]) == pytest.approx(1730, rel=0.1)
    assert table[:, 0].mean() == pytest.approx(2340, rel=0.1)
    assert table[:, 1].mean() == pytest.approx(439, rel=0.1)
    assert table[:, 0].max() <= 8192 and table[:, 1].max() <= 1024


def test_load_length_table_errors(tmp_path):
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="prompt_tokens,output_tokens"):
        load_length_table(bad_header)
    bad_value = tmp_path / "v.csv"
    bad_value.write_text("prompt_tokens,output_tokens\n5,6\n7,0\n")
    with pytest.raises(ValueError, match=r"v.csv: row 2 \(line 3\), column 'output_tokens'"):
        load_length_table(bad_value)
    empty = tmp_path / "e.csv"
    empty.write_text("prompt_tokens,output_tokens\n")
    with pytest.raises(ValueError, match="no data rows"):
        load_length_table(empty)


@pytest.mark.shared
@needs_shared
@pytest.mark.parametrize(
    ("path", "rows", "prompt_mean"),
    [
        (TRACES / "length_distributions/sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
         30_731, 2340),
        (SHARED_DATA / "distserve/sharegpt_lengths.csv", None, None),
    ],
)
def test_load_real_tables(path, rows, prompt_mean):
    table = load_length_table(path)
    assert table.shape[1] == 2 and table.min() >= 1
    if rows is not None:
        assert table.shape[0] == rows
        assert table[:, 0].mean() == pytest.approx(prompt_mean, rel=0.01)
