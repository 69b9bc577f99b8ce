"""Gymnasium environments over the cluster simulator (one arriving request per step).

Registered ids (``gymnasium.make(id, **EnvConfig fields)``):

* ``baton/TandemRouting-v0`` -- choose Lead, Follow and split bin (DynaServe tandem serving);
* ``baton/DisaggRouting-v0`` -- choose prefill and decode instance, split fixed at 1
  (DistServe-style disaggregation).
"""

from gymnasium.envs.registration import register, registry

from envs.config import EnvConfig
from envs.episodes import EpisodeConfig
from envs.reward import RewardConfig
from envs.routing_env import RoutingEnv

__all__ = ["EnvConfig", "EpisodeConfig", "RewardConfig", "RoutingEnv"]

TANDEM_ID = "baton/TandemRouting-v0"
DISAGG_ID = "baton/DisaggRouting-v0"

if TANDEM_ID not in registry:
    register(id=TANDEM_ID, entry_point="envs.routing_env:RoutingEnv",
             kwargs={"mode": "tandem"})
if DISAGG_ID not in registry:
    register(id=DISAGG_ID, entry_point="envs.routing_env:RoutingEnv",
             kwargs={"mode": "disaggregated"})
