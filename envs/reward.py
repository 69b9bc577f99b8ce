"""Goodput-aligned reward: every request contributes exactly once, when its outcome is certain.

Per request (``RewardConfig``, defaults in brackets):

* ``met`` [+1.0] -- completed within both SLOs (TTFT <= ttft_s and TPOT <= tpot_s, the
  definitions of :mod:`sim.metrics`);
* ``violated`` [-0.5] -- completed late, or still unfinished at a deadline;
* ``rejected`` [-1.0] -- rejected at arrival or failed later (any non-completed end).

When is it paid? Rejections at once (in the step that routed the request). Otherwise at the
request's deadlines, not at its completion: at ``arrival + ttft_s`` the first token must exist
(else ``violated`` is paid right then), and at ``first_token + tpot_s * (output - 1)`` the
request must have completed (else ``violated`` now; ``met`` if it has). When a ``drain``
episode ends the simulator runs every request to its end and a final reconciliation pays the
difference for any request whose true outcome (computed exactly as the metrics do) differs
from what was paid, e.g. a request charged ``violated`` at its deadline that later failed.
Hence, for ``drain`` episodes::

    episode return (undiscounted) = met * n_met + violated * n_violated + rejected * n_rejected

and, with the default weights, ``= 1.5 * n_met - 0.5 * N - 0.5 * n_rejected`` for N requests:
maximising it maximises the requests within SLO (SLO attainment, i.e. goodput) and breaks ties
against rejecting. Why it cannot be gamed: (1) rejecting is always worse than serving late
(-1 < -0.5) and both are worse than serving in time; (2) stalling a request does not postpone
its penalty beyond its deadline, so a discount factor cannot make "park it on an overloaded
instance" look cheap; (3) nothing is left unpaid at the end of an episode: a ``drain``
episode pays every outcome; a ``truncate`` episode (the training default) leaves the requests
in flight to the critic's bootstrap value of the final state, which a backlog lowers like any
other state, so pushing work past the window's end gains nothing either.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from sim.instance import Request, RequestStatus
from sim.metrics import SLO

_COMPLETED = RequestStatus.COMPLETED
_TERMINAL = RequestStatus.COMPLETED


@dataclass
class RewardConfig:
    """Reward per request outcome (see the module docstring)."""

    met: float = 1.0
    """Completed within both SLOs."""
    violated: float = -0.5
    """Completed late or still unfinished at a deadline."""
    rejected: float = -1.0
    """Rejected at arrival or failed."""

    def __post_init__(self) -> None:
        for name in ("met", "violated", "rejected"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v)):
                raise ValueError(f"reward.{name} = {v!r} must be a finite number")
        if not self.met > self.violated > self.rejected:
            raise ValueError(
                f"reward needs met > violated > rejected (got {self.met}, {self.violated}, "
                f"{self.rejected}); otherwise dropping or stalling requests could pay")


MET, VIOLATED, REJECTED, UNPAID = 0, 1, 2, 3
"""Outcome classes (index into :attr:`RewardTracker.counts`)."""


def outcome(r: Request, slo: SLO) -> int:
    """The final outcome class of a finished request, as :func:`sim.metrics.slo_met` decides."""
    if r.status != _COMPLETED:
        return REJECTED
    out = r.max_output_tokens
    ttft = r.first_token_s - r.arrival_s
    tpot = (r.finish_s - r.first_token_s) / max(out - 1, 1) if out > 1 else 0.0
    return MET if (ttft <= slo.ttft_s and tpot <= slo.tpot_s) else VIOLATED


class RewardTracker:
    """Pays each request's reward at the moment its outcome is certain.

    Usage per episode: :meth:`reset`; after routing a request :meth:`admit` (returns the
    immediate reward of a rejection); after the simulator advances to time ``t``
    :meth:`advance` (rewards of deadlines passed); at the end :meth:`finish` (reconciliation).
    """

    def __init__(self, slo: SLO, cfg: RewardConfig | None = None) -> None:
        """Create a tracker for one SLO and reward weights."""
        self.slo = slo
        self.cfg = cfg or RewardConfig()
        self._value = (self.cfg.met, self.cfg.violated, self.cfg.rejected)
        self.reset()

    def reset(self) -> None:
        """Forget every request (a new episode)."""
        self._heap: list[tuple[float, int, int, Request]] = []
        self._paid: dict[int, int] = {}
        self.total = 0.0
        """Reward paid so far this episode."""

    def admit(self, r: Request) -> float:
        """Register a routed request; returns the reward due now (a rejection's)."""
        if r.status >= _TERMINAL and r.status != _COMPLETED:
            return self._pay(r.rid, REJECTED)
        heapq.heappush(self._heap, (r.arrival_s + self.slo.ttft_s, r.rid, 0, r))
        return 0.0

    def advance(self, now_s: float) -> float:
        """Pay every deadline at or before ``now_s``; returns the reward."""
        heap = self._heap
        reward = 0.0
        ttft_s, tpot_s = self.slo.ttft_s, self.slo.tpot_s
        while heap and heap[0][0] <= now_s:
            _, rid, phase, r = heapq.heappop(heap)
            if phase == 0:
                first = r.first_token_s
                if 0.0 <= first and first - r.arrival_s <= ttft_s:
                    out = r.max_output_tokens
                    heapq.heappush(heap, (first + tpot_s * max(out - 1, 0), rid, 1, r))
                else:
                    reward += self._pay(rid, VIOLATED if r.status == _COMPLETED
                                        or r.status < _TERMINAL else REJECTED)
            else:
                if r.status == _COMPLETED:
                    reward += self._pay(rid, outcome(r, self.slo))
                else:
                    reward += self._pay(rid, VIOLATED if r.status < _TERMINAL else REJECTED)
        return reward

    def finish(self, requests: list[Request]) -> float:
        """Reconcile after the simulator drained: pay true outcome minus what was paid."""
        self._heap.clear()
        value = self._value
        reward = 0.0
        for r in requests:
            true = outcome(r, self.slo)
            paid = self._paid.get(r.rid, UNPAID)
            if paid != true:
                reward += value[true] - (value[paid] if paid != UNPAID else 0.0)
                self._paid[r.rid] = true
        self.total += reward
        return reward

    def counts(self) -> tuple[int, int, int]:
        """(met, violated, rejected) among requests paid so far."""
        c = [0, 0, 0]
        for v in self._paid.values():
            c[v] += 1
        return c[0], c[1], c[2]

    def _pay(self, rid: int, cls: int) -> float:
        self._paid[rid] = cls
        v = self._value[cls]
        self.total += v
        return v
