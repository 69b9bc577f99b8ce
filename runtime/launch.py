"""From a deployment plan to a running cluster: ``python -m runtime.launch PLAN [--run|--emulate]``.

One job: turn a plan (``solvers.allocate``'s YAML/JSON, or a hand-written YAML) into the
``vllm serve`` commands (with NixlConnector ``--kv-transfer-config`` and the NIXL side-channel
environment) plus the router command; print them (default), run them on this machine
(``--run``), or start emulators instead of vLLM (``--emulate``, no GPU) with the router, all
stopped together on Ctrl-C / SIGTERM.

Hand-written plan::

    model: Llama-3.1-8B            # catalog name (emulators); hf_id defaults to its HF id
    hf_id: meta-llama/Llama-3.1-8B # what vllm serve loads
    gpu: A100-80GB-SXM
    instances:
      - {role: prefill, tensor_parallel_size: 1, port: 8100, host: 10.0.0.1}
      - {role: decode,  tensor_parallel_size: 1, port: 8101, host: 10.0.0.1}
      - {role: unified, port: 8102, async_scheduling: false}

Every instance gets ``--kv-transfer-config {"kv_connector":"NixlConnector","kv_role":...}``
(``kv_producer`` / ``kv_consumer`` / ``kv_both`` for unified): NixlConnector ignores the role,
and a unified instance needs a connector to take part in a tandem (Lead/Follow) hand-off.
``--no-kv-for-unified`` leaves unified instances without one (colocated-only serving).
An instance's optional ``async_scheduling`` (true/false) becomes ``--async-scheduling`` /
``--no-async-scheduling`` on ``vllm serve`` and the emulator; unset, both use vLLM's default
(since 0.14: on unless pipeline parallel).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

KV_ROLE = {"prefill": "kv_producer", "decode": "kv_consumer", "unified": "kv_both"}
NIXL_BASE_PORT = 5600
"""``VLLM_NIXL_SIDE_CHANNEL_PORT`` of the first instance on a host (+10 per instance)."""


def load_plan(path: str | Path) -> dict:
    """Read a plan file into a dict with ``model``, ``hf_id``, ``gpu`` and ``instances``.

    Each instance gets ``role``, ``tensor_parallel_size``, ``pipeline_parallel_size``,
    ``port``, ``host`` (``node<k>`` for solver plans, which name nodes by index) and
    ``async_scheduling`` (true, false, or None for vLLM's default).

    Raises:
        ValueError: naming a missing or bad field.
    """
    text = Path(path).read_text()
    d = yaml.safe_load(text) if str(path).endswith((".yaml", ".yml")) else json.loads(text)
    if not isinstance(d, dict) or not isinstance(d.get("instances"), list) or \
            not d["instances"]:
        raise ValueError(f"{path}: needs a non-empty 'instances' list")
    model = d.get("model", "Llama-3.1-8B")
    out = {"model": model, "hf_id": d.get("hf_id") or _hf_id(model),
           "gpu": d.get("gpu", "A100-80GB-SXM"), "instances": []}
    for i, inst in enumerate(d["instances"]):
        role = inst.get("role", "unified")
        if role not in KV_ROLE:
            raise ValueError(f"instances[{i}].role = {role!r}; use unified, prefill or decode")
        nodes = inst.get("nodes") or [inst.get("node", 0)]
        async_sched = inst.get("async_scheduling")
        if async_sched is not None and not isinstance(async_sched, bool):
            raise ValueError(f"instances[{i}].async_scheduling = {async_sched!r}; use true, "
                             f"false or leave it out (vLLM's default)")
        out["instances"].append({
            "role": role, "tensor_parallel_size": int(inst.get("tensor_parallel_size", 1)),
            "pipeline_parallel_size": int(inst.get("pipeline_parallel_size", 1)),
            "port": int(inst.get("port", 8100 + i)),
            "host": inst.get("host") or f"node{nodes[0]}", "async_scheduling": async_sched})
    return out


def _hf_id(model: str) -> str:
    from sim.catalog import get_model

    return get_model(model).hf_id


def _async_flag(inst: dict) -> list[str]:
    """``--[no-]async-scheduling`` when the plan sets it (else vLLM's default applies)."""
    value = inst.get("async_scheduling")
    if value is None:
        return []
    return ["--async-scheduling" if value else "--no-async-scheduling"]


def vllm_commands(plan: dict, kv_for_unified: bool = True) -> list[tuple[str, dict, str]]:
    """``(host, env, command)`` per instance."""
    out, slot = [], {}
    for inst in plan["instances"]:
        host, role = inst["host"], inst["role"]
        k = slot.get(host, 0)
        slot[host] = k + 1
        args = ["vllm", "serve", plan["hf_id"], "--host", "0.0.0.0", "--port", str(inst["port"]),
                "--tensor-parallel-size", str(inst["tensor_parallel_size"]),
                "--pipeline-parallel-size", str(inst["pipeline_parallel_size"]),
                *_async_flag(inst)]
        env = {}
        if role != "unified" or kv_for_unified:
            kv = {"kv_connector": "NixlConnector", "kv_role": KV_ROLE[role]}
            args += ["--kv-transfer-config", json.dumps(kv, separators=(",", ":"))]
            env = {"VLLM_NIXL_SIDE_CHANNEL_HOST": host,
                   "VLLM_NIXL_SIDE_CHANNEL_PORT": str(NIXL_BASE_PORT + 10 * k)}
        out.append((host, env, shlex.join(args)))
    return out


def router_command(plan: dict, args: argparse.Namespace, hosts: list[str] | None = None) -> list:
    """The router's argv."""
    hosts = hosts or [i["host"] for i in plan["instances"]]
    backends = [f"http://{h}:{i['port']}={i['role']}" for h, i in zip(hosts, plan["instances"],
                                                                       strict=True)]
    cmd = [sys.executable, "-m", "runtime.router", "--host", args.router_host, "--port",
           str(args.router_port), "--backends", *backends]
    cmd += ["--policy", args.policy] if args.policy else ["--heuristic", args.heuristic]
    return cmd


def _print(plan: dict, args: argparse.Namespace) -> None:
    for host, env, cmd in vllm_commands(plan, not args.no_kv_for_unified):
        prefix = " ".join(f"{k}={v}" for k, v in env.items())
        print(f"# on {host}\n{prefix + ' ' if prefix else ''}{cmd}")
    print("# router\n" + shlex.join(router_command(plan, args)))


def _spawn(cmds: list[tuple[list[str], dict]], ready_urls: list[str]) -> int:
    """Start processes, wait for their health URLs, then until one exits or a signal."""
    procs = []

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        for argv, env in cmds:
            procs.append(subprocess.Popen(argv, env={**os.environ, **env}))
        _wait_ready(ready_urls, procs)
        print("ready: " + ", ".join(ready_urls), flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_processes(procs)


def stop_processes(procs: list[subprocess.Popen], timeout_s: float = 10.0) -> None:
    """Terminate every process still running, then wait; kill any that outlives ``timeout_s``."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _wait_ready(urls: list[str], procs: list[subprocess.Popen], timeout_s: float = 600) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    for url in urls:
        while True:
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"a process exited before {url} was ready")
            try:
                with urllib.request.urlopen(url, timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{url} not ready after {timeout_s} s") from None
                time.sleep(0.1)


def emulate(plan: dict, args: argparse.Namespace) -> int:
    """Emulators for every instance on 127.0.0.1 (the plan's ports) and the router."""
    cmds = []
    for inst in plan["instances"]:
        cmds.append(([sys.executable, "-m", "runtime.emulator", "--role", inst["role"],
                      "--port", str(inst["port"]), "--model", plan["model"],
                      "--gpu", plan["gpu"], "--served-model-name", plan["hf_id"],
                      "--tensor-parallel-size", str(inst["tensor_parallel_size"]),
                      "--pipeline-parallel-size", str(inst["pipeline_parallel_size"]),
                      *_async_flag(inst)], {}))
    hosts = ["127.0.0.1"] * len(plan["instances"])
    ready = [f"http://127.0.0.1:{i['port']}/health" for i in plan["instances"]]
    cmds.append((router_command(plan, args, hosts), {}))
    ready.append(f"http://{args.router_host}:{args.router_port}/health")
    return _spawn(cmds, ready)


def run(plan: dict, args: argparse.Namespace) -> int:
    """Run every vLLM instance of the plan on this machine (all hosts local) and the router."""
    cmds = [(shlex.split(cmd), env | {"VLLM_NIXL_SIDE_CHANNEL_HOST": "127.0.0.1"} if env
             else {}) for _, env, cmd in vllm_commands(plan, not args.no_kv_for_unified)]
    hosts = ["127.0.0.1"] * len(plan["instances"])
    cmds.append((router_command(plan, args, hosts), {}))
    ready = [f"http://127.0.0.1:{i['port']}/health" for i in plan["instances"]]
    return _spawn(cmds, ready + [f"http://{args.router_host}:{args.router_port}/health"])


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags."""
    p = argparse.ArgumentParser(prog="python -m runtime.launch", description=__doc__.split(
        "\n")[0])
    p.add_argument("plan", nargs="?", help="plan YAML/JSON (solvers.allocate or hand-written)")
    p.add_argument("--roles", default="", help="no plan: comma-separated roles, ports from 8100")
    p.add_argument("--model", default="Llama-3.1-8B")
    p.add_argument("--gpu", default="A100-80GB-SXM")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--run", action="store_true", help="run vllm serve here (GPUs)")
    mode.add_argument("--emulate", action="store_true", help="run emulators here (no GPU)")
    p.add_argument("--no-kv-for-unified", action="store_true")
    pol = p.add_mutually_exclusive_group()
    pol.add_argument("--policy", default="")
    pol.add_argument("--heuristic", default="join_shortest_queue")
    p.add_argument("--router-host", default="127.0.0.1")
    p.add_argument("--router-port", type=int, default=8080)
    return p


def main(argv: list[str] | None = None) -> int:
    """Print, run or emulate a plan."""
    args = build_parser().parse_args(argv)
    if args.plan:
        plan = load_plan(args.plan)
    elif args.roles:
        roles = args.roles.split(",")
        plan = {"model": args.model, "hf_id": _hf_id(args.model), "gpu": args.gpu,
                "instances": [{"role": r, "tensor_parallel_size": 1,
                               "pipeline_parallel_size": 1, "port": 8100 + i,
                               "host": "127.0.0.1"} for i, r in enumerate(roles)]}
    else:
        raise SystemExit("give a plan file or --roles unified,prefill,...")
    if args.emulate:
        return emulate(plan, args)
    if args.run:
        return run(plan, args)
    _print(plan, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
