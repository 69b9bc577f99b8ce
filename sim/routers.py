"""Built-in routers: a name -> class dict next to a tiny base class.

Every router maps ``(ClusterView, RequestInfo) -> Decision`` and breaks ties by the lowest
instance index, so runs are deterministic.
"""

from __future__ import annotations

from operator import add

import numpy as np

from sim.routing import ClusterView, Decision, RequestInfo, make_decision

COLOCATE = 1 << 30
"""A split larger than any output: the Lead samples every token (colocated)."""


class Router:
    """Base class: override :meth:`__call__`; :meth:`reset` clears state between runs."""

    name = "router"

    def reset(self) -> None:
        """Forget state (called when a simulation starts)."""

    def __call__(self, view: ClusterView, req: RequestInfo) -> Decision:
        """Choose Lead, Follow and split for ``req``."""
        raise NotImplementedError


def _eligible(view: ClusterView, req: RequestInfo, roles: tuple[str, ...]) -> list[int]:
    """Instances of the given roles whose KV could ever hold the request (all if none can).

    Falls back to every instance when no instance has one of the roles.
    """
    need_blocks = -(-(req.num_prompt_tokens + req.predicted_output_tokens) // view.block_size)
    return view.candidates(roles, need_blocks)


def _argmin(idx: list[int], load) -> int:
    """Index in ``idx`` with the smallest ``load(i)``; ties to the first in ``idx``."""
    best, best_load = idx[0], load(idx[0])
    for i in idx[1:]:
        v = load(i)
        if v < best_load:
            best, best_load = i, v
    return best


def _argmin_of(idx: list[int], loads: list) -> int:
    """Index in ``idx`` (ascending) with the smallest ``loads[i]``; ties to the lowest."""
    if len(idx) == len(loads):  # every instance, in order
        return loads.index(min(loads))
    return min(idx, key=loads.__getitem__)  # min keeps the first of equal keys


class RoundRobin(Router):
    """Colocated; cycle over unified instances."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def reset(self) -> None:
        """Restart the cycle at instance 0."""
        self._next = 0

    def __call__(self, view: ClusterView, req: RequestInfo) -> Decision:
        """Next eligible instance in cyclic order."""
        idx = _eligible(view, req, ("unified",))
        i = idx[self._next % len(idx)]
        self._next += 1
        return make_decision(i, i, COLOCATE)


class JoinShortestQueue(Router):
    """Colocated; the instance with the fewest waiting + running requests."""

    name = "join_shortest_queue"

    def __call__(self, view: ClusterView, req: RequestInfo) -> Decision:
        """Shortest queue among eligible unified instances."""
        idx = _eligible(view, req, ("unified",))
        w, r = view.values("num_waiting"), view.values("num_running")
        i = _argmin_of(idx, list(map(add, w, r)))
        return make_decision(i, i, COLOCATE)


class VllmDataParallel(Router):
    """Colocated, as vLLM's data-parallel front end balances engines (no split).

    vLLM V1's DP load balancer scores each engine ``4 * waiting + running`` and picks the
    lowest score, scanning from a rotating start so ties spread (here the start advances by
    one per request).
    """

    name = "vllm_dp"

    def __init__(self) -> None:
        self._start = 0

    def reset(self) -> None:
        """Restart the tie-break rotation."""
        self._start = 0

    def __call__(self, view: ClusterView, req: RequestInfo) -> Decision:
        """Lowest ``4 * waiting + running`` among eligible unified instances."""
        idx = _eligible(view, req, ("unified",))
        k = self._start % len(idx)
        self._start += 1
        idx = idx[k:] + idx[:k]
        w, r = view.values("num_waiting"), view.values("num_running")
        loads = [4 * a + b for a, b in zip(w, r, strict=True)]
        i = min(idx, key=loads.__getitem__)  # first of equal loads in rotated order
        return make_decision(i, i, COLOCATE)


class LeastOutstandingTokens(Router):
    """Colocated; the least outstanding work: queued prefill tokens plus resident KV tokens."""

    name = "least_outstanding_tokens"

    def __call__(self, view: ClusterView, req: RequestInfo) -> Decision:
        """Least-loaded eligible unified instance by tokens."""
        idx = _eligible(view, req, ("unified",))
        q, used, bs = view.values("queued_prefill_tokens"), view.values("kv_used_blocks"), \
            view.block_size
        i = _argmin_of(idx, [a + b * bs for a, b in zip(q, used, strict=True)])
        return make_decision(i, i, COLOCATE)


class DistServeRouter(Router):
    """DistServe: shortest prefill queue in the prefill pool, least-loaded decode instance.

    Pools are the ``prefill`` and ``decode`` roles (unified instances join both when a pool
    is empty). Split is 1: the decode instance samples every token after the first.
    """

    name = "distserve"

    def __call__(self, view: ClusterView, req: RequestInfo) -> Decision:
        """Shortest prefill queue, then the decode instance with the most free KV."""
        roles = view.role
        pre = _eligible(view, req, ("prefill",) if "prefill" in roles else ("unified",))
        if len(pre) == 1:  # nothing to compare: the load fields are not read (lazy)
            i = pre[0]
        else:
            q, w = view.values("queued_prefill_tokens"), view.values("num_waiting")
            i = _argmin(pre, lambda k: q[k] + w[k])
        dec = _eligible(view, req, ("decode",) if "decode" in roles else ("unified",))
        if len(dec) == 1:
            j = dec[0]
        else:
            used, total = view.values("kv_used_blocks"), view.values("kv_total_blocks")
            run, tin = view.values("num_running"), view.values("num_transfers_in")
            j = _argmin(dec, lambda k: used[k] / max(total[k], 1) + 1e-3 * (run[k] + tin[k]))
        return make_decision(i, j, 1)


class DynaServeHeuristic(Router):
    """Tandem split from predicted prefill/decode work and current load (DynaServe-style).

    Lead = least queued prefill work; Follow = least KV usage among the others; the split
    gives the Lead a share of the predicted output that grows as the Follow gets busier
    relative to the Lead, so decode work moves toward the less loaded side::

        lead_load   = queued_prefill_tokens + resident KV tokens (Lead)
        follow_load = resident KV tokens + pending hand-ins x prompt (Follow)
        split = max(1, round(predicted_output * follow_load / (lead_load + follow_load)))
    """

    name = "dynaserve"

    def __call__(self, view: ClusterView, req: RequestInfo) -> Decision:
        """Pick Lead, Follow and a load-balancing split."""
        idx = _eligible(view, req, ("unified", "prefill", "decode"))
        bs = view.block_size
        used, q = view.values("kv_used_blocks"), view.values("queued_prefill_tokens")
        i = _argmin(idx, lambda k: q[k] + used[k] * bs)
        others = [k for k in idx if k != i]
        if not others:
            return make_decision(i, i, COLOCATE)
        tin, prompt = view.values("num_transfers_in"), req.num_prompt_tokens
        j = _argmin(others, lambda k: used[k] * bs + tin[k] * prompt)
        li = q[i] + used[i] * bs + 1.0
        fj = used[j] * bs + tin[j] * prompt + 1.0
        split = max(1, round(req.predicted_output_tokens * fj / (li + fj)))
        return make_decision(i, j, int(split))


class RandomRouter(Router):
    """Uniformly random Lead, Follow and split in 1..predicted output (seeded)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Reseed."""
        self._rng = np.random.default_rng(self._seed)

    def __call__(self, view: ClusterView, req: RequestInfo) -> Decision:
        """Random valid decision."""
        idx = _eligible(view, req, ("unified", "prefill", "decode"))
        i, j = (int(x) for x in self._rng.choice(np.asarray(idx), size=2))
        split = int(self._rng.integers(1, max(req.predicted_output_tokens, 1) + 1))
        return make_decision(i, j, split)


ROUTERS: dict[str, type[Router]] = {
    r.name: r
    for r in (RoundRobin, JoinShortestQueue, VllmDataParallel, LeastOutstandingTokens,
              DistServeRouter, DynaServeHeuristic, RandomRouter)
}
"""Router name -> class; configs hold the name."""


def make_router(name: str, **kwargs) -> Router:
    """Build a router by name.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    try:
        return ROUTERS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown router {name!r}; choose one of {', '.join(ROUTERS)}") from None
