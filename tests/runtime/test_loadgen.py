"""The benchmark client: vllm-bench-serve metrics, failure reasons, against a local emulator."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from runtime import loadgen
from sim.workload import Workload
from tests.runtime.test_faults import set_faults

FIXED = """name: tiny
kind: synthetic
num_requests: 30
arrival: {process: poisson, rate_per_s: 40.0}
lengths: {distribution: fixed, prompt_tokens: 24, output_tokens: 6}
"""


def _result(i, ttft, latency, out, itl=(), ok=True):
    r = loadgen.RequestResult(i, 10, out, send_s=0.1 * i, success=ok, ttft_s=ttft,
                              latency_s=latency, itl_s=list(itl), output_tokens=out)
    if not ok:
        r.reason = "http_500: boom"
    return r


def test_summarize_matches_bench_serve_definitions():
    rs = [_result(0, 0.1, 0.5, 5, [0.1] * 4), _result(1, 0.3, 0.3, 1),
          _result(2, 0.2, 1.2, 11, [0.1] * 10), _result(3, 0, 0, 0, ok=False)]
    s = loadgen.summarize(rs, 2.0, loadgen.parse_goodput(["ttft:250", "tpot:99"]))
    assert (s["completed"], s["failed"]) == (3, 1)
    assert s["failure_reasons"] == {"http_500": 1}
    assert s["tpot_ms"]["mean"] == pytest.approx(100.0)  # single-token request excluded
    assert s["ttft_ms"]["mean"] == pytest.approx(200.0)
    assert s["itl_ms"]["mean"] == pytest.approx(100.0)
    assert s["e2el_ms"]["median"] == pytest.approx(500.0)
    assert s["request_throughput"] == pytest.approx(1.5)
    assert s["output_throughput"] == pytest.approx(17 / 2.0)
    # good: request 0 (tpot 100 > 99: bad), 1 (ttft 300 > 250: bad), 2 (tpot 100: bad)
    assert s["good_requests"] == 0
    s = loadgen.summarize(rs, 2.0, loadgen.parse_goodput(["ttft:300", "tpot:100"]))
    assert s["good_requests"] == 3  # single-token request counts as TPOT 0
    assert "Request goodput" in loadgen.format_table(s)
    with pytest.raises(SystemExit):
        loadgen.parse_goodput(["latency:5"])


def test_build_from_conf_name_and_yaml(tmp_path):
    w = loadgen.build("fixed", num_requests=7, rate_scale=2.0)
    assert len(w) == 7 and set(w.prompt_tokens.tolist()) == {512}
    assert w.rate_per_s == pytest.approx(loadgen.build("fixed", 7).rate_per_s * 2.0)
    path = tmp_path / "tiny.yaml"
    path.write_text(FIXED)
    assert len(loadgen.build(str(path))) == 30
    assert len(loadgen.make_prompt(3, 24).split()) == 24
    with pytest.raises(SystemExit, match="not found"):
        loadgen.build("no_such_workload")


def test_replay_against_emulator(procs, tmp_path, capsys):
    emu = procs.emulator()
    path = tmp_path / "tiny.yaml"
    path.write_text(FIXED)
    out = tmp_path / "r.json"
    rc = loadgen.main(["--base-url", emu.url, "--workload", str(path), "--goodput",
                       "ttft:5000", "tpot:1000", "--result-json", str(out),
                       "--save-detailed"])
    assert rc == 0
    assert "Serving Benchmark Result" in capsys.readouterr().out
    s = json.loads(out.read_text())
    assert (s["completed"], s["failed"]) == (30, 0)
    assert s["total_output_tokens"] == 30 * 6 and s["total_input_tokens"] == 30 * 24
    assert s["good_requests"] == 30
    for r in s["requests"]:
        # 6 token chunks, the last with finish_reason (as vLLM): 5 inter-token gaps
        assert 0 < r["ttft_s"] <= r["latency_s"] and len(r["itl_s"]) == 5
        assert r["send_s"] >= r["sched_s"] and r["send_mono_s"] > 0
    assert s["tpot_ms"]["mean"] > 0
    assert s["send_lateness_ms"]["max"] >= s["send_lateness_ms"]["mean"] >= 0
    # every request went with its X-Request-Id (the emulator logs it)
    with urllib.request.urlopen(emu.url + "/emulator/requests") as resp:
        logged = {d["rid"] for d in json.loads(resp.read())}
    assert logged == {r["request_id"] for r in s["requests"]} and len(logged) == 30


def test_failures_are_counted_with_reasons(procs):
    emu = procs.emulator()
    w = Workload([0.0, 0.01, 0.02], [8, 8, 8], [20, 20, 20])
    set_faults(emu.url, status=503)
    rs, _ = asyncio.run(loadgen.replay(emu.url, w, model="m"))
    assert all(not r.success and r.reason.startswith("http_503") for r in rs)
    set_faults(emu.url, status=0, drop_after_tokens=3)
    rs, _ = asyncio.run(loadgen.replay(emu.url, w, model="m"))
    assert all(not r.success and r.reason for r in rs)
    s = loadgen.summarize(rs, 1.0)
    assert s["failed"] == 3 and s["completed"] == 0
    rs, _ = asyncio.run(loadgen.replay("http://127.0.0.1:9", w, model="m"))
    assert all(not r.success and "Error" in r.reason for r in rs)
