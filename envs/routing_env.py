"""Per-request routing environments over the cluster simulator.

One step = one arriving request: the agent picks (Lead, Follow, split bin) -- or (prefill,
decode) in the disaggregated variant -- the simulator places the request and runs to the next
arrival. Observation, action and mask encoding: :mod:`sim.features` (shared with the live
router). Reward: :mod:`envs.reward` (goodput-aligned, paid at deadlines).

Episodes (:mod:`envs.episodes`) are windows of the workload with a random rate multiplier.
How an episode ends (``episode.end``):

* ``truncate`` (default, for training): the window is a cut of a continuing workload. Right
  after the last arrival is placed the episode is *truncated*; requests still in flight are
  not paid, and the learner bootstraps their value from the final observation (the cluster
  after the last placement). This keeps a lump of a hundred outcomes out of the last step,
  which otherwise dominates the advantage estimates.
* ``drain`` (exact accounting, evaluation): the simulator runs every request to its end, the
  reward is reconciled, and the episode *terminates*; the undiscounted return then equals
  the outcome counts exactly (see :mod:`envs.reward`).

``info`` is empty on ordinary steps (the step is a hot path); on the last step it carries the
episode's metrics: ``requests``, ``met``, ``violated``, ``rejected``, ``unpaid`` (in flight at
a truncation), ``slo_attainment`` (met / paid), ``rate_scale``, ``rate_per_s``,
``episode_return``.
"""

from __future__ import annotations

from dataclasses import asdict

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.config import EnvConfig
from envs.episodes import EpisodeSampler
from envs.reward import RewardTracker
from sim.engine import Simulator
from sim.features import OBS_HIGH, ObservationEncoder


