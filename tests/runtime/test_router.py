"""The router in front of real emulator processes: the three modes, streaming and not."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from runtime import openai_api as oa

from .conftest import fixed_policy, post, stream, text_of

BODY = {"model": "m", "prompt": "one two three four five six seven eight", "max_tokens": 8}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}


@pytest.fixture(scope="module")
def emus(module_procs):
    return [module_procs.emulator() for _ in range(3)]


@pytest.fixture(scope="module")
def urls(emus):
    return [e.url for e in emus]


def router_metrics(url: str) -> dict[str, float]:
    """``name{labels}`` -> value of the router's own counters."""
    with urllib.request.urlopen(url + "/metrics") as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("baton_router") and "_created" not in line:
            key, val = line.rsplit(" ", 1)
            out[key] = float(val)
    return out


def outcome_count(url: str, outcome: str, mode: str | None = None) -> float:
    """Requests counted with ``outcome`` once the router has none in flight.

    A streamed response reaches the client (``[DONE]``) just before the router's handler
    returns and counts it, so wait (up to 5 s) for the in-flight gauge to reach 0 first.
    """
    deadline = time.monotonic() + 5.0
    metrics = router_metrics(url)
    while metrics.get("baton_router_requests_inflight", 0.0) > 0 and time.monotonic() < deadline:
        time.sleep(0.02)
        metrics = router_metrics(url)
    return sum(v for k, v in metrics.items()
               if k.startswith("baton_router_requests_total") and f'outcome="{outcome}"' in k
               and (mode is None or f'mode="{mode}"' in k))


def state(url: str) -> dict:
    import json

    with urllib.request.urlopen(url + "/emulator/state") as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def direct(urls):
    """What one emulator answers directly (the reference text)."""
    _, r = post(urls[2] + "/v1/completions", BODY)
    _, chat = post(urls[2] + "/v1/chat/completions", CHAT)
    return r, chat


def test_colocated_streaming_and_not(module_procs, urls, direct):
    router = module_procs.router(urls, "--heuristic", "round_robin")
    status, r = post(router.url + "/v1/completions", BODY)
    assert status == 200 and r["choices"][0]["text"] == direct[0]["choices"][0]["text"]
    assert r["usage"] == direct[0]["usage"]
    status, ev, _ = stream(router.url + "/v1/chat/completions",
                           {**CHAT, "stream_options": {"include_usage": True}})
    assert status == 200 and ev[-1] == "[DONE]"
    assert text_of(ev) == direct[1]["choices"][0]["message"]["content"]
    assert ev[-2]["usage"] == direct[1]["usage"]
    status, models = post_get_json(router.url + "/v1/models")
    assert status == 200 and models["data"][0]["id"] == "m"
    assert outcome_count(router.url, "ok", "colocated") == 2


def test_disaggregated_hands_kv_over(module_procs, urls, direct, tmp_path):
    pol = fixed_policy(tmp_path / "p", ["prefill", "decode", "unified"], 0, 1, mode="disaggregated")
    router = module_procs.router(urls, "--policy", str(pol))
    before = [state(u)["num_iterations"] for u in urls]
    status, r = post(router.url + "/v1/completions", BODY)
    assert status == 200 and r["choices"][0]["text"] == direct[0]["choices"][0]["text"]
    assert r["usage"]["completion_tokens"] == 8
    status, ev, _ = stream(router.url + "/v1/completions",
                           {**BODY, "stream_options": {"include_usage": True}},
                           headers={"X-Request-Id": "client-id-7"})
    assert text_of(ev) == direct[0]["choices"][0]["text"]
    assert ev[0]["id"] == "cmpl-client-id-7"  # one X-Request-Id across legs:
    # the prefill leg ran under the client's id (its KV is named by it)
    assert state(urls[1])["last_remote_prefill"]["remote_request_id"] == "client-id-7"
    assert ev[-2]["usage"] == direct[0]["usage"]
    after = [state(u) for u in urls]
    assert after[0]["num_iterations"] - before[0] == 2  # one prefill iteration per request
    assert after[1]["num_iterations"] - before[1] >= 2 * 8  # every output on the decode side
    assert after[0]["num_pinned"] == 0 and after[0]["kv_used_blocks"] == 0
    assert outcome_count(router.url, "ok", "disaggregated") == 2


@pytest.mark.parametrize("chat", [False, True])
def test_tandem_matches_colocated_output(module_procs, urls, direct, tmp_path, chat):
    pol = fixed_policy(tmp_path / "p", ["unified"] * 3, 0, 1, split_bin=2)  # 50%: k = 4
    router = module_procs.router(urls, "--policy", str(pol))
    path, body = ("/v1/chat/completions", CHAT) if chat else ("/v1/completions", BODY)
    ref = direct[1 if chat else 0]
    ref_text = ref["choices"][0]["message"]["content"] if chat else ref["choices"][0]["text"]
    status, r = post(router.url + path, body)
    got = r["choices"][0]["message"]["content"] if chat else r["choices"][0]["text"]
    assert status == 200 and got == ref_text and r["usage"] == ref["usage"]
    status, ev, _ = stream(router.url + path, {**body, "stream_options": {"include_usage": True}})
    assert status == 200 and text_of(ev) == ref_text and ev[-1] == "[DONE]"
    assert ev[-2]["usage"] == ref["usage"]
    finish = [e["choices"][0]["finish_reason"] for e in ev if isinstance(e, dict) and e["choices"]]
    assert finish[-1] == "length" and finish.count("length") == 1
    assert state(urls[0])["num_pinned"] == 0
    assert outcome_count(router.url, "ok", "tandem") == 2, {
        k: v for k, v in router_metrics(router.url).items()
        if k.startswith("baton_router_requests_total")}


