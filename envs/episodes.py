"""Episode workloads: windows of a synthetic process or a trace, with randomised rate and seed.

Each episode draws from the environment's RNG (so ``reset(seed=...)`` fixes it):

* synthetic workloads: a fresh sample of ``requests_per_episode`` requests;
* traces: a window of ``requests_per_episode`` consecutive requests starting at a uniformly
  drawn request, its arrival times re-based to 0;

then arrival times are compressed by a rate multiplier drawn log-uniformly from
``[rate_scale_min, rate_scale_max]``, so a policy sees both light and overloaded episodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from sim.workload import Workload, WorkloadConfig, build_workload


@dataclass
class EpisodeConfig:
    """How an episode's workload is drawn."""

    requests_per_episode: int = 512
    """Arrivals per episode (one environment step each)."""
    rate_scale_min: float = 0.6
    """Lowest multiplier of the workload's arrival rate."""
    rate_scale_max: float = 1.6
    """Highest multiplier (drawn log-uniformly between the two)."""
    end: str = "truncate"
    """truncate (cut after the last arrival; bootstrap) or drain (run all to completion)."""

    def __post_init__(self) -> None:
        if isinstance(self.requests_per_episode, bool) or int(self.requests_per_episode) < 1:
            raise ValueError(f"episode.requests_per_episode = {self.requests_per_episode!r} "
                             "must be an integer >= 1")
        if self.end not in ("truncate", "drain"):
            raise ValueError(f"episode.end {self.end!r} must be truncate or drain")
        if not 0 < self.rate_scale_min <= self.rate_scale_max < math.inf:
            raise ValueError(
                "episode needs 0 < rate_scale_min <= rate_scale_max, got "
                f"{self.rate_scale_min}, {self.rate_scale_max}")


class EpisodeSampler:
    """Draws episode workloads from one workload config."""

    def __init__(self, workload: WorkloadConfig, episode: EpisodeConfig) -> None:
        """Keep the configs; a trace is loaded once, on first use."""
        self.workload_cfg = workload
        self.cfg = episode
        self._trace: Workload | None = None

    def sample(self, rng: np.random.Generator) -> tuple[Workload, float]:
        """One episode's workload and its rate multiplier."""
        n = int(self.cfg.requests_per_episode)
        lo, hi = self.cfg.rate_scale_min, self.cfg.rate_scale_max
        scale = float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else lo
        if self.workload_cfg.kind == "trace":
            if self._trace is None:
                self._trace = build_workload(self.workload_cfg, np.random.default_rng(0))
            full = self._trace
            start = int(rng.integers(0, max(len(full) - n, 0) + 1))
            wl = full.window(float(full.arrival_s[start])).head(n)
        else:
            wl = build_workload(replace(self.workload_cfg, num_requests=n, max_requests=None),
                                rng)
        return wl.scale_rate(scale), scale
