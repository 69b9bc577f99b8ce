"""What one engine iteration computes, described by a handful of sums (scalar and vector forms).

A vLLM V1 iteration runs every scheduled token through the model once. Sequence i brings
``c_i`` new tokens on top of ``x_i`` tokens whose KV is already cached::

    prefill chunk i:  |<-- x_i cached -->|<-- c_i new -->|      (c_i >= 1)
    decode seq j:     |<------ ctx_j - 1 cached ------>|1|      (one new token)

Dense layers (GEMMs, norms, all-reduce) depend only on the total new tokens; attention
depends on the sums below, which is all a single varlen attention launch needs. Keeping the
batch as sums lets the simulator update it incrementally and the perf model evaluate it in O(1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from sim.catalog import CatalogError


@dataclass(frozen=True, slots=True)
class BatchShape:
    """One iteration's work as sums over its sequences (all counts in tokens)."""

    num_prefill_tokens: int = 0
    """sum of c_i over prefilling sequences (new prompt tokens computed this iteration)."""
    num_prefill_seqs: int = 0
    """Prefilling sequences (including chunks that do not finish the prompt)."""
    prefill_ctx_tokens: int = 0
    """sum of x_i: tokens already cached under the prefill chunks (chunked prefill, prefix hits)."""
    prefill_new_x_ctx: int = 0
    """sum of c_i * x_i (attention between new and cached tokens)."""
    prefill_new_sq: int = 0
    """sum of c_i ** 2 (attention among the new tokens)."""
    num_decode_seqs: int = 0
    """Sequences generating one token each."""
    decode_ctx_tokens: int = 0
    """sum of ctx_j: tokens each decoding sequence attends to (its cache plus the new token)."""

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise CatalogError(f"BatchShape.{name} must be an integer, got {value!r}")
            if value < 0:
                raise CatalogError(f"BatchShape.{name} must be >= 0, got {value}")
        if self.num_prefill_tokens < self.num_prefill_seqs:
            raise CatalogError(
                f"BatchShape.num_prefill_tokens={self.num_prefill_tokens} is less than "
                f"num_prefill_seqs={self.num_prefill_seqs}: every prefill chunk has >= 1 token"
            )
        if self.decode_ctx_tokens < self.num_decode_seqs:
            raise CatalogError(
                f"BatchShape.decode_ctx_tokens={self.decode_ctx_tokens} is less than "
                f"num_decode_seqs={self.num_decode_seqs}: each decode attends to >= 1 token"
            )

    @property
    def num_tokens(self) -> int:
        """Tokens through the dense layers (prefill chunk tokens plus one per decode)."""
        return self.num_prefill_tokens + self.num_decode_seqs

    @property
    def num_seqs(self) -> int:
        """Sequences in the batch."""
        return self.num_prefill_seqs + self.num_decode_seqs

    def as_args(self) -> tuple[int, int, int, int, int, int, int]:
        """The fields in the order the backends' scalar ``iteration_time_s`` takes them."""
        return (
            self.num_prefill_tokens,
            self.num_prefill_seqs,
            self.prefill_ctx_tokens,
            self.prefill_new_x_ctx,
            self.prefill_new_sq,
            self.num_decode_seqs,
            self.decode_ctx_tokens,
        )

    @classmethod
    def from_requests(
        cls,
        prefill_new_tokens: Sequence[int] = (),
        prefill_cached_tokens: Sequence[int] | None = None,
        decode_ctx_tokens: Sequence[int] = (),
    ) -> BatchShape:
        """Build from per-sequence lengths.

        Args:
            prefill_new_tokens: c_i, new tokens of each prefilling sequence.
            prefill_cached_tokens: x_i, cached tokens under each chunk (zeros if omitted).
            decode_ctx_tokens: ctx_j, tokens each decoding sequence attends to.

        Raises:
            CatalogError: on negative or non-integer lengths or mismatched lengths.
        """
        c = _as_int_array(prefill_new_tokens, "prefill_new_tokens")
        x = (
            np.zeros_like(c)
            if prefill_cached_tokens is None
            else _as_int_array(prefill_cached_tokens, "prefill_cached_tokens")
        )
        d = _as_int_array(decode_ctx_tokens, "decode_ctx_tokens")
        if len(x) != len(c):
            raise CatalogError(
                f"prefill_cached_tokens has {len(x)} entries but prefill_new_tokens has {len(c)}"
            )
        if (c < 1).any():
            raise CatalogError("prefill_new_tokens: every chunk must have >= 1 new token")
        if (d < 1).any():
            raise CatalogError("decode_ctx_tokens: every decode attends to >= 1 token")
        return cls(
            num_prefill_tokens=int(c.sum()),
            num_prefill_seqs=len(c),
            prefill_ctx_tokens=int(x.sum()),
            prefill_new_x_ctx=int((c * x).sum()),
            prefill_new_sq=int((c * c).sum()),
            num_decode_seqs=len(d),
            decode_ctx_tokens=int(d.sum()),
        )


def _as_int_array(values: Sequence[int], name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise CatalogError(f"{name} must be a 1-D sequence of integers, got {values!r}")
    if (arr < 0).any():
        raise CatalogError(f"{name} must be >= 0, got min {arr.min()}")
    return arr.astype(np.int64)


class BatchArrays(NamedTuple):
    """Many iterations at once: each field is an ``(n,)`` array, meaning as in BatchShape."""

    num_prefill_tokens: np.ndarray
    num_prefill_seqs: np.ndarray
    prefill_ctx_tokens: np.ndarray
    prefill_new_x_ctx: np.ndarray
    prefill_new_sq: np.ndarray
    num_decode_seqs: np.ndarray
    decode_ctx_tokens: np.ndarray

    @classmethod
    def from_shapes(cls, shapes: Sequence[BatchShape]) -> BatchArrays:
        """Stack scalar shapes into arrays (int64)."""
        cols = np.array([s.as_args() for s in shapes], dtype=np.int64).reshape(-1, 7)
        return cls(*(cols[:, i] for i in range(7)))

    @classmethod
    def zeros(cls, n: int) -> BatchArrays:
        """``n`` empty iterations (fill the fields in place)."""
        return cls(*(np.zeros(n, dtype=np.int64) for _ in range(7)))

    def validate(self) -> None:
        """Raise :class:`CatalogError` naming the field on negative or mismatched arrays."""
        n = len(self.num_prefill_tokens)
        for name, arr in zip(self._fields, self, strict=True):
            a = np.asarray(arr)
            if a.shape != (n,):
                raise CatalogError(f"BatchArrays.{name} has shape {a.shape}, expected ({n},)")
            if (a < 0).any():
                raise CatalogError(f"BatchArrays.{name} has negative entries")