class RoutingEnv(gym.Env):
    """Route each arriving request of a simulated GPU cluster (see the module docstring).

    Observation: ``Box(-1, 4, (num_instances * 10 + 6,), float32)``; action:
    ``MultiDiscrete([n, n, bins])`` (tandem) or ``MultiDiscrete([n, n])`` (disaggregated);
    :meth:`action_masks` returns the flat mask sb3-contrib's MaskablePPO expects.
    """

    metadata = {"render_modes": []}

    def __init__(self, config: EnvConfig | None = None, **overrides) -> None:
        """Create the environment.

        Args:
            config: the full config (defaults: 8 unified Llama-3.1-8B instances on A100,
                bursty workload).
            **overrides: top-level :class:`EnvConfig` fields replacing ``config``'s, e.g.
                ``mode="disaggregated"`` (what ``gymnasium.make(id, **kwargs)`` passes).
        """
        cfg = config or EnvConfig()
        if overrides:
            unknown = set(overrides) - set(EnvConfig.__dataclass_fields__)
            if unknown:
                raise TypeError(f"unknown RoutingEnv option(s) {sorted(unknown)}; valid: "
                                f"{sorted(EnvConfig.__dataclass_fields__)}")
            cfg = EnvConfig(**{**{k: getattr(cfg, k) for k in EnvConfig.__dataclass_fields__},
                               **overrides})
        self.cfg = cfg
        self._sampler = EpisodeSampler(cfg.workload, cfg.episode)
        # a probe simulator gives the static cluster facts (roles, KV blocks) for the encoder
        probe_wl, _ = self._sampler.sample(np.random.default_rng(0))
        probe = Simulator(cfg.model, cfg.hardware, cfg.cluster, cfg.sim, probe_wl.head(1))
        roles = tuple(i.cfg.role for i in probe.instances)
        kv_total = [i.kv.num_blocks for i in probe.instances]
        self.encoder = ObservationEncoder(roles, kv_total, probe.instances[0].kv.block_size,
                                          cfg.slo.ttft_s, cfg.slo.tpot_s, cfg.features, cfg.mode)
        self.num_gpus = cfg.cluster.num_gpus_used()
        self.observation_space = spaces.Box(-1.0, OBS_HIGH, (self.encoder.obs_dim,), np.float32)
        self.action_space = spaces.MultiDiscrete(self.encoder.nvec)
        self.tracker = RewardTracker(cfg.slo, cfg.reward)
        self.sim: Simulator | None = None
        self._req = None
        self._obs = np.zeros(self.encoder.obs_dim, np.float32)
        self._mask = np.ones(int(sum(self.encoder.nvec)), dtype=bool)
        self._rate_scale = 1.0
        self._rate_per_s = 0.0
        self._num_requests = 0
        self._truncate = cfg.episode.end == "truncate"

    # ---- Gymnasium API --------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode on a freshly drawn workload window (see :mod:`envs.episodes`).

        Options: ``workload`` -- a :class:`~sim.workload.Workload` to serve instead of a
        drawn one (evaluation on fixed traces).
        """
        super().reset(seed=seed)
        rng = self.np_random
        if options and options.get("workload") is not None:
            wl, self._rate_scale = options["workload"], 1.0
        else:
            wl, self._rate_scale = self._sampler.sample(rng)
        self._rate_per_s = wl.rate_per_s
        pred_rng = np.random.default_rng(rng.integers(1 << 63))
        self.sim = Simulator(self.cfg.model, self.cfg.hardware, self.cfg.cluster, self.cfg.sim,
                             wl, rng=pred_rng)
        self._num_requests = len(wl)
        self.encoder.reset()
        self.tracker.reset()
        self._req = self.sim.next_arrival()
        self._obs, self._mask = self.encoder.encode(self.sim.view(), self._req)
        return self._obs, {}

    def step(self, action):
        """Route the pending request with ``action``, then run to the next arrival."""
        if self._req is None:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        sim, tracker = self.sim, self.tracker
        r = sim.route(self.encoder.decode(action, self._req))
        reward = tracker.admit(r)
        if self._truncate and sim.num_entered == self._num_requests:
            # window cut: requests in flight are left to the critic's bootstrap value; the
            # final observation is the cluster after this placement, seen by this request
            self._req = None
            self._obs, self._mask = self.encoder.encode(sim.view(), self._last_info(r),
                                                        observe=False)
            return self._obs, float(reward), False, True, self._episode_info()
        req = sim.next_arrival()
        reward += tracker.advance(sim.now_s)
        if req is None:
            self._req = None
            reward += tracker.finish(sim.entered_requests())
            return self._obs, float(reward), True, False, self._episode_info()
        self._req = req
        self._obs, self._mask = self.encoder.encode(sim.view(), req)
        return self._obs, float(reward), False, False, {}

    def action_masks(self) -> np.ndarray:
        """Flat bool mask of valid choices per action dimension (sb3-contrib convention)."""
        return self._mask

    # ---- helpers --------------------------------------------------------------------------
    @property
    def pending_request(self):
        """The arrival waiting for a decision (None after the episode ended)."""
        return self._req

    def _last_info(self, r):
        from sim.routing import RequestInfo

        return RequestInfo(r.rid, r.arrival_s, r.num_prompt_tokens,
                           int(self.sim.predicted_output[r.rid]))

    def _episode_info(self) -> dict:
        met, violated, rejected = self.tracker.counts()
        n = met + violated + rejected
        unpaid = self.sim.num_entered - n
        assert self._truncate or unpaid == 0, "a request left the episode without an outcome"
        return {
            "requests": self.sim.num_entered, "met": met, "violated": violated,
            "rejected": rejected, "unpaid": unpaid,
            "slo_attainment": met / n if n else 0.0,
            "rate_scale": self._rate_scale, "rate_per_s": self._rate_per_s,
            "episode_return": self.tracker.total,
        }

    def describe(self) -> dict:
        """JSON-serialisable description for an exported policy's sidecar."""
        return {"observation": self.encoder.layout(), "num_gpus": self.num_gpus,
                "cluster": asdict(self.cfg.cluster), "model": self.cfg.model.name,
                "hardware": self.cfg.hardware.name, "slo": asdict(self.cfg.slo)}
