"""Heuristic policies behind the one routing interface ``policy(view, request) -> Decision``.

The heuristics live in :mod:`sim.routers` (the simulator's ``simulate.py`` uses them without
importing this package); this module names the set a researcher compares learned policies
against:

=====================  =====================================================================
name                   behaviour
=====================  =====================================================================
round_robin            colocated; cycle over instances
least_loaded           colocated; least queued prefill tokens + resident KV tokens
join_shortest_queue    colocated; fewest waiting + running requests
vllm_dp                colocated; vLLM's data-parallel balancer, lowest 4 x waiting + running
distserve              disaggregated; shortest prefill queue, then least-loaded decode
dynaserve              tandem; Lead/Follow by load, split from predicted work and load
random                 uniformly random Lead, Follow and split (seeded)
=====================  =====================================================================
"""

from __future__ import annotations

from sim.routers import ROUTERS, Router, make_router

HEURISTICS: dict[str, str] = {
    "round_robin": "round_robin",
    "least_loaded": "least_outstanding_tokens",
    "join_shortest_queue": "join_shortest_queue",
    "vllm_dp": "vllm_dp",
    "distserve": "distserve",
    "dynaserve": "dynaserve",
    "random": "random",
}
"""Heuristic name -> :data:`sim.routers.ROUTERS` key."""


def make_heuristic(name: str, seed: int = 0) -> Router:
    """A heuristic policy by name (``seed`` is used by ``random`` only).

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    key = HEURISTICS.get(name, name if name in ROUTERS else None)
    if key is None:
        raise ValueError(f"unknown heuristic {name!r}; choose one of {', '.join(HEURISTICS)}")
    return make_router(key, **({"seed": seed} if key == "random" else {}))
