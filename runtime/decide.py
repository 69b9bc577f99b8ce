"""Routing decisions in the router: an exported ONNX policy or a heuristic, plus fallbacks.

One job: ``(ClusterView, RequestInfo, healthy) -> Decision``. With every backend healthy a
policy decision is exactly :class:`policies.learned.EncodedPolicy`'s (same encoder, same
``act``); unhealthy backends are masked out of the Lead and Follow dimensions (when some
backend of the dimension stays allowed). Heuristics come from
:func:`policies.heuristics.make_heuristic`; a heuristic decision naming an unhealthy backend
is replaced by :func:`fallback` for that side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policies.heuristics import make_heuristic
from policies.onnx_policy import OnnxPolicy
from sim.features import ObservationEncoder
from sim.routing import ClusterView, Decision, RequestInfo

LEAD_ROLES = ("unified", "prefill")
FOLLOW_ROLES = ("unified", "decode")
_ENCODED = ("queued_prefill_tokens", "num_waiting", "num_running", "num_transfers_in",
            "num_transfers_out", "kv_used_blocks")
"""View fields the observation reads."""


class PolicyDecider:
    """An exported policy (``policy.onnx`` + ``policy.json``) through the shared encoder."""

    def __init__(self, path: str | Path) -> None:
        """Load the policy and rebuild the encoder its sidecar describes."""
        self.net = OnnxPolicy.load(path)
        try:
            self.layout = self.net.sidecar["baton"]["observation"]
        except KeyError:
            raise ValueError(f"policy {path}: sidecar has no baton.observation layout; export "
                             "it with train.py (policies.sb3_train.export)") from None
        self.encoder = ObservationEncoder.from_layout(self.layout)
        self.name = f"policy:{Path(path).name}"
        self._act = self.net.bind()
        self._obs, self._mask = self._act.obs, self._act.mask[0]

    @property
    def roles(self) -> tuple[str, ...]:
        """Instance roles the policy was trained on."""
        return self.encoder.roles

    @property
    def kv_total_blocks(self) -> list[int]:
        """KV blocks per instance in the policy's layout."""
        return [int(x) for x in self.layout["kv_total_blocks"]]

    @property
    def block_size(self) -> int:
        """Tokens per KV block of the layout."""
        return self.encoder.block_size

    def __call__(self, view: ClusterView, req: RequestInfo, healthy: list[bool]) -> Decision:
        """Decision for one arriving request (call once per request, in arrival order)."""
        return self.decide_fields({name: view.values(name) for name in _ENCODED}, req, healthy)

    def decide_fields(self, fields: dict, req: RequestInfo, healthy: list[bool]) -> Decision:
        """:meth:`__call__` from the view's per-instance lists (``ClusterView.values``).

        The router's path: no ClusterView, the observation and mask are written into the
        buffers bound to the policy's session (same values as ``encoder.encode``).
        """
        mask = self._mask
        self.encoder.encode_into(
            self._obs, mask, fields["queued_prefill_tokens"], fields["num_waiting"],
            fields["num_running"], fields["num_transfers_in"], fields["num_transfers_out"],
            fields["kv_used_blocks"], req)
        if not all(healthy):
            n = self.encoder.num_instances
            h = np.asarray(healthy, dtype=bool)
            for lo in (0, n):
                allowed = mask[lo:lo + n] & h
                if allowed.any():
                    mask[lo:lo + n] = allowed
        return self.encoder.decode(self._act(), req)


class HeuristicDecider:
    """A built-in heuristic by name (see :mod:`policies.heuristics`)."""

    def __init__(self, name: str, seed: int = 0) -> None:
        """Build the heuristic (ValueError lists the names for an unknown one)."""
        self.router = make_heuristic(name, seed)
        self.name = f"heuristic:{name}"

    def __call__(self, view: ClusterView, req: RequestInfo, healthy: list[bool]) -> Decision:
        """Decision for one request; unhealthy picks replaced by :func:`fallback`."""
        d = self.router(view, req)
        if d.reject:
            return d
        n = view.num_instances
        lead, follow = d.lead, d.follow
        if not (0 <= lead < n and healthy[lead]):
            lead = fallback(view, healthy, LEAD_ROLES, ())
        if not (0 <= follow < n and healthy[follow]):
            follow = lead if d.follow == d.lead else fallback(view, healthy, FOLLOW_ROLES, ())
        if lead is None or follow is None:
            return Decision(0, 0, 1, reject=True)
        return Decision(lead, follow, d.split_tokens)


def fallback(view: ClusterView, healthy: list[bool], roles: tuple[str, ...],
             exclude: tuple[int, ...] | list[int]) -> int | None:
    """The least-loaded healthy backend with one of ``roles`` (any role if none), or None.

    Load is waiting + running requests; ties go to the lowest index. Used for retries and
    to replace unhealthy picks.
    """
    waiting, running = view.values("num_waiting"), view.values("num_running")
    for want in (roles, None):
        cands = [i for i in range(view.num_instances)
                 if healthy[i] and i not in exclude and (want is None or view.role[i] in want)]
        if cands:
            return min(cands, key=lambda i: (waiting[i] + running[i], i))
    return None
