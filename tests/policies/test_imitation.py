"""Warm start: heuristic decisions map to actions and the cloned actor imitates them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from envs import EnvConfig, EpisodeConfig, RoutingEnv
from policies.imitation import clone, collect, decision_to_action
from sim.engine import ClusterConfig
from sim.features import COLOCATE
from sim.instance import InstanceConfig
from sim.routing import Decision, RequestInfo


def cfg(mode="tandem"):
    return EnvConfig(mode=mode, cluster=ClusterConfig(instances=[InstanceConfig(replicas=3)]),
                     episode=EpisodeConfig(requests_per_episode=64))


def test_decisions_map_to_the_nearest_split_bin():
    env = RoutingEnv(cfg())
    r = RequestInfo(0, 0.0, 100, 400)
    assert decision_to_action(env, Decision(0, 1, 1), r).tolist() == [0, 1, 0]
    assert decision_to_action(env, Decision(0, 1, 190), r).tolist() == [0, 1, 2]
    assert decision_to_action(env, Decision(2, 2, COLOCATE), r).tolist() == [2, 2, 4]
    assert decision_to_action(env, Decision(0, 1, 4000), r).tolist() == [0, 1, 4]
    d = RoutingEnv(cfg("disaggregated"))
    assert decision_to_action(d, Decision(1, 2, 1), r).tolist() == [1, 2]


def test_collected_returns_are_discounted_episode_rewards():
    obs, act, masks, rets = collect(cfg(), "round_robin", 64, seed=0, gamma=1.0)
    assert obs.shape == (64, 36) and act.shape == (64, 3) and masks.shape == (64, 3 + 3 + 5)
    assert (act[:, 0] == np.arange(64) % 3).all() and (act[:, 2] == 4).all()
    c = cfg()
    env = RoutingEnv(replace(c, episode=replace(c.episode, end="drain")))
    env.reset(seed=0)
    rewards, done = [], False
    while not done:
        _, r, done, _, info = env.step(act[len(rewards)])
        rewards.append(r)
    # undiscounted returns-to-go of the same episode
    np.testing.assert_allclose(rets, np.cumsum(rewards[::-1])[::-1], rtol=1e-6, atol=1e-4)
    assert rets[0] == np.float32(info["episode_return"])


def test_cloning_makes_the_actor_reproduce_a_deterministic_heuristic():
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    torch.manual_seed(0)
    model = PPO("MlpPolicy", DummyVecEnv([lambda: RoutingEnv(cfg())]), n_steps=64, seed=0,
                device="cpu")
    stats = clone(model, cfg(), "round_robin", 512, seed=1, epochs=30)
    # round robin's choice depends only on the arrival count, which the observation lacks,
    # but colocation (Lead == Follow, bin "all") is learnable exactly
    obs, act, _, _ = collect(cfg(), "round_robin", 128, seed=9, gamma=0.99)
    pred, _ = model.predict(obs, deterministic=True)
    assert (pred[:, 2] == 4).mean() > 0.95
    assert stats["samples"] == 512 and 0.0 <= stats["accuracy"] <= 1.0
