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


def test_collected_returns_are_discounted_rewards_over_the_horizon():
    gamma, n, horizon = 0.9, 64, 30   # horizon = ceil(3 / (1 - 0.9))
    obs, act, masks, rets = collect(cfg(), "round_robin", n, seed=0, gamma=gamma)
    assert obs.shape == (n, 36) and act.shape == (n, 3) and masks.shape == (n, 3 + 3 + 5)
    assert (act[:, 0] == np.arange(n) % 3).all() and (act[:, 2] == 4).all()
    # replay the same episode (n + horizon arrivals, truncated) and discount by hand
    c = cfg()
    env = RoutingEnv(replace(c, episode=replace(c.episode, requests_per_episode=n + horizon)))
    env.reset(seed=0)
    rewards, done, k = [], False, 0
    while not done:
        _, r, term, trunc, _ = env.step((k % 3, k % 3, 4))
        rewards.append(r)
        k += 1
        done = term or trunc
    assert len(rewards) == n + horizon
    expect = [sum(gamma ** j * rewards[i + j] for j in range(horizon)) for i in range(n)]
    np.testing.assert_allclose(rets, expect, rtol=1e-5, atol=1e-4)
    assert np.abs(rets).max() > 0


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
    assert stats["samples"] == 512 and stats["accuracy"] > 0.3   # Lead == Follow and bin
    assert stats["value_loss"] < 0.75 * stats["value_loss_before"]
