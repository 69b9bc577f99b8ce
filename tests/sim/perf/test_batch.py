"""BatchShape / BatchArrays: the batch sums, and rejection of bad token counts by field name."""

from __future__ import annotations

import numpy as np
import pytest

from sim.catalog import CatalogError
from sim.perf import BatchArrays, BatchShape


def test_from_requests_sums_by_hand():
    s = BatchShape.from_requests(prefill_new_tokens=[100, 20], prefill_cached_tokens=[0, 50],
                                 decode_ctx_tokens=[7, 9, 11])
    assert s == BatchShape(
        num_prefill_tokens=120,
        num_prefill_seqs=2,
        prefill_ctx_tokens=50,
        prefill_new_x_ctx=100 * 0 + 20 * 50,
        prefill_new_sq=100**2 + 20**2,
        num_decode_seqs=3,
        decode_ctx_tokens=27,
    )
    assert s.num_tokens == 123
    assert s.num_seqs == 5
    assert s.as_args() == (120, 2, 50, 1000, 10400, 3, 27)


def test_from_requests_defaults_to_no_cache_and_empty_batch():
    assert BatchShape.from_requests([5]) == BatchShape(5, 1, 0, 0, 25, 0, 0)
    assert BatchShape.from_requests() == BatchShape()
    assert BatchShape.from_requests(decode_ctx_tokens=np.array([3, 4])).decode_ctx_tokens == 7


def test_from_requests_accepts_integral_floats():
    assert BatchShape.from_requests([4.0], [2.0]).prefill_new_x_ctx == 8


@pytest.mark.parametrize("field", BatchShape.__slots__)
def test_negative_field_is_named(field):
    with pytest.raises(CatalogError, match=f"BatchShape.{field} must be >= 0"):
        BatchShape(**{field: -1})


@pytest.mark.parametrize("field", BatchShape.__slots__)
@pytest.mark.parametrize("value", [1.5, 2.0, True, "3", None])
def test_non_integer_field_is_named(field, value):
    with pytest.raises(CatalogError, match=f"BatchShape.{field} must be an integer"):
        BatchShape(**{field: value})


def test_numpy_integers_are_accepted():
    assert BatchShape(num_decode_seqs=np.int64(2), decode_ctx_tokens=np.int32(9)).num_seqs == 2


def test_inconsistent_sums_are_rejected():
    with pytest.raises(CatalogError, match="num_prefill_tokens=1 is less than num_prefill_seqs=2"):
        BatchShape(num_prefill_tokens=1, num_prefill_seqs=2)
    with pytest.raises(CatalogError, match="decode_ctx_tokens=2 is less than num_decode_seqs=3"):
        BatchShape(num_decode_seqs=3, decode_ctx_tokens=2)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prefill_new_tokens": [10, -3]}, "prefill_new_tokens"),
        ({"prefill_new_tokens": [1.5]}, "prefill_new_tokens"),
        ({"prefill_new_tokens": [[1, 2]]}, "prefill_new_tokens"),
        ({"prefill_new_tokens": ["a"]}, "prefill_new_tokens"),
        ({"prefill_new_tokens": [0]}, "prefill_new_tokens"),
        ({"prefill_new_tokens": [4], "prefill_cached_tokens": [-1]}, "prefill_cached_tokens"),
        ({"prefill_new_tokens": [4], "prefill_cached_tokens": [0.5]}, "prefill_cached_tokens"),
        ({"prefill_new_tokens": [4], "prefill_cached_tokens": [1, 2]}, "prefill_cached_tokens"),
        ({"decode_ctx_tokens": [5, -1]}, "decode_ctx_tokens"),
        ({"decode_ctx_tokens": [2.5]}, "decode_ctx_tokens"),
        ({"decode_ctx_tokens": [0]}, "decode_ctx_tokens"),
    ],
)
def test_from_requests_names_the_bad_argument(kwargs, field):
    with pytest.raises(CatalogError, match=field):
        BatchShape.from_requests(**kwargs)


def test_batch_arrays_stack_shapes_in_argument_order():
    shapes = [BatchShape.from_requests([3], [1], [4, 5]), BatchShape(), BatchShape(7, 1)]
    arr = BatchArrays.from_shapes(shapes)
    assert arr._fields == BatchShape.__slots__
    for i, s in enumerate(shapes):
        assert tuple(int(col[i]) for col in arr) == s.as_args()
    assert all(col.dtype == np.int64 for col in arr)
    arr.validate()


def test_batch_arrays_zeros_and_empty():
    z = BatchArrays.zeros(4)
    assert all(col.shape == (4,) and not col.any() for col in z)
    empty = BatchArrays.from_shapes([])
    assert all(col.shape == (0,) for col in empty)


def test_batch_arrays_validate_names_the_field():
    z = BatchArrays.zeros(3)
    z.prefill_new_sq[1] = -4
    with pytest.raises(CatalogError, match="BatchArrays.prefill_new_sq has negative entries"):
        z.validate()
    bad = BatchArrays.zeros(3)._replace(num_decode_seqs=np.zeros(2, dtype=np.int64))
    with pytest.raises(CatalogError, match=r"BatchArrays.num_decode_seqs has shape \(2,\)"):
        bad.validate()
