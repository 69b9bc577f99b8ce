"""Sim-to-live agreement: ``python -m experiments.sim_vs_live [--quick] [--requests N]``.

One job: run the same moderate-load workload (default: 300 requests, Poisson 6 req/s,
lognormal prompts of mean 512 and outputs of mean 128 tokens) on

- the simulator (:class:`sim.engine.Simulator`, two unified Llama-3.1-8B instances on
  A100-80GB-SXM, prefix caching off like the emulator, the router heuristic), and
- live: two ``runtime.emulator`` processes and ``runtime.router`` with the same heuristic on
  127.0.0.1 free ports, driven by :mod:`runtime.loadgen` (streaming, ``ignore_eos``),

and print mean TTFT, TPOT (output > 1 only, as ``vllm bench serve``) and E2E of both and the
relative difference (live / sim - 1), then where the live TTFT goes: each request carries
``X-Request-Id: svl-<i>``, the emulators log their engine timestamps (``/emulator/requests``,
this machine's monotonic clock, as the load generator's send times), and per request

    client TTFT = hop in (client -> router -> emulator handler) + body read/parse
                  + engine queue (arrival -> first iteration) + engine prefill (-> output 1)
                  + emission (output 1 sampled -> its chunk written) + hop out (-> client)

The engine part (queue + prefill, the *engine-internal TTFT*) is what the simulator's TTFT
models; it is shown next to the simulator's queue and prefill for the same requests. The
rest (hops and emission) is what HTTP, SSE and the router add. ``--rates 4 6 8 --seeds 0 1
2`` sweeps and prints one summary line per run; ``--json PATH`` writes the numbers. Both
sides schedule asynchronously by default (vLLM's ``--async-scheduling`` default since 0.14,
:attr:`sim.instance.InstanceConfig.async_scheduling`); ``--async-scheduling on|off`` forces
it on both.

Known systematic differences (live minus sim): the HTTP + SSE + router hop on every request
(on 2 shared cores at 4 to 8 req/s about 1.3 to 2.3 ms in and 0.7 to 1.4 ms out, more when
the machine is busy; the router's share is about 1.6 to 2.2 ms of it, as a direct client ->
emulator hop is about 0.9 ms in and 0.3 ms out), and emission (about 0.6 to 1 ms: the event
loop's wake-up after the planned iteration end, about 0.2 ms, plus writing the chunks of the
requests ahead in the batch, in vLLM's order, before the newly admitted request's first
token); together about 3 to 5 ms of TTFT, which the simulator does not model (its TTFT is the
engine's). The load generator sends about 1 ms after the schedule on
average (not part of its TTFT, it only shifts arrivals); the engine's iterations end at
their planned times (absolute targets), but a loop stall longer than 25 ms is not paid back,
so on a busy machine a few iterations start late (counted as stalls); the emulator reserves KV
for prompt + max_tokens at admission (never binding at this load), has no prefix caching
(turned off in the simulated instances as well); the live router's load-aware heuristics see
metrics scraped every 0.25 s plus their own in-flight counts, where the simulator's see exact
state (``round_robin``, the default here, is state-free, so both send every request to the
same instance).
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

from runtime.engine import MAX_CATCH_UP_S

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


ASYNC_MODES = {"default": None, "on": True, "off": False}
"""``--async-scheduling`` choices: vLLM's default on both sides, or forced on/off."""


