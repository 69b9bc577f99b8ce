"""Routing decisions: what a router sees (:class:`ClusterView`) and returns (:class:`Decision`).

At every arrival the engine asks a router for ``Decision(lead, follow, split_tokens)``:
the Lead prefills and samples the first ``split_tokens`` outputs, the Follow samples the rest.
``follow == lead`` (or ``split_tokens >= output``) is colocation, ``split_tokens == 1`` on a
different Follow is DistServe-style disaggregation, anything between is tandem serving.

The view is a plain snapshot of per-instance load taken when it is built; arrays have shape
``(n_instances,)``. The router in ``runtime/`` builds the same view from scraped metrics, so
policies see the same inputs in simulation and live.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request runs and where it is split."""

    lead: int
    """Instance index that prefills and samples outputs 1..split_tokens."""
    follow: int
    """Instance index that samples the remaining outputs (== lead: colocated)."""
    split_tokens: int
    """Outputs sampled on the Lead (>= 1); >= the output length means colocated."""
    reject: bool = False
    """Admission control: refuse the request (counted as REJECTED by the router)."""


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What is known about an arriving request (the true output length is not)."""

    rid: int
    """Request index in the workload."""
    arrival_s: float
    """Arrival time, seconds."""
    num_prompt_tokens: int
    """Prompt length, tokens."""
    predicted_output_tokens: int
    """Output-length prediction (possibly noisy), tokens."""
    num_cached_tokens_hint: int = 0
    """Longest prefix-cache hit over instances, tokens (0 if unknown)."""


_new = object.__new__
_SET_DECISION = tuple(Decision.__dict__[name].__set__ for name in Decision.__slots__)
_SET_INFO = tuple(RequestInfo.__dict__[name].__set__ for name in RequestInfo.__slots__)


def make_decision(lead: int, follow: int, split_tokens: int) -> Decision:
    """``Decision(lead, follow, split_tokens)`` for hot paths (routers run at every arrival).

    The same frozen object, filled through its slots: a frozen dataclass's ``__init__`` sets
    each field with ``object.__setattr__``, which costs about twice as much.
    """
    d = _new(Decision)
    s_lead, s_follow, s_split, s_reject = _SET_DECISION
    s_lead(d, lead)
    s_follow(d, follow)
    s_split(d, split_tokens)
    s_reject(d, False)
    return d


def make_request_info(rid: int, arrival_s: float, num_prompt_tokens: int,
                      predicted_output_tokens: int) -> RequestInfo:
    """``RequestInfo(rid, arrival_s, num_prompt_tokens, predicted_output_tokens)``, faster.

    For hot paths (the simulator builds one per arrival); see :func:`make_decision`.
    """
    info = _new(RequestInfo)
    s_rid, s_arrival, s_prompt, s_predicted, s_hint = _SET_INFO
    s_rid(info, rid)
    s_arrival(info, arrival_s)
    s_prompt(info, num_prompt_tokens)
    s_predicted(info, predicted_output_tokens)
    s_hint(info, 0)
    return info


_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY.setflags(write=False)

VIEW_FIELDS = (
    "num_waiting",
    "num_running",
    "queued_prefill_tokens",
    "kv_used_blocks",
    "kv_total_blocks",
    "num_transfers_in",
    "num_transfers_out",
)
"""Per-instance arrays of a :class:`ClusterView`, each ``(n_instances,)`` int64."""


def _field(name: str, doc: str) -> property:
    def get(self: ClusterView) -> np.ndarray:
        value = self._values[name]
        if not isinstance(value, np.ndarray):
            value = np.asarray(value() if callable(value) else value, dtype=np.int64)
            self._values[name] = value
        return value

    return property(get, doc=doc)


class ClusterView:
    """Per-instance load at a decision time. All arrays are ``(n_instances,)`` int64.

    Each array may be given as an array or as a zero-argument callable that returns one; a
    callable is evaluated on first access and cached, so a router pays only for what it reads
    (the simulator builds views lazily, the live router eagerly from scraped metrics).
    Treat the arrays as read-only.
    """

    __slots__ = ("now_s", "role", "block_size", "_values", "_role_index", "_static")

    def __init__(self, now_s: float, role: tuple[str, ...], block_size: int = 16,
                 role_index: dict[str, np.ndarray] | None = None, **arrays) -> None:
        """Create a view.

        Args:
            now_s: time of the snapshot, seconds.
            role: unified / prefill / decode per instance.
            block_size: tokens per KV block.
            role_index: optional precomputed ``role -> instance indices`` (static per cluster).
            **arrays: every name in :data:`VIEW_FIELDS`, as an array or a callable.
        """
        missing = set(VIEW_FIELDS) - set(arrays)
        extra = set(arrays) - set(VIEW_FIELDS)
        if missing or extra:
            raise TypeError(f"ClusterView needs exactly {VIEW_FIELDS}; missing "
                            f"{sorted(missing)}, unknown {sorted(extra)}")
        self.now_s = now_s
        self.role = role
        self.block_size = block_size
        self._values = arrays
        self._role_index = role_index
        self._static = None

    @classmethod
    def _trusted(cls, now_s: float, role: tuple[str, ...], block_size: int,
                 role_index: dict[str, np.ndarray] | None, values: dict,
                 static: dict | None) -> ClusterView:
        """Build a view without checking the field names (the simulator's hot path).

        Args:
            now_s: decision time, seconds.
            role: per-instance roles, ``(n_instances,)``.
            block_size: tokens per KV block.
            role_index: instance indices per role (None: computed on demand).
            values: exactly the names of :data:`VIEW_FIELDS` (arrays or callables); a new
                dict per view (lazy fields are cached in it).
            static: a dict kept by the caller across views of one cluster whose roles and
                ``kv_total_blocks`` never change; :meth:`candidates` caches per-role answers
                in it. None: no caching.
        """
        view = object.__new__(cls)
        view.now_s = now_s
        view.role = role
        view.block_size = block_size
        view._values = values
        view._role_index = role_index
        view._static = static
        return view

    num_waiting = _field("num_waiting", "Requests in the waiting queue.")
    num_running = _field("num_running", "Requests in the running batch.")
    queued_prefill_tokens = _field(
        "queued_prefill_tokens", "Prompt tokens not yet computed over waiting and running.")
    kv_used_blocks = _field("kv_used_blocks", "KV blocks held by requests.")
    kv_total_blocks = _field("kv_total_blocks", "KV blocks of the instance.")
    num_transfers_in = _field("num_transfers_in",
                              "KV hand-overs pending or in flight into the instance.")
    num_transfers_out = _field("num_transfers_out",
                               "KV hand-overs pending or in flight out of the instance.")

    def values(self, name: str) -> list[int]:
        """One field as a plain list (cheaper than the array for a few instances).

        Routers scanning a handful of instances use this; it shares the lazy evaluation.
        """
        value = self._values[name]
        if callable(value):
            value = value()
            self._values[name] = value
        return value.tolist() if isinstance(value, np.ndarray) else value

    def snapshot(self) -> ClusterView:
        """A copy with every array evaluated (safe to keep after the simulator moves on)."""
        return ClusterView(self.now_s, self.role, self.block_size, self._role_index,
                           **{k: np.array(getattr(self, k)) for k in VIEW_FIELDS})

    @property
    def num_instances(self) -> int:
        """Instances in the cluster."""
        return len(self.role)

    @property
    def kv_free_blocks(self) -> np.ndarray:
        """Blocks not held by requests (empty or evictable)."""
        return self.kv_total_blocks - self.kv_used_blocks

    @property
    def kv_used_frac(self) -> np.ndarray:
        """KV usage as a 0-1 fraction (vLLM's ``kv_cache_usage_perc`` / 100)."""
        return self.kv_used_blocks / np.maximum(self.kv_total_blocks, 1)

    def index_list(self, roles: tuple[str, ...]) -> list[int]:
        """Indices of instances with any of these roles, ascending (a plain list)."""
        return [i for i, r in enumerate(self.role) if r in roles]

    def candidates(self, roles: tuple[str, ...], need_blocks: int) -> list[int]:
        """Instances of these roles whose KV could ever hold ``need_blocks`` blocks, ascending.

        Every instance of the roles when none can hold it; every instance when none has one
        of the roles. A new list each call.
        """
        static = self._static
        if static is not None:
            hit = static.get(roles)
            if hit is None:
                idx = self.index_list(roles) or list(range(self.num_instances))
                total = self.values("kv_total_blocks")
                hit = (idx, min([total[i] for i in idx]))
                static[roles] = hit
            idx, smallest = hit
            if need_blocks <= smallest:
                return list(idx)
        else:
            idx = self.index_list(roles) or list(range(self.num_instances))
        total = self.values("kv_total_blocks")
        ok = [i for i in idx if total[i] >= need_blocks]
        return ok or list(idx)

    def indices(self, role: str) -> np.ndarray:
        """Indices of instances with this role (int64, ascending)."""
        if self._role_index is not None:
            return self._role_index.get(role, _EMPTY)
        return np.array([i for i, r in enumerate(self.role) if r == role], dtype=np.int64)

    def fits(self, num_tokens: int) -> np.ndarray:
        """Whether each instance's whole KV cache could ever hold ``num_tokens`` tokens."""
        return self.kv_total_blocks * self.block_size >= num_tokens
