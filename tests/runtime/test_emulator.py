"""The emulator speaks vLLM's surface and NIXL hand-off, timed by the performance model."""

from __future__ import annotations

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
    assert [e["choices"][0]["finish_reason"] for e in ev[1:5]] == [None, None, None, "length"]
    assert ev[-2]["choices"] == [] and ev[-2]["usage"]["completion_tokens"] == 3
    assert ev[-1] == "[DONE]"
    assert text_of(ev) == " " + " ".join(oa.WORDS[3:6])  # the chat renders to 3 tokens


def test_timing_follows_the_performance_model(pair):
    """One request on an idle instance: TTFT ~ one prefill iteration, then decode steps."""
    be = AnalyticBackend("Llama-3.1-8B", "A100-80GB-SXM", tp=1)
    prompt = " ".join(["w"] * 2000)
    _, ev, times = stream(pair[1].url + "/v1/completions",
                          {"model": "m", "prompt": prompt, "max_tokens": 11})
    prefill_s = be.iteration_time_s(2000, 1, 0, 0, 2000 * 2000, 0, 0)
    decode_s = be.iteration_time_s(0, 0, 0, 0, 0, 1, 2001)
    assert prefill_s > 0.05
    assert times[0] == pytest.approx(prefill_s, abs=0.03)
    gaps = (times[9] - times[0]) / 9
    assert gaps == pytest.approx(decode_s, rel=0.3, abs=0.003)


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
