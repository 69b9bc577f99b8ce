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


@dataclass(frozen=True, slots=True)
class ClusterView:
    """Per-instance load at a decision time. All arrays are ``(n_instances,)``."""

    now_s: float
    """Simulated (or wall-clock) time of the snapshot, seconds."""
    role: tuple[str, ...]
    """unified / prefill / decode per instance."""
    num_waiting: np.ndarray
    """Requests in the waiting queue (int64)."""
    num_running: np.ndarray
    """Requests in the running batch (int64)."""
    queued_prefill_tokens: np.ndarray
    """Prompt tokens not yet computed over waiting and running requests (int64)."""
    kv_used_blocks: np.ndarray
    """KV blocks held by requests (int64)."""
    kv_total_blocks: np.ndarray
    """KV blocks of the instance (int64)."""
    num_transfers_in: np.ndarray
    """KV hand-overs pending or in flight into the instance (int64)."""
    num_transfers_out: np.ndarray
    """KV hand-overs pending or in flight out of the instance (int64)."""
    block_size: int = 16
    """Tokens per KV block."""

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

    def indices(self, role: str) -> np.ndarray:
        """Indices of instances with this role."""
        return np.array([i for i, r in enumerate(self.role) if r == role], dtype=np.int64)

    def fits(self, num_tokens: int) -> np.ndarray:
        """Whether each instance's whole KV cache could ever hold ``num_tokens`` tokens."""
        return self.kv_total_blocks * self.block_size >= num_tokens
