"""The cluster simulator: configs, placement, the event loop and closed-form decode runs."""

from sim.engine.config import ClusterConfig, SimConfig
from sim.engine.simulator import EventKind, Simulator

__all__ = ["ClusterConfig", "EventKind", "SimConfig", "Simulator"]
