"""Router overhead: decision time in process, and added latency over loopback.

``python -m experiments.bench_router [--n 2000] [--requests 300]`` prints

- decision time p50/p99 over ``--n`` decisions: what ``Router._decide`` times
  (``RequestInfo`` + :meth:`runtime.router.Router.decide`: backend health, the view's lists
  from the scraped state, encode, ONNX act, decode) for an 8-instance tandem policy (a random
  linear ONNX graph of the exporter's format), and the same with a ClusterView for the
  ``dynaserve`` heuristic;
- added latency: one emulator and one router on 127.0.0.1; ``--requests`` sequential
  non-streaming requests (``max_tokens`` 1) sent directly and through the router, alternating;
  p50/p99 of each and the difference of the medians. Closed loop, one request at a time;
- added latency at fixed arrival rates (``--rates``, default 50 200 500 req/s): open-loop
  Poisson arrivals for ``--seconds`` per run of streaming requests (8-word prompt,
  ``max_tokens`` 2, :mod:`runtime.loadgen`), straight to the emulator and through the router
  (same schedule; ``--rate-runs`` repeats, alternating which goes first, and prints median and
  range); E2E p50/p99 of each and their differences; the router process's
  CPU seconds per 1,000 requests (``/proc/<pid>/stat`` utime + stime over the routed run) and
  its mean decision time from ``baton_router_decision_seconds`` (sum / count).

Everything (load generator, router, emulator) shares this machine's cores, so the numbers
at high rates include CPU contention between them.
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


def bench_decisions(n: int, repeats: int = 1) -> None:
    """Decision time of a policy and a heuristic (in process), ``repeats`` runs each."""
    sys.path.insert(0, str(REPO))
    from runtime.backends import Scrape
    from runtime.router import Router, build_parser
    from runtime.testing import make_layout, write_linear_policy
    from sim.routing import RequestInfo

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
                b.scrape_ok = True
            p50s, p99s = [], []
            for _ in range(repeats):
                times = []
                now = time.monotonic()
                for k in range(n):
                    t = time.perf_counter()
                    # what Router._decide times: the arrival's RequestInfo, then Router.decide
                    router.decide(RequestInfo(k, 0.01 * k, 500, 200), now)
                    times.append(time.perf_counter() - t)
                a = np.asarray(times[n // 10:]) * 1e6
                p50s.append(np.percentile(a, 50))
                p99s.append(np.percentile(a, 99))
                print(f"decision ({label:20s}): {_pct(times[n // 10:])}")
            if repeats > 1:
                print(f"decision ({label:20s}): {repeats} runs, p50 {min(p50s):.1f}-"
                      f"{max(p50s):.1f} us, p99 {min(p99s):.1f}-{max(p99s):.1f} us")


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


def _cpu_s(pid: int) -> float:
    """CPU time (utime + stime) of a process, seconds (``/proc/<pid>/stat``)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _decision_mean_us(router_url: str) -> tuple[float, float]:
    """Sum and count of ``baton_router_decision_seconds``."""
    text = urllib.request.urlopen(router_url + "/metrics").read().decode()
    vals = {}
    for line in text.splitlines():
        for key in ("baton_router_decision_seconds_sum", "baton_router_decision_seconds_count"):
            if line.startswith(key + " "):
                vals[key] = float(line.split()[1])
    return vals["baton_router_decision_seconds_sum"], vals["baton_router_decision_seconds_count"]


