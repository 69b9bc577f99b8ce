"""A learned policy as a router: encode the view, ask the network, decode the action.

Torch-free: the network is any ``act(obs, mask) -> action`` callable -- an
:class:`~policies.onnx_policy.OnnxPolicy` (what the live router and the evaluation use) or a
thin wrapper around an SB3 model during training.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sim.features import ObservationEncoder
from sim.routing import ClusterView, Decision, RequestInfo

ActFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(obs (obs_dim,) float32, mask (sum(nvec),) bool) -> action (len(nvec),) int``."""


class EncodedPolicy:
    """Route with a network over :class:`~sim.features.ObservationEncoder` features."""

    name = "learned"

    def __init__(self, encoder: ObservationEncoder, act: ActFn, name: str = "learned") -> None:
        """Wrap ``act`` with the encoder its observations were trained on."""
        self.encoder = encoder
        self._act = act
        self.name = name

    def reset(self) -> None:
        """A new run starts (resets the encoder's arrival-rate estimate)."""
        self.encoder.reset()

    def __call__(self, view: ClusterView, req: RequestInfo) -> Decision:
        """Decision for one arriving request."""
        obs, mask = self.encoder.encode(view, req)
        return self.encoder.decode(self._act(obs, mask), req)

    act = __call__


def sb3_act(model) -> ActFn:
    """Deterministic action function of an SB3 / sb3-contrib model (masks if it supports them)."""
    maskable = "Maskable" in type(model).__name__

    def act(obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if maskable:
            a, _ = model.predict(obs, deterministic=True, action_masks=mask)
        else:
            a, _ = model.predict(obs, deterministic=True)
        return a

    return act