def test_malformed_and_auth(module_procs, urls):
    router = module_procs.router(urls, "--api-key", "sekret")
    key = {"Authorization": "Bearer sekret"}
    status, r = post(router.url + "/v1/completions", BODY)
    assert status == 401
    status, r = post(router.url + "/v1/completions", {"model": "m", "prompt": "a",
                                                      "max_tokens": -3}, key)
    assert status == 400 and r["error"]["param"] == "max_tokens"
    status, r = post(router.url + "/v1/chat/completions", {"model": "m", "messages": []}, key)
    assert status == 400 and "messages" in r["error"]["message"]
    req = urllib.request.Request(router.url + "/v1/completions", data=b"{not json",
                                 method="POST", headers=key)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 400
    for target in (router.url, urls[0]):  # not UTF-8: 400 naming the body, counted
        req = urllib.request.Request(target + "/v1/completions", data=b'{"prompt": "\xff\xfe"}',
                                     method="POST", headers=key)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req)
        assert e.value.code == 400 and json.loads(e.value.read())["error"]["param"] == "body"
    status, r = post(router.url + "/v1/completions", BODY, key)
    assert status == 200
    assert outcome_count(router.url, "bad_request") == 4
    assert sum(v for k, v in router_metrics(router.url).items()
               if k.startswith("baton_router_requests_total")) == 6
    assert outcome_count(router.url, "unauthorized") == 1


def test_api_key_passes_through(procs):
    emu = procs.emulator("unified", "--api-key", "k2")
    router = procs.router([emu.url], "--backend-api-key", "k2")  # scrapes with the key too
    status, _ = post(router.url + "/v1/completions", BODY)
    assert status == 200
    router2 = procs.router([emu.url])  # the client's header is forwarded
    assert post(router2.url + "/v1/completions", BODY, {"Authorization": "Bearer k2"})[0] == 200
    assert post(router2.url + "/v1/completions", BODY)[0] == 401


def post_get_json(url: str):
    import json

    with urllib.request.urlopen(url) as r:
        return r.status, json.loads(r.read())


def test_null_int_fields_take_the_default(module_procs, urls):
    router = module_procs.router(urls, "--heuristic", "round_robin")
    for target in (router.url, urls[0]):
        status, r = post(target + "/v1/completions", {**BODY, "max_tokens": None, "n": None})
        assert status == 200 and r["usage"]["completion_tokens"] == 16  # vLLM's default
        status, r = post(target + "/v1/chat/completions",
                         {**CHAT, "max_completion_tokens": None, "max_tokens": 5})
        assert status == 200 and r["usage"]["completion_tokens"] == 5
    # the router forwards the nulls: both parsers take the default
    status, r = post(router.url + "/v1/chat/completions",
                     {**CHAT, "max_completion_tokens": None, "max_tokens": None, "n": None})
    assert status == 200 and r["usage"]["completion_tokens"] == oa.DEFAULT_CHAT_MAX_TOKENS
    assert outcome_count(router.url, "ok") == 3


def test_transfers_out_drops_at_the_follows_first_token(procs, tmp_path):
    import json
    import threading
    import time

    from .test_faults import set_faults

    p, d = procs.emulator(), procs.emulator()
    pol = fixed_policy(tmp_path / "p", ["prefill", "decode"], 0, 1, mode="disaggregated")
    router = procs.router([p.url, d.url], "--policy", str(pol))
    set_faults(d.url, slowdown=30)  # ~0.2 s per decode token: the windows are observable
    got_first, events = threading.Event(), []

    def client():
        req = urllib.request.Request(
            router.url + "/v1/completions", data=json.dumps({**BODY, "stream": True}).encode(),
            method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            for raw in r:
                if raw.startswith(b"data:"):
                    events.append(raw)
                    got_first.set()

    def gauges():
        m = router_metrics(router.url)
        return (m[f'baton_router_backend_transfers_out{{backend="{p.url}"}}'],
                m[f'baton_router_backend_inflight{{backend="{d.url}"}}'])

    t = threading.Thread(target=client)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while gauges()[1] == 0 and time.monotonic() < deadline:  # the decode leg is open
            time.sleep(0.01)
        if not got_first.is_set():
            assert gauges()[0] == 1  # handed over, no token yet
        assert got_first.wait(10)
        out, open_legs = gauges()
        assert out == 0 and (open_legs == 1 or not t.is_alive())  # mid-stream: not pending
    finally:
        t.join(timeout=30)
    assert not t.is_alive() and events[-1].strip() == b"data: [DONE]"
    assert gauges() == (0, 0) and outcome_count(router.url, "ok", "disaggregated") == 1


def test_every_malformed_body_is_a_counted_400_naming_the_field(module_procs, urls):
    """Bodies that used to raise past the parser (a 500, no outcome counted) or to fail a leg."""
    router = module_procs.router(urls)
    deep = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # RecursionError
    cases = [("/v1/completions", deep, 400, "body"),
             ("/v1/chat/completions", json.dumps({"model": "m", "messages": [
                 {"role": "user", "content": [{"type": "text", "text": 5}]}]}).encode(), 400,
              "messages[0].content"),
             ("/v1/completions", json.dumps({**BODY, "min_tokens": "x"}).encode(), 400,
              "min_tokens"),
             ("/v1/completions", b" " * (64 * 2**20 + 1), 413, "body")]
    for path, data, code, param in cases:
        req = urllib.request.Request(router.url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=30)
        except OSError:  # the router may answer 413 and close before the upload ends
            assert code == 413
            continue
        assert e.value.code == code
        assert json.loads(e.value.read())["error"]["param"] == param
    assert outcome_count(router.url, "bad_request") == len(cases)
    assert sum(v for k, v in router_metrics(router.url).items()
               if k.startswith("baton_router_requests_total")) == len(cases)
