"""Sim-to-live agreement: ``python -m experiments.sim_vs_live [--quick] [--requests N]``.

One job: run the same moderate-load workload (default: 300 requests, Poisson 6 req/s,
lognormal prompts of mean 512 and outputs of mean 128 tokens) on

- the simulator (:class:`sim.engine.Simulator`, two unified Llama-3.1-8B instances on
  A100-80GB-SXM, prefix caching off like the emulator, the router heuristic), and
- live: two ``runtime.emulator`` processes and ``runtime.router`` with the same heuristic on
  127.0.0.1 free ports, driven by :mod:`runtime.loadgen` (streaming, ``ignore_eos``),

and print mean TTFT, TPOT (output > 1 only, as ``vllm bench serve``) and E2E of both and the
relative difference (live / sim - 1). ``--json PATH`` writes the numbers.

Known systematic differences (live minus sim): HTTP + SSE + router hop on every request and
the client's own asyncio loop (about 1 to 3 ms on TTFT at this load on 2 cores); the emulator
sleeps real time per iteration (timer and event-loop jitter lengthen iterations slightly, so
TPOT is a little higher); the emulator reserves KV for prompt + max_tokens at admission (never
binding at this load), has no prefix caching (turned off in the simulated instances as well);
the live router's load-aware heuristics see metrics scraped every 0.25 s plus their own
in-flight counts, where the simulator's see exact state (``round_robin``, the default here, is
state-free, so both send every request to the same instance).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL, GPU = "Llama-3.1-8B", "A100-80GB-SXM"


def make_workload(num_requests: int, rate_per_s: float, seed: int = 0):
    """The shared workload (Poisson arrivals, lognormal lengths)."""
    from sim.workload import ArrivalConfig, LengthConfig, WorkloadConfig, build_workload

    cfg = WorkloadConfig(
        name="sim_vs_live", num_requests=num_requests,
        arrival=ArrivalConfig(process="poisson", rate_per_s=rate_per_s),
        lengths=LengthConfig(distribution="lognormal", prompt_mean=512.0, prompt_cv=0.6,
                             output_mean=128.0, output_cv=0.5, max_prompt_tokens=2048,
                             max_output_tokens=512))
    return build_workload(cfg, np.random.default_rng(seed))


def run_sim(workload, heuristic: str, num_instances: int) -> dict:
    """Mean TTFT / TPOT / E2E (ms) of the simulated cluster."""
    from policies.heuristics import make_heuristic
    from sim.catalog import get_gpu, get_model
    from sim.engine import ClusterConfig, SimConfig, Simulator
    from sim.instance import InstanceConfig
    from sim.metrics import records

    cluster = ClusterConfig(instances=[InstanceConfig(role="unified", replicas=num_instances,
                                                      enable_prefix_caching=False)])
    sim = Simulator(get_model(MODEL), get_gpu(GPU), cluster, SimConfig(), workload,
                    make_heuristic(heuristic), np.random.default_rng(0))
    sim.run()
    df = records(sim.entered_requests())
    done = df[df.ttft_s.notna()]
    multi = done[done.output_tokens > 1]
    return {"completed": len(done), "ttft_ms": 1e3 * float(done.ttft_s.mean()),
            "tpot_ms": 1e3 * float(multi.tpot_s.mean()),
            "e2e_ms": 1e3 * float(done.e2e_s.mean())}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(url)


def run_live(workload, heuristic: str, num_instances: int) -> dict:
    """Mean TTFT / TPOT / E2E (ms) through router + emulators on loopback (loadgen)."""
    from runtime import loadgen
    from runtime.launch import stop_processes

    procs: list[subprocess.Popen] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        urls = []
        for _ in range(num_instances):
            port = _free_port()
            p = subprocess.Popen([sys.executable, "-m", "runtime.emulator", "--port", str(port),
                                  "--model", MODEL, "--gpu", GPU, "--served-model-name", "m"],
                                 cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            procs.append(p)
            urls.append(f"http://127.0.0.1:{port}")
            _wait(urls[-1] + "/health", p)
        rport = _free_port()
        r = subprocess.Popen([sys.executable, "-m", "runtime.router", "--port", str(rport),
                              "--heuristic", heuristic, "--backends",
                              *[u + "=unified" for u in urls]], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(r)
        base = f"http://127.0.0.1:{rport}"
        _wait(base + "/health", r)
        time.sleep(0.6)  # a couple of scrapes so the router sees every backend healthy
        results, duration = asyncio.run(loadgen.replay(base, workload, model="m"))
    finally:
        stop_processes(procs)
    s = loadgen.summarize(results, duration)
    return {"completed": s["completed"], "failed": s["failed"],
            "ttft_ms": s["ttft_ms"]["mean"], "tpot_ms": s["tpot_ms"]["mean"],
            "e2e_ms": s["e2el_ms"]["mean"]}


def compare(num_requests: int, rate_per_s: float, heuristic: str, num_instances: int = 2,
            seed: int = 0) -> dict:
    """Both runs and the relative differences (live / sim - 1)."""
    workload = make_workload(num_requests, rate_per_s, seed)
    sim = run_sim(workload, heuristic, num_instances)
    live = run_live(workload, heuristic, num_instances)
    rel = {k: live[k] / sim[k] - 1.0 for k in ("ttft_ms", "tpot_ms", "e2e_ms")}
    return {"num_requests": num_requests, "rate_per_s": rate_per_s, "heuristic": heuristic,
            "num_instances": num_instances, "sim": sim, "live": live, "rel_diff": rel}


def main(argv: list[str] | None = None) -> dict:
    """Print the comparison table."""
    p = argparse.ArgumentParser(prog="python -m experiments.sim_vs_live",
                                description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="80 requests (about 20 s)")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--rate", type=float, default=6.0, help="total arrival rate, req/s")
    p.add_argument("--heuristic", default="round_robin")
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    n = 80 if a.quick else a.requests
    out = compare(n, a.rate, a.heuristic, a.instances, a.seed)
    print(f"{n} requests, Poisson {a.rate} req/s, {a.instances} x unified {MODEL} on {GPU}, "
          f"{a.heuristic}; live completed {out['live']['completed']}, failed "
          f"{out['live']['failed']}")
    print(f"{'metric':10s} {'sim':>10s} {'live':>10s} {'live/sim-1':>11s}")
    for k in ("ttft_ms", "tpot_ms", "e2e_ms"):
        print(f"{k:10s} {out['sim'][k]:10.1f} {out['live'][k]:10.1f} "
              f"{100 * out['rel_diff'][k]:+10.1f}%")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
