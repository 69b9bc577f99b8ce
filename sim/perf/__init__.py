"""Iteration time, KV capacity and KV transfer of serving instances: one interface, three backends.

>>> from sim.perf import make_backend, BatchShape
>>> be = make_backend("analytic", model="Llama-3.1-8B", gpu="A100-80GB-SXM", tp=1)
>>> t = be.time(BatchShape.from_requests(prefill_new_tokens=[512], decode_ctx_tokens=[300] * 8))
"""

from __future__ import annotations

from sim.catalog import CatalogError
from sim.perf.analytic import AnalyticBackend
from sim.perf.base import LatencyBackend
from sim.perf.batch import BatchArrays, BatchShape
from sim.perf.distserve import DistServeBackend
from sim.perf.memory import MemoryPlan, plan_memory
from sim.perf.params import EngineParams, KernelParams, load_engine_params, load_kernel_params
from sim.perf.profile_table import ProfileTableBackend
from sim.perf.transfer import LINKS, LinkSpec, get_link, kv_transfer_time_s

BACKENDS: dict[str, type[LatencyBackend]] = {
    "analytic": AnalyticBackend,
    "profile_table": ProfileTableBackend,
    "distserve": DistServeBackend,
}
"""Backend name -> class; configs hold the name."""


def make_backend(name: str, **kwargs) -> LatencyBackend:
    """Build a latency backend by name (``analytic``, ``profile_table`` or ``distserve``).

    Raises:
        CatalogError: for an unknown name, listing the valid ones.
    """
    try:
        cls = BACKENDS[name]
    except KeyError:
        raise CatalogError(
            f"unknown perf backend {name!r}; choose one of {', '.join(BACKENDS)}"
        ) from None
    return cls(**kwargs)


__all__ = [
    "BACKENDS",
    "LINKS",
    "AnalyticBackend",
    "BatchArrays",
    "BatchShape",
    "DistServeBackend",
    "EngineParams",
    "KernelParams",
    "LatencyBackend",
    "LinkSpec",
    "MemoryPlan",
    "ProfileTableBackend",
    "get_link",
    "kv_transfer_time_s",
    "load_engine_params",
    "load_kernel_params",
    "make_backend",
    "plan_memory",
]
