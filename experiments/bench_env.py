"""Benchmark the routing environment: steps per second on the 8-instance default cluster.

``python -m experiments.bench_env [--steps N]`` steps ``baton/TandemRouting-v0`` (8 unified
Llama-3.1-8B instances on A100, bursty workload, 512-request episodes with random rate) in
one process with three action sources, and, as the peer in the same run, the bare simulator
serving the same number of requests with a built-in router (no observation encoding):

* ``colocate-least-kv``: Lead = Follow = the instance with the least KV usage (read from the
  observation), split "all" -- a cheap deterministic policy;
* ``random-masked``: a uniformly random valid action (many KV hand-overs, the costliest case);
* ``replay-distserve``: the DistServe heuristic's decision replayed as the action.

Reported: steps/s (the issue's target is >= 10,000), microseconds per step, and the ratio of
environment cost to the bare simulator's per-request cost.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from envs import EnvConfig, RoutingEnv
from sim.engine import Simulator
from sim.routers import make_router


def run_env(env: RoutingEnv, policy: str, steps: int, seed: int = 0) -> tuple[float, int]:
    """Step ``env`` for at least ``steps`` steps with one action source; returns (s, steps)."""
    rng = np.random.default_rng(seed)
    n = env.encoder.num_instances
    router = make_router("distserve")
    done_steps, ep = 0, 0
    t0 = time.perf_counter()
    while done_steps < steps:
        obs, _ = env.reset(seed=seed + ep)
        ep += 1
        done = False
        while not done:
            if policy == "colocate-least-kv":
                i = int(np.argmin(obs[3: n * 10: 10]))
                action = (i, i, 4)
            elif policy == "random-masked":
                m = env.action_masks()
                action = (int(rng.choice(np.flatnonzero(m[:n]))),
                          int(rng.choice(np.flatnonzero(m[n:2 * n]))), int(rng.integers(5)))
            else:
                d = router(env.sim.view(), env.pending_request)
                action = (d.lead, d.follow, 0 if d.split_tokens == 1 else 4)
            obs, _, term, trunc, _ = env.step(action)
            done = term or trunc
            done_steps += 1
    return time.perf_counter() - t0, done_steps


def run_bare(cfg: EnvConfig, router: str, requests: int, seed: int = 0) -> tuple[float, int]:
    """The simulator alone serving episodes of the same workload with a built-in router."""
    env = RoutingEnv(cfg)
    served, ep = 0, 0
    t0 = time.perf_counter()
    while served < requests:
        wl, _ = env._sampler.sample(np.random.default_rng(seed + ep))
        ep += 1
        sim = Simulator(cfg.model, cfg.hardware, cfg.cluster, cfg.sim, wl, make_router(router),
                        np.random.default_rng(seed))
        sim.run()
        served += len(wl)
    return time.perf_counter() - t0, served


def main(argv: list[str] | None = None) -> None:
    """Print steps/s per action source next to the bare simulator."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20_000, help="steps per action source")
    args = ap.parse_args(argv)
    cfg = EnvConfig()
    env = RoutingEnv(cfg)
    run_env(env, "colocate-least-kv", 600)  # warm-up
    print(f"{'action source':<20} {'steps/s':>9} {'us/step':>9}   bare simulator (same run)")
    for policy, peer in (("colocate-least-kv", "least_outstanding_tokens"),
                         ("random-masked", "random"), ("replay-distserve", "distserve")):
        wall, steps = run_env(env, policy, args.steps)
        bwall, breq = run_bare(cfg, peer, args.steps)
        us, bus = wall / steps * 1e6, bwall / breq * 1e6
        print(f"{policy:<20} {steps / wall:9.0f} {us:9.1f}   {peer}: {bus:.1f} us/request "
              f"(env / bare = {us / bus:.2f})")


if __name__ == "__main__":
    main()
