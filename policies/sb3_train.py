"""Train PPO / MaskablePPO routing policies with stable-baselines3 (the glue ``train.py`` calls).

Outputs in the run directory::

    tb/                      TensorBoard logs (SB3's rollout/train scalars + eval/*)
    checkpoints/*.zip        periodic checkpoints (SB3 format; resume from any of them)
    best/best_model.zip      best checkpoint by mean evaluation return (EvalCallback)
    final_model.zip          the model when training stopped
    policy.onnx, policy.json exported deterministic actor + sidecar (no pickle, no torch)
"""

from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from envs import EnvConfig, RoutingEnv

logger = logging.getLogger(__name__)
ALGOS = ("PPO", "MaskablePPO")
POLICY_KINDS = ("sb3", "heuristic")


@dataclass
class PolicyConfig:
    """A policy: an SB3 algorithm with its keyword arguments, or a heuristic by name."""

    name: str = "ppo"
    """Label in reports (``ppo``, ``maskable_ppo``, or a heuristic's name)."""
    kind: str = "sb3"
    """sb3 (train it) or heuristic (evaluate only)."""
    algo: str = "PPO"
    """PPO (stable-baselines3) or MaskablePPO (sb3-contrib, uses the env's action masks)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Plain keyword arguments of the algorithm's constructor (``learning_rate``, ...)."""

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"policy.kind {self.kind!r} is not one of {', '.join(POLICY_KINDS)}")
        if self.kind == "heuristic":
            from policies.heuristics import HEURISTICS

            if self.name not in HEURISTICS:
                raise ValueError(f"policy.name {self.name!r} is not a heuristic; choose one of "
                                 f"{', '.join(HEURISTICS)}")
            return
        if self.algo not in ALGOS:
            raise ValueError(f"policy.algo {self.algo!r} is not one of {', '.join(ALGOS)}")
        params = set(inspect.signature(algo_class(self.algo).__init__).parameters) - {
            "self", "env", "policy", "tensorboard_log", "seed", "device", "verbose",
            "_init_setup_model"}
        unknown = sorted(set(self.kwargs) - params)
        if unknown:
            raise ValueError(f"policy.kwargs {unknown} are not {self.algo} arguments; valid: "
                             f"{', '.join(sorted(params))}")


