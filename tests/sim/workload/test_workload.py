"""Workload container: validation, slicing, rate scaling, summary."""

from __future__ import annotations

import numpy as np
import pytest

from sim.workload import Workload
from tests.sim.workload.conftest import make_workload


def test_basic_properties():
    w = make_workload(11, gap_s=0.5, name="w")
    assert len(w) == w.num_requests == 11
    assert w.duration_s == pytest.approx(5.0)
    assert w.rate_per_s == pytest.approx(2.0)
    assert w.arrival_s.dtype == np.float64 and w.prompt_tokens.dtype == np.int64
    assert w.hash_offsets is None and w.prompt_hashes(3).size == 0


def test_converts_lists_and_is_read_only():
    w = Workload([0, 1, 2], [5, 6, 7], [1, 1, 1])
    assert w.arrival_s.dtype == np.float64 and w.output_tokens.dtype == np.int64
    with pytest.raises(ValueError):
        w.arrival_s[0] = 3.0


def test_unsorted_arrivals_name_row():
    with pytest.raises(ValueError, match="row 2"):
        Workload([0.0, 2.0, 1.0], [1, 1, 1], [1, 1, 1])


@pytest.mark.parametrize(
    ("field", "arrays", "pattern"),
    [
        ("prompt_tokens", ([0.0, 1.0], [4, 0], [1, 1]), r"prompt_tokens\[1\] = 0"),
        ("output_tokens", ([0.0, 1.0], [4, 4], [1, -2]), r"output_tokens\[1\] = -2"),
        ("arrival_s", ([-1.0, 1.0], [4, 4], [1, 1]), r"arrival_s\[0\]"),
        ("arrival_s", ([0.0, np.nan], [4, 4], [1, 1]), r"arrival_s\[1\] = nan"),
        ("prompt_tokens", ([0.0, 1.0], [4], [1, 1]), "prompt_tokens has shape"),
        ("prompt_tokens", ([0.0, 1.0], [4.5, 3], [1, 1]), "must hold integers"),
    ],
)
def test_validation_names_field(field, arrays, pattern):
    with pytest.raises(ValueError, match=pattern):
        Workload(*arrays)


def test_hash_validation():
    with pytest.raises(ValueError, match="both"):
        Workload([0.0], [16], [1], np.array([0, 1]), None)
    with pytest.raises(ValueError, match="shape"):
        Workload([0.0], [16], [1], np.array([0]), np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="past the prompt"):
        Workload([0.0], [16], [1], np.array([0, 2]), np.array([1, 2]))
    with pytest.raises(ValueError, match="end at len"):
        Workload([0.0], [32], [1], np.array([0, 1]), np.array([1, 2]))


def test_scale_rate_doubles_rate():
    w = make_workload(10, gap_s=1.0)
    fast = w.scale_rate(2.0)
    np.testing.assert_allclose(fast.arrival_s, w.arrival_s / 2)
    assert fast.rate_per_s == pytest.approx(2 * w.rate_per_s)
    np.testing.assert_array_equal(fast.prompt_tokens, w.prompt_tokens)
    with pytest.raises(ValueError, match="factor"):
        w.scale_rate(0.0)


def test_window_is_half_open_and_rebased():
    w = make_workload(10, gap_s=1.0, with_hashes=True)
    part = w.window(2.5, 6.0)  # arrivals 3, 4, 5
    np.testing.assert_allclose(part.arrival_s, [0.5, 1.5, 2.5])
    np.testing.assert_array_equal(part.prompt_tokens, w.prompt_tokens[3:6])
    for k in range(3):
        np.testing.assert_array_equal(part.prompt_hashes(k), w.prompt_hashes(3 + k))
    assert len(w.window(3.0, 4.0)) == 1
    assert len(w.window(100.0)) == 0
    with pytest.raises(ValueError, match="end_s"):
        w.window(5.0, 5.0)


def test_head():
    w = make_workload(10, with_hashes=True)
    h = w.head(4)
    assert len(h) == 4 and h.hash_offsets[-1] == h.hash_ids.size
    np.testing.assert_array_equal(h.prompt_hashes(3), w.prompt_hashes(3))
    assert len(w.head(50)) == 10 and len(w.head(0)) == 0
    with pytest.raises(ValueError, match="head"):
        w.head(-1)


def test_prompt_hashes_shared_prefix():
    w = make_workload(3, with_hashes=True)
    assert w.prompt_hashes(0)[0] == w.prompt_hashes(2)[0] == 0
    assert w.prompt_hashes(-1).size == w.prompt_tokens[-1] // 16
    with pytest.raises(IndexError):
        w.prompt_hashes(3)


def test_summary():
    w = make_workload(101, gap_s=0.1)
    s = w.summary()
    assert s["num_requests"] == 101
    assert s["rate_per_s"] == pytest.approx(10.0)
    assert s["interarrival_cv"] == pytest.approx(0.0, abs=1e-9)
    assert s["prompt_tokens_p50"] == pytest.approx(np.median(w.prompt_tokens))
    assert s["output_tokens_mean"] == pytest.approx(51.0)
    assert set(s) >= {f"{f}_{k}" for f in ("prompt_tokens", "output_tokens")
                      for k in ("mean", "p50", "p90", "p99")}


def test_empty_workload_is_allowed():
    w = Workload(np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert len(w) == 0 and w.rate_per_s == 0.0 and w.duration_s == 0.0
    assert np.isnan(w.summary()["prompt_tokens_mean"])


def test_workload_keeps_a_private_copy_of_its_arrays():
    from sim.workload import Workload

    a = np.array([0.0, 1.0, 2.0])
    w = Workload(a, np.array([5, 5, 5]), np.array([1, 1, 1]))
    a[0] = 5.0
    assert w.arrival_s[0] == 0.0
