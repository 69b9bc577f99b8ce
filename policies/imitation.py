"""Warm start: behaviour cloning of a heuristic into an SB3 actor-critic before PPO.

PPO from a random initialisation learns slowly here: a request's reward arrives at its SLO
deadlines, tens to hundreds of decisions later, mixed with every other request's. Starting
from a policy that imitates a good heuristic (and a critic fitted to that policy's returns)
lets PPO spend its budget improving on the heuristic instead of rediscovering load
balancing. The heuristic's decisions are replayed through the environment, so the cloned
policy sees exactly the observations it will act on.

A decision maps to an action as: Lead and Follow as given; the split bin nearest to
``split / predicted_output`` (split 1 -> the one-token bin, colocation -> the "all" bin).
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np

from envs import EnvConfig, RoutingEnv
from policies.heuristics import make_heuristic
from sim.features import COLOCATE
from sim.routing import Decision, RequestInfo

logger = logging.getLogger(__name__)


def decision_to_action(env: RoutingEnv, d: Decision, req: RequestInfo) -> np.ndarray:
    """The environment action closest to a router's decision."""
    if env.encoder.mode == "disaggregated":
        return np.array([d.lead, d.follow])
    bins = np.asarray(env.encoder.cfg.split_bins)
    if d.lead == d.follow or d.split_tokens >= COLOCATE or \
            d.split_tokens >= req.predicted_output_tokens:
        frac = 1.0
    elif d.split_tokens <= 1:
        frac = 0.0
    else:
        frac = d.split_tokens / max(req.predicted_output_tokens, 1)
    return np.array([d.lead, d.follow, int(np.argmin(np.abs(bins - frac)))])


def collect(cfg: EnvConfig, heuristic: str, steps: int, seed: int, gamma: float):
    """Roll the heuristic through the environment; returns (obs, actions, masks, returns).

    Returns are the discounted rewards of the next ``H = ceil(3 / (1 - gamma))`` decisions
    (the part of the return the discount leaves, ~95 %), not the rest of a window: each
    episode runs ``requests_per_episode + H`` arrivals (truncated, as in training) and keeps
    the first ``requests_per_episode`` decisions, so every kept state has its full horizon and
    the critic is not taught that late states are worth a drained lump of outcomes.
    """
    n_keep = int(cfg.episode.requests_per_episode)
    horizon = int(math.ceil(round(3.0 / max(1.0 - gamma, 1e-3), 6)))
    env = RoutingEnv(replace(cfg, episode=replace(
        cfg.episode, end="truncate", requests_per_episode=n_keep + horizon)))
    router = make_heuristic(heuristic, seed=seed)
    obs_l, act_l, mask_l, ret_l = [], [], [], []
    ep = 0
    while len(obs_l) < steps:
        obs, _ = env.reset(seed=seed + ep)
        router.reset()
        ep += 1
        rewards = []
        done = False
        while not done:
            req = env.pending_request
            a = decision_to_action(env, router(env.sim.view(), req), req)
            if len(rewards) < n_keep:
                obs_l.append(obs)
                act_l.append(a)
                mask_l.append(env.action_masks())
            obs, r, term, trunc, _ = env.step(a)
            done = term or trunc
            rewards.append(r)
        disc = gamma ** np.arange(horizon)
        r = np.asarray(rewards)
        ret_l.extend(float(r[i:i + horizon] @ disc[: len(r[i:i + horizon])])
                     for i in range(min(n_keep, len(r))))
    return (np.asarray(obs_l, np.float32), np.asarray(act_l, np.int64),
            np.asarray(mask_l, bool), np.asarray(ret_l, np.float32))


def clone(model, cfg: EnvConfig, heuristic: str, steps: int, seed: int, epochs: int = 8,
          batch_size: int = 256, lr: float = 1e-3) -> dict:
    """Fit ``model``'s actor to the heuristic's actions and its critic to their returns.

    Returns:
        ``{"samples", "accuracy", "value_loss", "value_loss_before"}`` on the collected data
        (value losses are mean squared errors of returns scaled by their largest magnitude).
    """
    import torch as th

    gamma = float(getattr(model, "gamma", 0.99))
    obs, act, masks, rets = collect(cfg, heuristic, steps, seed, gamma)
    policy = model.policy
    ret_scale = float(max(np.abs(rets).max(), 1.0))
    o, a, r = th.as_tensor(obs), th.as_tensor(act), th.as_tensor(rets)
    with th.no_grad():
        v_before = float((((policy.predict_values(o).flatten() - r) / ret_scale) ** 2).mean())
    policy.set_training_mode(True)
    opt = th.optim.Adam(policy.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(o)), max(len(o) // batch_size, 1)):
            values, log_prob, _ = policy.evaluate_actions(o[idx], a[idx])
            v_loss = ((values.flatten() - r[idx]) / ret_scale).pow(2).mean()
            loss = -log_prob.mean() + v_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    policy.set_training_mode(False)
    with th.no_grad():
        pred = []
        for idx in np.array_split(np.arange(len(o)), max(len(o) // 4096, 1)):
            pred.append(policy.get_distribution(o[idx]).get_actions(deterministic=True))
        pred = th.cat(pred).reshape(a.shape)
        acc = float((pred == a).all(dim=1).float().mean())
        v_loss = float((((policy.predict_values(o).flatten() - r) / ret_scale) ** 2).mean())
    logger.info("cloned %s from %d samples: %.1f%% of actions reproduced", heuristic, len(o),
                100 * acc)
    return {"samples": len(o), "accuracy": acc, "value_loss": v_loss,
            "value_loss_before": v_before}
