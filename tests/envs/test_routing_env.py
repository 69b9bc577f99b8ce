"""The routing environments: API conformance, masks, reward accounting, determinism."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import envs
from envs import EnvConfig, EpisodeConfig, RewardConfig, RoutingEnv
from sim.engine import ClusterConfig
from sim.instance import InstanceConfig
from sim.metrics import SLO, records, slo_met


def small_cfg(**kw) -> EnvConfig:
    """Four unified instances, short episodes (fast tests)."""
    base = dict(cluster=ClusterConfig(instances=[InstanceConfig(replicas=4)]),
                episode=EpisodeConfig(requests_per_episode=48))
    base.update(kw)
    return EnvConfig(**base)


def rollout(env, policy, seed):
    obs, info = env.reset(seed=seed)
    total, steps, done = 0.0, 0, False
    while not done:
        obs, r, term, trunc, info = env.step(policy(env, obs))
        total += r
        steps += 1
        done = term or trunc
    return total, steps, info


def random_masked(env, obs):
    u = env.unwrapped
    m = u.action_masks()
    out, off = [], 0
    for n in u.action_space.nvec:
        valid = np.flatnonzero(m[off: off + n])
        out.append(int(u.np_random.choice(valid)))
        off += n
    return np.array(out)


def test_registered_ids_make_both_variants():
    t = gym.make(envs.TANDEM_ID, episode=EpisodeConfig(requests_per_episode=8))
    d = gym.make(envs.DISAGG_ID, episode=EpisodeConfig(requests_per_episode=8))
    assert list(t.action_space.nvec) == [8, 8, 5]
    assert list(d.action_space.nvec) == [8, 8]
    assert t.observation_space.shape == (8 * 10 + 6,)


@pytest.mark.parametrize("mode", ["tandem", "disaggregated"])
def test_passes_gymnasium_and_sb3_checkers(mode):
    env = RoutingEnv(small_cfg(mode=mode))
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(RoutingEnv(small_cfg(mode=mode)), warn=True)


def test_observations_stay_in_the_box_and_masks_match_the_action_space():
    env = RoutingEnv(small_cfg())
    obs, _ = env.reset(seed=3)
    done = False
    while not done:
        assert env.observation_space.contains(obs)
        m = env.action_masks()
        assert m.dtype == bool and m.shape == (int(sum(env.action_space.nvec)),)
        obs, _, term, trunc, _ = env.step(random_masked(env, obs))
        done = term or trunc


def test_mask_excludes_instances_that_can_never_hold_the_request():
    cluster = ClusterConfig(instances=[
        InstanceConfig(role="prefill", num_gpu_blocks_override=4096),
        InstanceConfig(role="decode", num_gpu_blocks_override=8),    # 128 tokens
        InstanceConfig(role="decode", num_gpu_blocks_override=4096)])
    env = RoutingEnv(small_cfg(cluster=cluster, mode="disaggregated"))
    enc = env.encoder
    m = enc.mask(prompt_tokens=100, predicted_output_tokens=100)
    assert m.tolist() == [True, False, False, False, False, True]   # lead: prefill only
    m = enc.mask(prompt_tokens=10, predicted_output_tokens=10)
    assert m.tolist() == [True, False, False, False, True, True]
    # nobody can hold it: every instance of the right role stays allowed (sim rejects, counted)
    m = enc.mask(prompt_tokens=10, predicted_output_tokens=10**6)
    assert m.tolist() == [True, False, False, False, True, True]


def test_episode_return_equals_outcome_counts_and_metrics_agree():
    cfg = small_cfg(reward=RewardConfig(met=1.0, violated=-0.25, rejected=-2.0),
                    episode=EpisodeConfig(requests_per_episode=64, rate_scale_min=2.0,
                                          rate_scale_max=4.0, end="drain"))
    env = RoutingEnv(cfg)
    total, steps, info = rollout(env, random_masked, seed=5)
    assert steps == info["requests"] == 64 and info["unpaid"] == 0
    assert info["met"] + info["violated"] + info["rejected"] == 64
    assert total == pytest.approx(info["met"] - 0.25 * info["violated"] - 2.0 * info["rejected"])
    assert total == pytest.approx(info["episode_return"])
    df = records(env.sim.entered_requests())
    assert int(slo_met(df, cfg.slo).sum()) == info["met"]
    assert 0 < info["met"] < 64 and info["violated"] > 0   # the load makes outcomes differ


def test_violations_are_charged_by_their_deadline_not_at_completion():
    """Stalling cannot postpone a penalty past the request's TTFT deadline."""
    slo = SLO(ttft_s=0.05, tpot_s=0.05)
    cfg = small_cfg(slo=slo, episode=EpisodeConfig(requests_per_episode=200, end="drain",
                                                   rate_scale_min=4.0, rate_scale_max=4.0))
    env = RoutingEnv(cfg)
    env.reset(seed=0)
    charged_at, step_times = {}, []
    done = False
    while not done:
        paid_before = set(env.tracker._paid)
        _, _, done, _, _ = env.step((0, 0, 4))        # everything onto instance 0: it overloads
        if not done:
            step_times.append(env.sim.now_s)
            for rid in set(env.tracker._paid) - paid_before:
                charged_at[rid] = env.sim.now_s
    late = [r for r in env.sim.entered_requests()
            if r.first_token_s - r.arrival_s > slo.ttft_s
            and r.arrival_s + slo.ttft_s <= step_times[-1]]
    assert len(late) > 20
    times = np.array(step_times)
    for r in late:
        due = times[np.searchsorted(times, r.arrival_s + slo.ttft_s)]
        assert charged_at[r.rid] == due             # the first step after its deadline
    assert sum(charged_at[r.rid] < r.finish_s for r in late) > 20   # long before completion


