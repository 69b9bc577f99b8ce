"""The :class:`Workload`: a request set held as column arrays, plus slicing and statistics.

Prefix information uses a CSR layout over per-request block hashes (Mooncake semantics)::

    hash_offsets = [0,      3,   4,         7]      (n + 1,)
    hash_ids     = [5, 6, 9 | 5 | 5, 6, 11]          (m,)
                    request 0  1   request 2

Request ``i`` owns ``hash_ids[hash_offsets[i]:hash_offsets[i + 1]]``; each id covers
``hash_block_tokens`` prompt tokens in order. Two requests share a reusable KV prefix exactly as
long as their leading ids agree (requests 0 and 2 above share 2 blocks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EMPTY_IDS = np.zeros(0, dtype=np.int64)
_EMPTY_IDS.setflags(write=False)


def _as_array(value: object, dtype: type, field: str) -> np.ndarray:
    """Return a read-only private 1-D copy of ``value`` as ``dtype``; raise naming ``field``."""
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ValueError(f"Workload.{field} must be 1-D, got shape {arr.shape}; pass a flat array")
    if dtype is np.int64 and arr.size and arr.dtype.kind not in "iu":
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)) or np.any(arr != np.rint(arr)):
            raise ValueError(f"Workload.{field} must hold integers, got dtype {arr.dtype}; "
                             "round the values or pass an int64 array")
    owned = arr.astype(dtype, copy=True)  # a private copy: callers cannot mutate it later
    owned.setflags(write=False)
    return owned


def _first_bad(mask: np.ndarray) -> int:
    """Index of the first True in ``mask``."""
    return int(np.argmax(mask))


@dataclass(frozen=True, eq=False)
class Workload:
    """Requests of one experiment as column arrays, sorted by arrival.

    Arrays are stored as read-only views (any integer/float input is converted once).
    Equality and hashing are by identity (``eq=False``): compare the arrays explicitly.
    """

    arrival_s: np.ndarray
    """(n,) float64 arrival times, seconds from the workload's start, non-decreasing, >= 0."""
    prompt_tokens: np.ndarray
    """(n,) int64 prompt lengths, tokens, >= 1."""
    output_tokens: np.ndarray
    """(n,) int64 output lengths (tokens to generate), >= 1."""
    hash_offsets: np.ndarray | None = None
    """(n + 1,) int64 CSR offsets into ``hash_ids``; None when there is no prefix information."""
    hash_ids: np.ndarray | None = None
    """(m,) int64 prompt block hashes; a shared leading run of ids is a reusable KV prefix."""
    hash_block_tokens: int = 16
    """Prompt tokens each hash id covers (16 for generic traces, 512 for Mooncake)."""
    name: str = ""
    """Label used in summaries and plots."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "arrival_s", _as_array(self.arrival_s, np.float64, "arrival_s"))
        set_(self, "prompt_tokens", _as_array(self.prompt_tokens, np.int64, "prompt_tokens"))
        set_(self, "output_tokens", _as_array(self.output_tokens, np.int64, "output_tokens"))
        n = self.arrival_s.shape[0]
        for field in ("prompt_tokens", "output_tokens"):
            arr = getattr(self, field)
            if arr.shape != (n,):
                raise ValueError(f"Workload.{field} has shape {arr.shape} but arrival_s has "
                                 f"({n},); give every request one value")
            if np.any(arr < 1):
                i = _first_bad(arr < 1)
                raise ValueError(f"Workload.{field}[{i}] = {arr[i]} must be >= 1 token")
        self._check_arrivals()
        self._check_hashes(n)

    def _check_arrivals(self) -> None:
        arr = self.arrival_s
        if not np.all(np.isfinite(arr)):
            i = _first_bad(~np.isfinite(arr))
            raise ValueError(f"Workload.arrival_s[{i}] = {arr[i]} must be finite")
        if arr.size and arr[0] < 0:
            raise ValueError(f"Workload.arrival_s[0] = {arr[0]} must be >= 0 s; re-base the "
                             "arrivals to the workload's start")
        back = np.diff(arr) < 0
        if np.any(back):
            i = _first_bad(back) + 1
            raise ValueError(f"Workload.arrival_s must be non-decreasing: row {i} "
                             f"({arr[i]} s) comes before row {i - 1} ({arr[i - 1]} s); "
                             "sort the requests by arrival")

    def _check_hashes(self, n: int) -> None:
        if isinstance(self.hash_block_tokens, bool) or not isinstance(self.hash_block_tokens,
                                                                      int | np.integer):
            raise ValueError(f"Workload.hash_block_tokens must be an int, got "
                             f"{self.hash_block_tokens!r}")
        if self.hash_block_tokens < 1:
            raise ValueError(f"Workload.hash_block_tokens = {self.hash_block_tokens} must be >= 1")
        if (self.hash_offsets is None) != (self.hash_ids is None):
            raise ValueError("Workload.hash_offsets and hash_ids must both be set or both None")
        if self.hash_offsets is None:
            return
        offsets = _as_array(self.hash_offsets, np.int64, "hash_offsets")
        ids = _as_array(self.hash_ids, np.int64, "hash_ids")
        object.__setattr__(self, "hash_offsets", offsets)
        object.__setattr__(self, "hash_ids", ids)
        if offsets.shape != (n + 1,):
            raise ValueError(f"Workload.hash_offsets has shape {offsets.shape}, expected "
                             f"({n + 1},) (one more than the number of requests)")
        if offsets[0] != 0 or offsets[-1] != ids.shape[0]:
            raise ValueError(f"Workload.hash_offsets must start at 0 and end at len(hash_ids) = "
                             f"{ids.shape[0]}, got {offsets[0]} .. {offsets[-1]}")
        num_blocks = np.diff(offsets)
        if np.any(num_blocks < 0):
            i = _first_bad(num_blocks < 0)
            raise ValueError(f"Workload.hash_offsets must be non-decreasing: request {i} has "
                             f"{num_blocks[i]} blocks")
        max_blocks = -(-self.prompt_tokens // self.hash_block_tokens)
        if np.any(num_blocks > max_blocks):
            i = _first_bad(num_blocks > max_blocks)
            raise ValueError(f"request {i} has {num_blocks[i]} hash blocks of "
                             f"{self.hash_block_tokens} tokens but only {self.prompt_tokens[i]} "
                             "prompt tokens; blocks must not extend past the prompt")

    # ------------------------------------------------------------------ size and rate
    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    @property
    def num_requests(self) -> int:
        """Number of requests."""
        return len(self)

    @property
    def duration_s(self) -> float:
        """Last arrival minus first arrival, seconds (0 for fewer than 2 requests)."""
        if len(self) < 2:
            return 0.0
        return float(self.arrival_s[-1] - self.arrival_s[0])

    @property
    def rate_per_s(self) -> float:
        """Mean arrival rate ``(n - 1) / duration_s``, requests/s.

        0 for fewer than 2 requests, ``inf`` when all requests arrive at one instant.
        """
        if len(self) < 2:
            return 0.0
        duration_s = self.duration_s
        return (len(self) - 1) / duration_s if duration_s > 0 else float("inf")

    # ------------------------------------------------------------------ derived workloads
    def scale_rate(self, factor: float) -> Workload:
        """Compress time by ``factor``: factor 2 gives twice the arrival rate.

        Args:
            factor: rate multiplier, > 0 and finite (arrival_s is divided by it).

        Returns:
            A new workload with the same requests and ``arrival_s / factor``.
        """
        if not np.isfinite(factor) or factor <= 0:
            raise ValueError(f"scale_rate factor must be a finite number > 0, got {factor}")
        return self._replace(arrival_s=self.arrival_s / float(factor))

    def window(self, start_s: float, end_s: float | None = None) -> Workload:
        """Requests arriving in ``[start_s, end_s)``, re-based so that ``start_s`` becomes 0.

        Args:
            start_s: window start, seconds, >= 0.
            end_s: window end, seconds, > start_s; None for no end.

        Returns:
            The time slice (possibly empty); arrivals keep their gap to ``start_s``.
        """
        if not np.isfinite(start_s) or start_s < 0:
            raise ValueError(f"window start_s must be finite and >= 0, got {start_s}")
        if end_s is not None and not end_s > start_s:
            raise ValueError(f"window end_s = {end_s} must be > start_s = {start_s}")
        lo = int(np.searchsorted(self.arrival_s, start_s, side="left"))
        hi = len(self) if end_s is None else int(np.searchsorted(self.arrival_s, end_s, "left"))
        part = self._rows(lo, hi)
        return part._replace(arrival_s=np.maximum(part.arrival_s - float(start_s), 0.0))

    def head(self, n: int) -> Workload:
        """The first ``n`` requests (all of them when ``n >= len(self)``)."""
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"head n must be an integer >= 0, got {n!r}")
        return self._rows(0, min(int(n), len(self)))

    def prompt_hashes(self, i: int) -> np.ndarray:
        """Block hashes of request ``i``'s prompt: (num_blocks,) int64, empty without prefixes."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"request index {i} out of range for {len(self)} requests")
        if self.hash_offsets is None:
            return _EMPTY_IDS
        i = i % len(self)
        return self.hash_ids[self.hash_offsets[i]: self.hash_offsets[i + 1]]

    def _rows(self, lo: int, hi: int) -> Workload:
        """Requests ``lo .. hi - 1`` (hash ids keep their values)."""
        offsets = ids = None
        if self.hash_offsets is not None:
            offsets = self.hash_offsets[lo: hi + 1] - self.hash_offsets[lo]
            ids = self.hash_ids[self.hash_offsets[lo]: self.hash_offsets[hi]]
        return Workload(self.arrival_s[lo:hi], self.prompt_tokens[lo:hi],
                        self.output_tokens[lo:hi], offsets, ids, self.hash_block_tokens,
                        self.name)

    def _replace(self, arrival_s: np.ndarray) -> Workload:
        return Workload(arrival_s, self.prompt_tokens, self.output_tokens, self.hash_offsets,
                        self.hash_ids, self.hash_block_tokens, self.name)

    # ------------------------------------------------------------------ statistics
    def summary(self) -> dict[str, float | int | str]:
        """Headline statistics, with the definitions of the traces README.

        Returns:
            ``name``, ``num_requests``, ``duration_s``, ``rate_per_s``, ``interarrival_cv``
            (std / mean of consecutive gaps; Poisson ~ 1), and for ``prompt_tokens`` and
            ``output_tokens`` the ``_mean``, ``_p50``, ``_p90``, ``_p99`` (linear
            interpolation). Statistics of an empty workload are NaN.
        """
        out: dict[str, float | int | str] = {
            "name": self.name,
            "num_requests": len(self),
            "duration_s": self.duration_s,
            "rate_per_s": self.rate_per_s,
            "interarrival_cv": _cv(np.diff(self.arrival_s)),
        }
        for field in ("prompt_tokens", "output_tokens"):
            values = getattr(self, field)
            if values.size == 0:
                stats = [float("nan")] * 4
            else:
                stats = [float(values.mean())]
                stats += [float(q) for q in np.percentile(values, [50, 90, 99])]
            for key, value in zip(("mean", "p50", "p90", "p99"), stats, strict=True):
                out[f"{field}_{key}"] = value
        return out


def _cv(gaps_s: np.ndarray) -> float:
    """Coefficient of variation of ``gaps_s``; NaN when undefined."""
    if gaps_s.size < 2 or gaps_s.mean() <= 0:
        return float("nan")
    return float(gaps_s.std() / gaps_s.mean())
