"""Router overhead: decision time in process, and added latency over loopback.

``python -m experiments.bench_router [--n 2000] [--requests 300]`` prints

- decision time (build the ClusterView + encode + ONNX act + decode) p50/p99 over ``--n``
  decisions for an 8-instance tandem policy (a random linear ONNX graph of the exporter's
  format) and for the ``dynaserve`` heuristic;
- added latency: one emulator and one router on 127.0.0.1; ``--requests`` sequential
  non-streaming requests (``max_tokens`` 1) sent directly and through the router, alternating;
  p50/p99 of each and the difference of the medians. Closed loop, one request at a time (no
  fixed arrival rate).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _pct(xs: list[float]) -> str:
    a = np.asarray(xs) * 1e6
    return f"p50 {np.percentile(a, 50):8.1f} us  p99 {np.percentile(a, 99):8.1f} us"


def bench_decisions(n: int) -> None:
    """Decision time of a policy and a heuristic (in process)."""
    sys.path.insert(0, str(REPO))
    from runtime.backends import Scrape, build_view
    from runtime.router import Router, build_parser
    from sim.routing import RequestInfo
    from tests.runtime.conftest import make_layout, write_linear_policy

    rng = np.random.default_rng(0)
    layout = make_layout(["unified"] * 8)
    w = rng.normal(size=(layout["obs_dim"], sum(layout["nvec"]))).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        path = write_linear_policy(Path(d) / "p", layout, w)
        backends = [f"http://127.0.0.1:{9000 + i}" for i in range(8)]
        for label, extra in (("onnx policy", ["--policy", str(path)]),
                             ("heuristic dynaserve", ["--heuristic", "dynaserve"])):
            router = Router(build_parser().parse_args(["--backends", *backends, *extra]))
            for b in router.backends:
                b.scrape = Scrape(int(rng.integers(0, 40)), int(rng.integers(0, 20)), 0.3)
            times = []
            healthy = [True] * 8
            for k in range(n):
                t = time.perf_counter()
                view = build_view(router.backends, 0.01 * k, router.block_size)
                router.decider(view, RequestInfo(k, 0.01 * k, 500, 200), healthy)
                times.append(time.perf_counter() - t)
            print(f"decision ({label:20s}): {_pct(times[n // 10:])}")


def _post(url: str, body: dict) -> float:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        r.read()
    return time.perf_counter() - t


def bench_added_latency(n: int, emu_port: int, router_port: int) -> None:
    """Direct vs through-the-router latency of tiny requests."""
    procs = [subprocess.Popen([sys.executable, "-m", "runtime.emulator", "--port",
                               str(emu_port), "--served-model-name", "m"], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    procs.append(subprocess.Popen([sys.executable, "-m", "runtime.router", "--port",
                                   str(router_port), "--backends",
                                   f"http://127.0.0.1:{emu_port}"], cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        for port in (emu_port, router_port):
            for _ in range(200):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read()
                    break
                except OSError:
                    time.sleep(0.1)
        body = {"model": "m", "prompt": "a b c d e f g h", "max_tokens": 1}
        direct, routed = [], []
        for k in range(n + 20):
            d = _post(f"http://127.0.0.1:{emu_port}/v1/completions", body)
            r = _post(f"http://127.0.0.1:{router_port}/v1/completions", body)
            if k >= 20:
                direct.append(d)
                routed.append(r)
        print(f"direct         : {_pct(direct)}")
        print(f"through router : {_pct(routed)}")
        print(f"added (median) : {(np.median(routed) - np.median(direct)) * 1e6:8.1f} us")
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


def main() -> None:
    """Print decision time and added latency."""
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--emulator-port", type=int, default=18950)
    p.add_argument("--router-port", type=int, default=18951)
    a = p.parse_args()
    bench_decisions(a.n)
    bench_added_latency(a.requests, a.emulator_port, a.router_port)


if __name__ == "__main__":
    main()