def bench_rates(rates: list[float], seconds: float, emu_port: int, router_port: int,
                router_args: list[str], runs: int = 1) -> list[dict]:
    """Open-loop added latency, router CPU and decision time per arrival rate.

    ``runs`` > 1 repeats every rate (a fresh schedule each time; odd runs send through the
    router first, so drifting host load does not favour one side) and prints the median
    and range of the differences per rate.
    """
    import asyncio

    sys.path.insert(0, str(REPO))
    from runtime import loadgen
    from sim.workload import Workload

    procs = [subprocess.Popen([sys.executable, "-m", "runtime.emulator", "--port",
                               str(emu_port), "--served-model-name", "m"], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    procs.append(subprocess.Popen([sys.executable, "-m", "runtime.router", "--port",
                                   str(router_port), "--max-inflight", "100000",
                                   "--backends", f"http://127.0.0.1:{emu_port}",
                                   *router_args], cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    direct_url, router_url = f"http://127.0.0.1:{emu_port}", f"http://127.0.0.1:{router_port}"
    rows = []
    try:
        for url in (direct_url, router_url):
            for _ in range(200):
                try:
                    urllib.request.urlopen(url + "/health").read()
                    break
                except OSError:
                    time.sleep(0.1)
        rng = np.random.default_rng(0)
        warm = Workload(np.arange(50) * 0.01, [8] * 50, [2] * 50)
        for url in (direct_url, router_url):
            asyncio.run(loadgen.replay(url, warm, model="m"))
        for run, rate in ((k, rate) for k in range(runs) for rate in rates):
            n = int(rate * seconds)
            w = Workload(np.cumsum(rng.exponential(1.0 / rate, n)), [8] * n, [2] * n)
            if run % 2 == 0:
                direct, _ = asyncio.run(loadgen.replay(direct_url, w, model="m"))
            s0, c0 = _decision_mean_us(router_url)
            cpu0 = _cpu_s(procs[1].pid)
            routed, dur = asyncio.run(loadgen.replay(router_url, w, model="m"))
            cpu1 = _cpu_s(procs[1].pid)
            s1, c1 = _decision_mean_us(router_url)
            if run % 2 == 1:
                direct, _ = asyncio.run(loadgen.replay(direct_url, w, model="m"))
            d = np.array([r.latency_s for r in direct if r.success]) * 1e3
            r = np.array([x.latency_s for x in routed if x.success]) * 1e3
            row = {"run": run, "rate": rate, "n": n, "achieved_rate": n / dur,
                   "failed_direct": n - len(d), "failed_routed": n - len(r),
                   "direct_p50_ms": float(np.percentile(d, 50)),
                   "direct_p99_ms": float(np.percentile(d, 99)),
                   "routed_p50_ms": float(np.percentile(r, 50)),
                   "routed_p99_ms": float(np.percentile(r, 99)),
                   "cpu_s_per_1k": (cpu1 - cpu0) / n * 1000.0,
                   "decision_mean_us": (s1 - s0) / max(c1 - c0, 1) * 1e6}
            row["added_p50_ms"] = row["routed_p50_ms"] - row["direct_p50_ms"]
            row["added_p99_ms"] = row["routed_p99_ms"] - row["direct_p99_ms"]
            rows.append(row)
            print(f"{rate:5.0f} req/s (n {n}, sent at {row['achieved_rate']:.0f}/s, failed "
                  f"{row['failed_direct']}/{row['failed_routed']}): direct p50 "
                  f"{row['direct_p50_ms']:.2f} p99 {row['direct_p99_ms']:.2f} ms | routed p50 "
                  f"{row['routed_p50_ms']:.2f} p99 {row['routed_p99_ms']:.2f} ms | added p50 "
                  f"{row['added_p50_ms']:+.2f} p99 {row['added_p99_ms']:+.2f} ms | router CPU "
                  f"{row['cpu_s_per_1k']:.2f} s/1k req | decision mean "
                  f"{row['decision_mean_us']:.1f} us", flush=True)
        if runs > 1:
            for rate in rates:
                rs = [r for r in rows if r["rate"] == rate]
                parts = []
                for key, unit, fmt in (("added_p50_ms", "ms", "+.2f"),
                                       ("added_p99_ms", "ms", "+.2f"),
                                       ("cpu_s_per_1k", "s/1k req", ".2f")):
                    v = [r[key] for r in rs]
                    parts.append(f"{key} median {np.median(v):{fmt}} [{min(v):{fmt}}, "
                                 f"{max(v):{fmt}}] {unit}")
                print(f"{rate:5.0f} req/s, {runs} runs: " + " | ".join(parts), flush=True)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
    return rows


def main() -> None:
    """Print decision time and added latency."""
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--decision-runs", type=int, default=3,
                   help="repeat the decision timing (a busy host moves p99 between runs)")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--emulator-port", type=int, default=18950)
    p.add_argument("--router-port", type=int, default=18951)
    p.add_argument("--rates", type=float, nargs="*", default=[50.0, 200.0, 500.0],
                   help="open-loop arrival rates, req/s (none: skip)")
    p.add_argument("--seconds", type=float, default=6.0, help="per rate and target")
    p.add_argument("--rate-runs", type=int, default=1,
                   help="repeat the rates (alternating which side goes first); prints the "
                        "median and range of the differences")
    p.add_argument("--heuristic", default="join_shortest_queue", help="router at the rates")
    p.add_argument("--json", default="", help="write the rate table here")
    a = p.parse_args()
    bench_decisions(a.n, a.decision_runs)
    bench_added_latency(a.requests, a.emulator_port, a.router_port)
    if a.rates:
        rows = bench_rates(a.rates, a.seconds, a.emulator_port, a.router_port,
                           ["--heuristic", a.heuristic], a.rate_runs)
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