def run_sim(workload, heuristic: str, num_instances: int,
            async_scheduling: bool | None = None) -> dict:
    """Mean TTFT / TPOT / E2E (ms) of the simulated cluster."""
    from policies.heuristics import make_heuristic
    from sim.catalog import get_gpu, get_model
    from sim.engine import ClusterConfig, SimConfig, Simulator
    from sim.instance import InstanceConfig
    from sim.metrics import records

    cluster = ClusterConfig(instances=[InstanceConfig(role="unified", replicas=num_instances,
                                                      enable_prefix_caching=False,
                                                      async_scheduling=async_scheduling)])
    sim = Simulator(get_model(MODEL), get_gpu(GPU), cluster, SimConfig(), workload,
                    make_heuristic(heuristic), np.random.default_rng(0))
    sim.run()
    df = records(sim.entered_requests())
    done = df[df.ttft_s.notna()]
    multi = done[done.output_tokens > 1]
    return {"async_scheduling": cluster.instances[0].async_scheduling,
            "completed": len(done), "ttft_ms": 1e3 * float(done.ttft_s.mean()),
            "tpot_ms": 1e3 * float(multi.tpot_s.mean()),
            "e2e_ms": 1e3 * float(done.e2e_s.mean()),
            "queue_ms": 1e3 * float(done.queue_s.mean()),
            "prefill_ms": 1e3 * float(done.prefill_s.mean()),
            "per_request": {int(r.rid): (float(r.ttft_s), float(r.queue_s), float(r.prefill_s))
                            for r in done.itertuples()}}


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


