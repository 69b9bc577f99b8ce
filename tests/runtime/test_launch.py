"""runtime.launch: vllm serve commands from a plan, and a one-command emulated cluster."""

from __future__ import annotations

import signal
import subprocess

import yaml

from runtime.launch import load_plan, main, vllm_commands

from .conftest import PY, REPO, free_port, post, wait_http

PLAN = {"model": "Llama-3.1-8B", "gpu": "A100-80GB-SXM", "instances": [
    {"role": "prefill", "tensor_parallel_size": 2, "host": "10.0.0.1", "port": 8100},
    {"role": "decode", "host": "10.0.0.1", "port": 8101},
    {"role": "unified", "host": "10.0.0.2", "port": 8100}]}


def test_print_vllm_and_router_commands(tmp_path, capsys):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(PLAN))
    cmds = vllm_commands(load_plan(path))
    assert '"kv_role":"kv_producer"' in cmds[0][2] and "--tensor-parallel-size 2" in cmds[0][2]
    assert cmds[0][1]["VLLM_NIXL_SIDE_CHANNEL_PORT"] != cmds[1][1]["VLLM_NIXL_SIDE_CHANNEL_PORT"]
    assert '"kv_role":"kv_both"' in cmds[2][2]
    assert "meta-llama/Llama-3.1-8B" in cmds[2][2]
    assert main([str(path), "--heuristic", "distserve"]) == 0
    out = capsys.readouterr().out
    assert "http://10.0.0.1:8100=prefill" in out and "--heuristic distserve" in out


def test_emulate_starts_cluster_and_router_with_one_command(tmp_path):
    plan = {**PLAN, "instances": [{"role": r, "port": free_port()}
                                  for r in ("prefill", "decode")]}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    port = free_port()
    p = subprocess.Popen([PY, "-m", "runtime.launch", str(path), "--emulate", "--heuristic",
                          "distserve", "--router-port", str(port)], cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=p)
        status, r = post(f"http://127.0.0.1:{port}/v1/completions",
                         {"prompt": "a b c", "max_tokens": 4})
        assert status == 200 and r["usage"]["completion_tokens"] == 4
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 0
    for inst in plan["instances"]:  # every child stopped: ports free again
        import socket

        with socket.socket() as s:  # REUSEADDR: TIME_WAIT is fine, a listener is not
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", inst["port"]))
            s.listen()


def test_async_scheduling_in_a_plan_becomes_vllms_flag(tmp_path):
    import pytest

    plan = {**PLAN, "instances": [{**PLAN["instances"][0], "async_scheduling": False},
                                  {**PLAN["instances"][1], "async_scheduling": True},
                                  PLAN["instances"][2]]}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    cmds = [c for _, _, c in vllm_commands(load_plan(path))]
    assert "--no-async-scheduling" in cmds[0] and " --async-scheduling" in cmds[1]
    assert "async-scheduling" not in cmds[2]  # unset: vLLM's default
    plan["instances"][0]["async_scheduling"] = "yes"
    path.write_text(yaml.safe_dump(plan))
    with pytest.raises(ValueError, match=r"instances\[0\]\.async_scheduling"):
        load_plan(path)
