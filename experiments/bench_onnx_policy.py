"""Benchmark one routing decision: the exported ONNX policy against SB3's ``predict``.

``python -m experiments.bench_onnx_policy [--obs-dim 52] [--nvec 8,8,5] [--n 2000]`` builds a
MaskablePPO (default MlpPolicy, untrained: latency does not depend on the weights) on a
synthetic env of that shape, exports it with :func:`policies.export.export_policy`, and times
on the same observations and masks, one decision at a time (batch 1):

* ``OnnxPolicy.act(obs, mask)`` -- what the router calls (input checks included);
* its bare ``InferenceSession.run`` -- the floor under the checks;
* ``MaskablePPO.predict(obs, deterministic=True, action_masks=mask)``;

in microseconds per decision, with the ratio SB3 / ONNX, and the same at batch 256 in
decisions per second. Both sides use ``--threads`` threads (default 1). Best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib import MaskablePPO

from policies.export import export_policy, random_masks
from policies.onnx_policy import MASK_INPUT, OBS_INPUT, OnnxPolicy


class ShapeOnlyEnv(gym.Env):
    """Spaces of the requested shape; never stepped (the benchmark only needs the spaces)."""

    def __init__(self, obs_dim: int, nvec: list[int]) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = spaces.MultiDiscrete(nvec)

    def reset(self, *, seed=None, options=None):
        """Zero observation."""
        super().reset(seed=seed)
        return np.zeros(self.observation_space.shape, np.float32), {}

    def step(self, action):
        """Zero observation, zero reward, episode over."""
        return np.zeros(self.observation_space.shape, np.float32), 0.0, True, False, {}


def best_us_per_call(fn: Callable[[int], object], n: int, repeats: int) -> float:
    """Best over ``repeats`` passes of the mean microseconds of ``fn(i)`` for i < n."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def run(obs_dim: int, nvec: list[int], n: int, repeats: int, threads: int) -> dict[str, float]:
    """Time both paths; returns microseconds per decision and decisions per second."""
    th.set_num_threads(threads)
    model = MaskablePPO("MlpPolicy", ShapeOnlyEnv(obs_dim, nvec), seed=0, device="cpu")
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    masks = random_masks(rng, nvec, n)
    with tempfile.TemporaryDirectory() as d:
        path = export_policy(model, Path(d) / "policy", sidecar={})
        policy = OnnxPolicy.load(path, intra_op_num_threads=threads)
    sess, out = policy.session, ["action"]

    got = policy.act(obs, masks)
    ref, _ = model.predict(obs, deterministic=True, action_masks=masks)
    agree = float((got == ref).all(axis=1).mean())

    res = {
        "onnx_act_us": best_us_per_call(lambda i: policy.act(obs[i], masks[i]), n, repeats),
        "onnx_run_us": best_us_per_call(
            lambda i: sess.run(out, {OBS_INPUT: obs[i : i + 1], MASK_INPUT: masks[i : i + 1]}),
            n,
            repeats,
        ),
        "sb3_predict_us": best_us_per_call(
            lambda i: model.predict(obs[i], deterministic=True, action_masks=masks[i]),
            n,
            repeats,
        ),
        "agreement": agree,
    }
    b = min(256, n)
    k = max(1, n // b)
    res["onnx_batch_per_s"] = (
        b
        * 1e6
        / best_us_per_call(
            lambda i: policy.act(obs[i * b : (i + 1) * b], masks[i * b : (i + 1) * b]), k, repeats
        )
    )
    res["sb3_batch_per_s"] = (
        b
        * 1e6
        / best_us_per_call(
            lambda i: model.predict(
                obs[i * b : (i + 1) * b],
                deterministic=True,
                action_masks=masks[i * b : (i + 1) * b],
            ),
            k,
            repeats,
        )
    )
    res["batch"] = b
    return res


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse options, run the benchmark, print the table; returns the numbers."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--obs-dim", type=int, default=52, help="observation size D (8 x 6 + 4)")
    ap.add_argument("--nvec", default="8,8,5", help="MultiDiscrete sizes, comma-separated")
    ap.add_argument("--n", type=int, default=2000, help="decisions per timed pass")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes (best is kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    a = ap.parse_args(argv)
    nvec = [int(x) for x in a.nvec.split(",")]
    r = run(a.obs_dim, nvec, a.n, a.repeats, a.threads)
    print(f"policy: MaskablePPO MlpPolicy, obs_dim={a.obs_dim}, nvec={nvec}, threads={a.threads}")
    print(f"actions agree with SB3 on {r['agreement']:.1%} of {a.n} masked observations")
    print("batch 1 (one decision)             us/decision")
    print(f"  OnnxPolicy.act (with checks)     {r['onnx_act_us']:10.1f}")
    print(f"  onnxruntime session.run alone    {r['onnx_run_us']:10.1f}")
    print(f"  SB3 MaskablePPO.predict          {r['sb3_predict_us']:10.1f}")
    print(f"  ratio SB3 / OnnxPolicy.act       {r['sb3_predict_us'] / r['onnx_act_us']:10.1f}x")
    print(f"batch {r['batch']}                         decisions/s")
    print(f"  OnnxPolicy.act                   {r['onnx_batch_per_s']:10.0f}")
    print(f"  SB3 MaskablePPO.predict          {r['sb3_batch_per_s']:10.0f}")
    return r


if __name__ == "__main__":
    main()