def test_truncated_episodes_end_after_the_last_placement_and_count_unpaid():
    env = RoutingEnv(small_cfg(episode=EpisodeConfig(requests_per_episode=48,
                                                     rate_scale_min=4.0, rate_scale_max=4.0)))
    obs, _ = env.reset(seed=2)
    steps, done = 0, False
    while not done:
        obs, r, term, trunc, info = env.step(random_masked(env, obs))
        steps += 1
        done = term or trunc
        assert not term
    assert trunc and steps == 48 and env.observation_space.contains(obs)
    assert info["unpaid"] > 0 and info["met"] + info["violated"] + info["rejected"] \
        + info["unpaid"] == 48
    assert info["episode_return"] == pytest.approx(
        info["met"] - 0.5 * info["violated"] - info["rejected"])
    # the simulator stopped at the last arrival: nothing ran past the window
    assert env.sim.now_s == env.sim.entered_requests()[-1].arrival_s


def test_rejection_is_paid_in_the_step_that_routes_it():
    cluster = ClusterConfig(instances=[InstanceConfig(num_gpu_blocks_override=4),
                                       InstanceConfig(num_gpu_blocks_override=4096)])
    env = RoutingEnv(small_cfg(cluster=cluster))
    env.reset(seed=1)
    _, r, _, _, _ = env.step((0, 0, 4))   # 64 tokens of KV: the lognormal prompt cannot fit
    assert r <= env.cfg.reward.rejected


def test_same_seed_same_episode_and_different_seed_differs():
    def trace(seed):
        env = RoutingEnv(small_cfg())
        obs, _ = env.reset(seed=seed)
        out, done = [obs], False
        while not done:
            obs, r, term, trunc, _ = env.step(random_masked(env, obs))
            out += [obs, np.float32(r)]
            done = term or trunc
        return np.concatenate([np.atleast_1d(x) for x in out])

    np.testing.assert_array_equal(trace(7), trace(7))
    assert not np.array_equal(trace(7), trace(8))


def test_vector_envs_dummy_and_subprocess():
    fns = [lambda: RoutingEnv(small_cfg()) for _ in range(2)]
    for vec_cls in (DummyVecEnv, SubprocVecEnv):
        vec = vec_cls(fns)
        vec.seed(0)
        obs = vec.reset()
        assert obs.shape == (2, 46)
        for _ in range(60):
            obs, rew, done, infos = vec.step(np.array([[0, 1, 2], [1, 0, 0]]))
        assert np.isfinite(rew).all()
        masks = vec.env_method("action_masks")
        assert len(masks) == 2 and masks[0].shape == (13,)
        vec.close()


def test_vector_env_reports_truncation_for_bootstrapping():
    """SB3 bootstraps a cut episode from info["terminal_observation"] when TimeLimit.truncated."""
    vec = DummyVecEnv([lambda: RoutingEnv(small_cfg())])
    vec.seed(3)
    vec.reset()
    for step in range(48):
        _, _, done, infos = vec.step(np.array([[step % 4, step % 4, 4]]))
        assert done[0] == (step == 47)
    assert infos[0]["TimeLimit.truncated"] is True
    assert vec.observation_space.contains(infos[0]["terminal_observation"])


def test_final_observation_does_not_count_the_last_request_twice():
    env = RoutingEnv(small_cfg(episode=EpisodeConfig(requests_per_episode=16)))
    obs, _ = env.reset(seed=4)
    prev = None
    done = False
    while not done:
        prev = obs
        obs, _, term, trunc, _ = env.step((0, 0, 4))
        done = term or trunc
    # same request shown again: its features, the rate estimate and the gap are unchanged
    np.testing.assert_array_equal(obs[-6:], prev[-6:])


def test_bad_options_fail_clearly():
    with pytest.raises(TypeError, match="unknown RoutingEnv option"):
        RoutingEnv(small_cfg(), episodes=3)
    with pytest.raises(ValueError, match="env.mode"):
        EnvConfig(mode="colocated")
    with pytest.raises(ValueError, match="met > violated > rejected"):
        RewardConfig(met=1.0, violated=-2.0, rejected=-1.0)
    with pytest.raises(ValueError, match="rate_scale_min"):
        EpisodeConfig(rate_scale_min=2.0, rate_scale_max=1.0)
    env = RoutingEnv(small_cfg())
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside"):
        env.step((9, 0, 0))