@dataclass
class TrainConfig:
    """Training run options (group ``train``)."""

    total_timesteps: int = 200_000
    """Environment steps (routed requests) to train for, summed over environments."""
    n_envs: int = 4
    """Parallel environments."""
    vec_env: str = "dummy"
    """subproc (one process per environment) or dummy (all in this process)."""
    seed: int = 0
    """Seeds the policy's initialisation and every training episode."""
    eval_every_steps: int = 20_000
    """Evaluate (and keep the best checkpoint) every this many steps; 0 = never."""
    eval_episodes: int = 8
    """Episodes per periodic evaluation."""
    checkpoint_every_steps: int = 50_000
    """Save a checkpoint every this many steps; 0 = never."""
    resume_from: str = ""
    """A checkpoint .zip, or a previous run directory (its newest checkpoint), to continue."""
    warm_start: str = ""
    """Heuristic to behaviour-clone before PPO (``policies.imitation``); empty = none."""
    warm_start_steps: int = 20_000
    """Decisions of the heuristic collected for the warm start."""
    torch_threads: int = 1
    """Torch intra-op threads per process (the environments use the other cores)."""
    progress_bar: bool = True
    """Show a progress bar (tqdm/rich) while training."""

    def __post_init__(self) -> None:
        for name in ("total_timesteps", "n_envs", "eval_episodes", "torch_threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"train.{name} = {v!r} must be an integer >= 1")
        for name in ("eval_every_steps", "checkpoint_every_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"train.{name} = {v!r} must be an integer >= 0")
        if self.warm_start:
            from policies.heuristics import HEURISTICS

            if isinstance(self.warm_start_steps, bool) or not isinstance(
                    self.warm_start_steps, int) or self.warm_start_steps < 1:
                raise ValueError(f"train.warm_start_steps = {self.warm_start_steps!r} must be an "
                                 "integer >= 1 when train.warm_start is set")

            if self.warm_start not in HEURISTICS:
                raise ValueError(f"train.warm_start {self.warm_start!r} is not a heuristic; "
                                 f"choose one of {', '.join(HEURISTICS)} or leave it empty")
        if self.vec_env not in ("subproc", "dummy"):
            raise ValueError(f"train.vec_env {self.vec_env!r} must be subproc or dummy")


def algo_class(name: str):
    """The SB3 algorithm class for ``PPO`` or ``MaskablePPO``."""
    if name == "MaskablePPO":
        from sb3_contrib import MaskablePPO

        return MaskablePPO
    from stable_baselines3 import PPO

    return PPO


def _make_env(cfg: EnvConfig, seed: int):
    def thunk():
        from stable_baselines3.common.monitor import Monitor

        env = Monitor(RoutingEnv(cfg))
        env.reset(seed=seed)
        return env

    return thunk


def make_vec_env(cfg: EnvConfig, n_envs: int, seed: int, kind: str = "dummy"):
    """``n_envs`` monitored environments seeded ``seed, seed + 1, ...``."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    fns = [_make_env(cfg, seed + i) for i in range(n_envs)]
    if kind == "subproc" and n_envs > 1:
        vec = SubprocVecEnv(fns, start_method="spawn")
    else:
        vec = DummyVecEnv(fns)
    vec.seed(seed)
    return vec


def _same_episodes(eval_cls):
    """``eval_cls`` (SB3's EvalCallback or sb3-contrib's) reseeding its env before each run.

    A VecEnv uses its seed only at the next reset, so without this every periodic evaluation
    would draw new workload windows and rates, and the best checkpoint would partly be the
    luckiest draw. With it every candidate is scored on the same episodes.
    """

    class SameEpisodes(eval_cls):
        def __init__(self, eval_env, seed: int, **kwargs) -> None:
            super().__init__(eval_env, **kwargs)
            self._eval_seed = seed

        def _on_step(self) -> bool:
            if self.eval_freq > 0 and self.n_calls % self.eval_freq == 0:
                self.eval_env.seed(self._eval_seed)
            return super()._on_step()

    return SameEpisodes


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint zip, or the newest one of a run directory (``checkpoints/`` or final)."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"train.resume_from={path}: no such checkpoint or run directory")
    steps = [(int(m.group(1)), c) for c in (p / "checkpoints").glob("*_steps.zip")
             if (m := re.search(r"_(\d+)_steps\.zip$", c.name))]
    final = p / "final_model.zip"
    newest = max(steps)[1] if steps else None
    if final.is_file() and (newest is None or final.stat().st_mtime >= newest.stat().st_mtime):
        return final  # saved when training stopped, after the last periodic checkpoint
    if newest is not None:
        return newest
    raise FileNotFoundError(f"train.resume_from={path}: no checkpoints/*_steps.zip or "
                            "final_model.zip in it")


def train_policy(env_cfg: EnvConfig, policy: PolicyConfig, cfg: TrainConfig, out: Path):
    """Train (or resume) and save.

    Returns:
        The model of the best periodic evaluation if any (else the final one), with an extra
        attributes ``trained_steps`` (steps trained in total) and ``warm_start`` (the
        behaviour-cloning statistics, or None).
    """
    import torch
    from stable_baselines3.common.callbacks import CheckpointCallback

    torch.set_num_threads(cfg.torch_threads)
    out.mkdir(parents=True, exist_ok=True)
    algo = algo_class(policy.algo)
    vec = make_vec_env(env_cfg, cfg.n_envs, cfg.seed, cfg.vec_env)
    if cfg.resume_from:
        ckpt = find_checkpoint(cfg.resume_from)
        logger.info("resuming from %s", ckpt)
        model = algo.load(ckpt, env=vec, device="cpu", tensorboard_log=str(out / "tb"))
        reset_steps = False
    else:
        model = algo("MlpPolicy", vec, seed=cfg.seed, device="cpu", verbose=0,
                     tensorboard_log=str(out / "tb"), **policy.kwargs)
        reset_steps = True
        if cfg.warm_start:
            from policies.imitation import clone

            model.warm_start = clone(model, env_cfg, cfg.warm_start, cfg.warm_start_steps,
                                     seed=cfg.seed + 20_000)
    callbacks = []
    if cfg.checkpoint_every_steps:
        callbacks.append(CheckpointCallback(
            save_freq=max(cfg.checkpoint_every_steps // cfg.n_envs, 1),
            save_path=str(out / "checkpoints"), name_prefix=policy.name))
    if cfg.eval_every_steps:
        # model selection on drained episodes (every outcome paid), on seeds of their own
        eval_cfg = replace(env_cfg, episode=replace(env_cfg.episode, end="drain"))
        eval_env = make_vec_env(eval_cfg, 1, cfg.seed + 10_000, "dummy")
        if policy.algo == "MaskablePPO":
            from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback as Eval
            from sb3_contrib.common.maskable.evaluation import evaluate_policy
        else:
            from stable_baselines3.common.callbacks import EvalCallback as Eval
            from stable_baselines3.common.evaluation import evaluate_policy
        eval_seed = cfg.seed + 10_000
        ev = _same_episodes(Eval)(eval_env, eval_seed, n_eval_episodes=cfg.eval_episodes,
                                  eval_freq=max(cfg.eval_every_steps // cfg.n_envs, 1),
                                  best_model_save_path=str(out / "best"), deterministic=True,
                                  verbose=0)
        if reset_steps and cfg.warm_start:
            # the cloned policy is a candidate too: PPO must beat it to replace it
            eval_env.seed(eval_seed)
            mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=cfg.eval_episodes,
                                      deterministic=True)
            ev.best_mean_reward = float(mean)
            (out / "best").mkdir(parents=True, exist_ok=True)
            model.save(out / "best" / "best_model.zip")
            logger.info("warm-started policy: mean evaluation return %.1f", mean)
        callbacks.append(ev)
    remaining = cfg.total_timesteps - (0 if reset_steps else model.num_timesteps)
    if remaining > 0:
        model.learn(total_timesteps=remaining, callback=callbacks, tb_log_name=policy.name,
                    reset_num_timesteps=reset_steps, progress_bar=cfg.progress_bar)
    model.save(out / "final_model.zip")
    vec.close()
    trained_steps = int(model.num_timesteps)
    warm = getattr(model, "warm_start", None)
    best = out / "best" / "best_model.zip"
    if best.is_file():
        model = algo.load(best, device="cpu")
        logger.info("using the best evaluated checkpoint (%d of %d steps)", model.num_timesteps,
                    trained_steps)
    model.trained_steps = trained_steps
    model.warm_start = warm
    return model


def export(model, env_cfg: EnvConfig, out: Path, extra: dict | None = None) -> Path:
    """Export ``model`` to ``out/policy.onnx`` + ``policy.json`` with the env's layout."""
    from policies.export import export_policy

    env = RoutingEnv(env_cfg)
    sidecar = {"baton": {**env.describe(), **(extra or {})}}
    return export_policy(model, out / "policy.onnx", sidecar=sidecar)


def check_parity(model, onnx_path: Path, env_cfg: EnvConfig, n: int = 1000,
                 seed: int = 0) -> float:
    """Share of ``n`` observations (from a random-policy rollout) where ONNX == SB3 actions."""
    from policies.learned import sb3_act
    from policies.onnx_policy import OnnxPolicy

    env = RoutingEnv(env_cfg)
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    onnx = OnnxPolicy.load(onnx_path)
    act = sb3_act(model)
    same = 0
    for i in range(n):
        mask = env.action_masks()
        a_sb3 = np.asarray(act(obs, mask))
        same += bool(np.array_equal(onnx.act(obs, mask), a_sb3))
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        done = term or trunc
        if done:
            obs, _ = env.reset(seed=seed + i + 1)
    return same / n
