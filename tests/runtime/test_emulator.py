"""The emulator speaks vLLM's surface and NIXL hand-off, timed by the performance model."""

from __future__ import annotations

import collections
import urllib.request

import pytest

from runtime import openai_api as oa
from sim.perf import AnalyticBackend

from .conftest import post, stream, text_of

BODY = {"model": "m", "prompt": "one two three four five six seven eight", "max_tokens": 6}


@pytest.fixture(scope="module")
def pair(module_procs):
    """A prefill-labelled and a decode-labelled emulator."""
    return (module_procs.emulator("prefill", "--max-num-seqs", "8"),
            module_procs.emulator("decode"))


def test_completion_non_streaming_has_usage_and_fake_text(pair):
    status, r = post(pair[0].url + "/v1/completions", BODY)
    assert status == 200
    assert r["object"] == "text_completion"
    assert r["choices"][0]["text"] == " dog and runs far away into"  # words 8..13
    assert r["usage"] == {"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14}
    assert r["kv_transfer_params"] is None


def test_chat_stream_layout_matches_vllm(pair):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
            "stream_options": {"include_usage": True}}
    status, ev, _ = stream(pair[0].url + "/v1/chat/completions", body)
    assert status == 200
    assert ev[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    # as vLLM (protocol notes 2.1): the finish reason rides on the last token's chunk
    assert [e["choices"][0]["finish_reason"] for e in ev[1:4]] == [None, None, "length"]
    assert all(e["choices"][0]["delta"]["content"] for e in ev[1:4])
    assert len(ev) == 6 and ev[-2]["choices"] == [] and ev[-2]["usage"]["completion_tokens"] == 3
    assert ev[-1] == "[DONE]"
    assert text_of(ev) == " " + " ".join(oa.WORDS[3:6])  # the chat renders to 3 tokens


def metric_values(url: str) -> dict[str, float]:
    """Unlabelled name -> value of an emulator's single-engine samples (no buckets)."""
    out = {}
    with urllib.request.urlopen(url + "/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith("vllm:") and "_bucket" not in line:
                out[line.split("{")[0].split(" ")[0]] = float(line.rsplit(" ", 1)[1])
    return out


def itl_count(url: str) -> float:
    return metric_values(url).get("vllm:inter_token_latency_seconds_count", 0.0)


def test_inter_token_latency_is_observed_for_every_request(pair):
    url = pair[0].url
    before = itl_count(url)
    post(url + "/v1/completions", BODY)  # 6 tokens: 5 gaps
    assert itl_count(url) - before == 5
    _, ev, _ = stream(url + "/v1/completions", BODY)
    assert itl_count(url) - before == 10
    chunks = [e for e in ev if isinstance(e, dict) and e["choices"]]
    assert len(chunks) == 6 and chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["text"] for c in chunks)


def test_timing_follows_the_performance_model(pair):
    """One request on an idle instance: TTFT ~ one prefill iteration, then decode steps."""
    be = AnalyticBackend("Llama-3.1-8B", "A100-80GB-SXM", tp=1)
    prompt = " ".join(["w"] * 2000)
    m0 = collections.defaultdict(float, metric_values(pair[1].url))
    _, ev, times = stream(pair[1].url + "/v1/completions",
                          {"model": "m", "prompt": prompt, "max_tokens": 11})
    m1 = metric_values(pair[1].url)
    prefill_s = be.iteration_time_s(2000, 1, 0, 0, 2000 * 2000, 0, 0)
    decode_s = be.iteration_time_s(0, 0, 0, 0, 0, 1, 2001)
    assert prefill_s > 0.05
    # never faster than the model; a loaded machine only adds delay (generous upper bounds)
    ttft = m1["vllm:time_to_first_token_seconds_sum"] - m0["vllm:time_to_first_token_seconds_sum"]
    assert prefill_s * 0.98 <= ttft <= prefill_s * 1.5 + 0.25
    assert prefill_s * 0.98 <= times[0] <= prefill_s * 1.5 + 0.5
    n = m1["vllm:inter_token_latency_seconds_count"] - m0["vllm:inter_token_latency_seconds_count"]
    itl = (m1["vllm:inter_token_latency_seconds_sum"]
           - m0["vllm:inter_token_latency_seconds_sum"]) / n
    assert n == 10 and decode_s * 0.95 <= itl <= decode_s * 2 + 0.02
    gaps = (times[-2] - times[0]) / 10  # client side: the last token's chunk is ev[-2]
    assert decode_s * 0.5 <= gaps <= decode_s * 3 + 0.05


def test_nixl_handoff_pins_then_releases_kv(pair):
    p, d = pair
    hdr = {"X-Request-Id": "req-handoff-1"}
    status, r = post(p.url + "/v1/completions",
                     {**BODY, "max_tokens": 1, "kv_transfer_params": {"do_remote_decode": True}},
                     hdr)
    kv = r["kv_transfer_params"]
    assert status == 200 and kv["do_remote_prefill"] is True and kv["remote_request_id"]
    assert kv["remote_port"] == p.port
    state = post_get(p.url + "/emulator/state")
    assert state["num_pinned"] == 1 and state["kv_used_blocks"] > 0
    status, ev, _ = stream(d.url + "/v1/completions",
                           {**BODY, "stream_options": {"include_usage": True},
                            "kv_transfer_params": kv}, hdr)
    assert status == 200 and text_of(ev) == " dog and runs far away into"
    assert ev[-2]["usage"]["completion_tokens"] == 6
    state = post_get(p.url + "/emulator/state")
    assert state["num_pinned"] == 0 and state["kv_used_blocks"] == 0
    # a second pull of the same KV fails: vLLM's default kv_load_failure_policy is fail
    status, err = post(d.url + "/v1/completions", {**BODY, "kv_transfer_params": kv})
    assert status == 500 and "KV load" in err["message"]


def test_metrics_use_vllm_names(pair):
    with urllib.request.urlopen(pair[0].url + "/metrics") as r:
        text = r.read().decode()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:kv_cache_usage_perc", "vllm:cache_config_info",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:request_success_total"):
        assert name in text


@pytest.mark.parametrize("body, field", [
    ({"model": "m"}, "prompt"),
    ({"model": "m", "prompt": "a", "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "prompt": "a", "n": 2}, "n"),
    ({"model": "m", "prompt": ["a", "b"]}, "prompt"),
])
def test_malformed_requests_name_the_field(pair, body, field):
    status, r = post(pair[0].url + "/v1/completions", body)
    assert status == 400 and r["error"]["param"] == field


def test_fake_tokenizer_is_shared():
    req = oa.parse_generation({"prompt": "a b  c"}, chat=False)
    assert req.num_prompt_tokens == 3 and req.max_tokens == oa.DEFAULT_MAX_TOKENS


def post_get(url: str) -> dict:
    import json

    with urllib.request.urlopen(url) as r:
        return json.loads(r.read())


@pytest.mark.parametrize(("flags", "expected"), [
    ([], True),  # vLLM >= 0.14's default
    (["--no-async-scheduling"], False),
    (["--async-scheduling"], True),
    (["--pipeline-parallel-size", "2"], False),  # vLLM's default is off with PP > 1
    (["--pipeline-parallel-size", "2", "--async-scheduling"], True),
])
def test_async_scheduling_flags_follow_vllm_serve(flags, expected):
    from runtime.emulator import Emulator, build_parser

    emu = Emulator(build_parser().parse_args(["--num-gpu-blocks-override", "100", *flags]))
    assert emu.async_scheduling is expected and emu.engine.async_scheduling is expected