def run_live(workload, heuristic: str, num_instances: int,
             async_scheduling: bool | None = None) -> dict:
    """Mean TTFT / TPOT / E2E (ms) through router + emulators on loopback (loadgen)."""
    from runtime import loadgen
    from runtime.launch import stop_processes

    procs: list[subprocess.Popen] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        urls = []
        flags = [] if async_scheduling is None else [
            "--async-scheduling" if async_scheduling else "--no-async-scheduling"]
        for _ in range(num_instances):
            port = _free_port()
            p = subprocess.Popen([sys.executable, "-m", "runtime.emulator", "--port", str(port),
                                  "--model", MODEL, "--gpu", GPU, "--served-model-name", "m",
                                  *flags],
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
        for u in urls:  # drop the warm-up's records (none expected)
            _get_json(u + "/emulator/requests?clear=1")
        results, duration = asyncio.run(loadgen.replay(base, workload, model="m",
                                                       request_id_prefix="svl-"))
        engine_log = {}
        engine_state = []
        for u in urls:
            engine_log.update({d["rid"]: d for d in _get_json(u + "/emulator/requests")})
            engine_state.append(_get_json(u + "/emulator/state"))
    finally:
        stop_processes(procs)
    s = loadgen.summarize(results, duration)
    out = {"completed": s["completed"], "failed": s["failed"],
           "ttft_ms": s["ttft_ms"]["mean"], "tpot_ms": s["tpot_ms"]["mean"],
           "e2e_ms": s["e2el_ms"]["mean"], "send_lateness_ms": s["send_lateness_ms"],
           "engine_wake_late_mean_ms": 1e3 * sum(e["wake_late_sum_s"] for e in engine_state)
           / max(1, sum(e["num_iterations"] for e in engine_state)),
           "engine_wake_late_max_ms": 1e3 * max(e["wake_late_max_s"] for e in engine_state),
           "engine_stalls": sum(e["num_stalls"] for e in engine_state),
           "async_scheduling": [e["async_scheduling"] for e in engine_state]}
    out["decomposition"] = decompose(results, engine_log)
    return out


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


STAGES = (
    ("lateness_ms", "load generator lateness (not in TTFT)"),
    ("hop_in_ms", "hop in: client -> router -> emulator handler"),
    ("parse_ms", "emulator: read + parse the body"),
    ("queue_ms", "engine: arrival -> start of first iteration"),
    ("prefill_ms", "engine: first iteration start -> output 1 sampled"),
    ("emit_ms", "emulator: sampled -> chunk written (loop wake-up)"),
    ("hop_out_ms", "hop out: emulator -> router -> client parsed"),
)


def decompose(results, engine_log: dict) -> dict:
    """Per-request client TTFT = hop in + parse + queue + prefill + emit + hop out (means, ms).

    Joins the load generator's results with the emulators' ``/emulator/requests`` records by
    ``X-Request-Id`` (all stamps on this machine's monotonic clock). ``engine_ttft_ms`` is the
    emulator-internal TTFT (arrival at the engine -> output 1 sampled), the quantity the
    simulator's TTFT models; ``hop_ms`` is the rest of the client TTFT.
    """
    rows = []
    for r in results:
        e = engine_log.get(r.request_id)
        if not r.success or e is None or e["first_token_s"] < 0 or e["first_sent_s"] < 0:
            continue
        first_client = r.send_mono_s + r.ttft_s
        rows.append({
            "index": r.index,
            "lateness_ms": r.send_s - r.sched_s,
            "hop_in_ms": e["recv_s"] - r.send_mono_s,
            "parse_ms": e["arrival_s"] - e["recv_s"],
            "queue_ms": e["first_scheduled_s"] - e["arrival_s"],
            "prefill_ms": e["first_token_s"] - e["first_scheduled_s"],
            "emit_ms": e["first_sent_s"] - e["first_token_s"],
            "hop_out_ms": first_client - e["first_sent_s"],
            "client_ttft_ms": r.ttft_s,
            "engine_ttft_ms": e["first_token_s"] - e["arrival_s"],
            "engine_tpot_ms": ((e["finish_s"] - e["first_token_s"]) / (e["output_tokens"] - 1)
                               if e["output_tokens"] > 1 else float("nan")),
            "engine_e2e_ms": e["finish_s"] - e["arrival_s"],
        })
    keys = [k for k, _ in STAGES] + ["client_ttft_ms", "engine_ttft_ms", "engine_tpot_ms",
                                     "engine_e2e_ms"]
    means = {k: 1e3 * float(np.nanmean([row[k] for row in rows])) if rows else float("nan")
             for k in keys}
    means["hop_ms"] = means["client_ttft_ms"] - means["engine_ttft_ms"]
    means["matched"] = len(rows)
    means["per_request"] = {row["index"]: 1e3 * row["engine_ttft_ms"] for row in rows}
    return means


def compare(num_requests: int, rate_per_s: float, heuristic: str, num_instances: int = 2,
            seed: int = 0, async_scheduling: bool | None = None) -> dict:
    """Both runs and the relative differences (live / sim - 1).

    ``async_scheduling``: None for vLLM's default on both sides, else forced on both.
    """
    workload = make_workload(num_requests, rate_per_s, seed)
    sim = run_sim(workload, heuristic, num_instances, async_scheduling)
    live = run_live(workload, heuristic, num_instances, async_scheduling)
    rel = {k: live[k] / sim[k] - 1.0 for k in ("ttft_ms", "tpot_ms", "e2e_ms")}
    # the engine-internal comparison on the requests both sides completed
    d = live["decomposition"]
    sim_pr, live_pr = sim.pop("per_request"), d.pop("per_request")
    both = sorted(set(sim_pr) & set(live_pr))
    if both:
        d["sim_ttft_same_requests_ms"] = 1e3 * float(np.mean([sim_pr[i][0] for i in both]))
        d["sim_queue_same_requests_ms"] = 1e3 * float(np.mean([sim_pr[i][1] for i in both]))
        d["sim_prefill_same_requests_ms"] = 1e3 * float(np.mean([sim_pr[i][2] for i in both]))
        d["engine_ttft_vs_sim_rel"] = d["engine_ttft_ms"] / d["sim_ttft_same_requests_ms"] - 1
    return {"num_requests": num_requests, "rate_per_s": rate_per_s, "heuristic": heuristic,
            "num_instances": num_instances, "seed": seed,
            "async_scheduling": sim.pop("async_scheduling"), "sim": sim, "live": live,
            "rel_diff": rel}


def print_decomposition(out: dict) -> None:
    """Where the client TTFT goes (means over the requests matched in both logs)."""
    d = out["live"]["decomposition"]
    print(f"TTFT decomposition (means, ms; {d['matched']} requests matched by X-Request-Id):")
    print(f"  {'stage':52s} {'sim':>8s} {'live':>8s}")
    for k, label in STAGES:
        sim_v = {"queue_ms": d.get("sim_queue_same_requests_ms"),
                 "prefill_ms": d.get("sim_prefill_same_requests_ms")}.get(k)
        sv = f"{sim_v:8.2f}" if sim_v is not None else f"{'-':>8s}"
        print(f"  {label:52s} {sv} {d[k]:8.2f}")
    print(f"  {'= client TTFT (excl. lateness)':52s} "
          f"{d.get('sim_ttft_same_requests_ms', float('nan')):8.2f} {d['client_ttft_ms']:8.2f}")
    print(f"  engine-internal TTFT {d['engine_ttft_ms']:.2f} ms "
          f"({100 * d.get('engine_ttft_vs_sim_rel', float('nan')):+.1f}% vs sim) + hops "
          f"and emission {d['hop_ms']:.2f} ms = client TTFT {d['client_ttft_ms']:.2f} ms")
    lv = out["live"]
    late = lv["send_lateness_ms"]
    print(f"  load generator send lateness: mean {late['mean']:.2f}, max {late['max']:.2f} ms;"
          f" engine timer wake-up after planned iteration end: mean "
          f"{lv['engine_wake_late_mean_ms']:.2f}, max {lv['engine_wake_late_max_ms']:.2f} ms;"
          f" stalls > {1e3 * MAX_CATCH_UP_S:g} ms: {lv['engine_stalls']}")
    print(f"  engine-internal TPOT {d['engine_tpot_ms']:.2f} ms, E2E {d['engine_e2e_ms']:.1f} ms")


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
    p.add_argument("--rates", type=float, nargs="*", default=None,
                   help="sweep: several rates (each with every --seeds); overrides --rate")
    p.add_argument("--seeds", type=int, nargs="*", default=None,
                   help="sweep: several workload seeds; overrides --seed")
    p.add_argument("--async-scheduling", choices=tuple(ASYNC_MODES), default="default",
                   help="both sides: vLLM's default (on for these PP=1 instances), on or off")
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    n = 80 if a.quick else a.requests
    runs = []
    for rate in a.rates or [a.rate]:
        for seed in a.seeds if a.seeds is not None else [a.seed]:
            out = compare(n, rate, a.heuristic, a.instances, seed,
                          ASYNC_MODES[a.async_scheduling])
            runs.append(out)
            live_async = set(out["live"]["async_scheduling"])
            print(f"{n} requests, Poisson {rate} req/s, seed {seed}, {a.instances} x unified "
                  f"{MODEL} on {GPU}, {a.heuristic}, async scheduling "
                  f"{'on' if out['async_scheduling'] else 'off'}"
                  f"{'' if live_async == {out['async_scheduling']} else ' (LIVE DIFFERS)'}; "
                  f"live completed {out['live']['completed']}, failed {out['live']['failed']}")
            print(f"{'metric':10s} {'sim':>10s} {'live':>10s} {'live/sim-1':>11s}")
            for k in ("ttft_ms", "tpot_ms", "e2e_ms"):
                print(f"{k:10s} {out['sim'][k]:10.1f} {out['live'][k]:10.1f} "
                      f"{100 * out['rel_diff'][k]:+10.1f}%")
            print_decomposition(out)
            print()
    if len(runs) > 1:
        print(f"{'rate':>5s} {'seed':>4s} {'TTFT sim':>9s} {'live':>7s} {'rel':>7s} "
              f"{'TPOT sim':>9s} {'live':>6s} {'rel':>7s} {'E2E sim':>8s} {'live':>7s} "
              f"{'rel':>7s} {'engTTFT rel':>11s} {'hop ms':>7s}")
        for o in runs:
            s, lv, r, d = o["sim"], o["live"], o["rel_diff"], o["live"]["decomposition"]
            print(f"{o['rate_per_s']:5g} {o['seed']:4d} {s['ttft_ms']:9.1f} "
                  f"{lv['ttft_ms']:7.1f} {100 * r['ttft_ms']:+6.1f}% {s['tpot_ms']:9.2f} "
                  f"{lv['tpot_ms']:6.2f} {100 * r['tpot_ms']:+6.1f}% {s['e2e_ms']:8.0f} "
                  f"{lv['e2e_ms']:7.0f} {100 * r['e2e_ms']:+6.1f}% "
                  f"{100 * d.get('engine_ttft_vs_sim_rel', float('nan')):+10.1f}% "
                  f"{d['hop_ms']:7.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(runs[0] if len(runs) == 1 else runs, indent=2))
    return runs[0] if len(runs) == 1 else {"runs": runs}


if __name__ == "__main__":
    main()
