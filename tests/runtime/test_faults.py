"""Injected faults: every failure is retried before the first token or reported, and counted."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

from .conftest import PY, fixed_policy, free_port, post, stream, text_of
from .test_router import BODY, outcome_count, router_metrics


def set_faults(url: str, **faults) -> None:
    req = urllib.request.Request(url + "/emulator/faults", data=json.dumps(faults).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req).read()


def retries(url: str, reason: str) -> float:
    return router_metrics(url).get(f'baton_router_retries_total{{reason="{reason}"}}', 0.0)


def test_refused_connection_is_retried_elsewhere(procs, tmp_path):
    a, b = procs.emulator(), procs.emulator()
    pol = fixed_policy(tmp_path / "p", ["unified"] * 2, 0, 0)  # always colocated on a
    router = procs.router([a.url, b.url], "--policy", str(pol), "--scrape-interval-s", "60")
    procs.kill(a)  # the router still believes a is healthy (no scrape for 60 s)
    status, ev, _ = stream(router.url + "/v1/completions", BODY)
    assert status == 200 and ev[-1] == "[DONE]" and text_of(ev)
    assert retries(router.url, "refused") == 1
    status, r = post(router.url + "/v1/completions", BODY)  # a is cooling down: no retry
    assert status == 200 and retries(router.url, "refused") == 1
    assert outcome_count(router.url, "ok") == 2


def test_5xx_and_null_kv_params_fall_back(procs, tmp_path):
    p, d = procs.emulator(), procs.emulator()
    pol = fixed_policy(tmp_path / "p", ["prefill", "decode"], 0, 1, mode="disaggregated")
    router = procs.router([p.url, d.url], "--policy", str(pol), "--cooldown-s", "0")
    set_faults(p.url, null_kv_params=True)
    status, r = post(router.url + "/v1/completions", BODY)
    assert status == 200 and r["usage"]["completion_tokens"] == 8
    assert retries(router.url, "null_kv_params") == 1
    assert json.loads(urllib.request.urlopen(p.url + "/emulator/state").read())[
        "num_pinned"] == 0
    set_faults(p.url, null_kv_params=False, status=503)
    status, ev, _ = stream(router.url + "/v1/completions", BODY)
    assert status == 200 and ev[-1] == "[DONE]"
    assert retries(router.url, "status_5xx") == 1
    set_faults(d.url, status=500)  # nobody can serve: 502 after the tries, counted
    status, r = post(router.url + "/v1/completions", BODY)
    assert status == 502 and "no backend" in r["error"]["message"]
    assert outcome_count(router.url, "failed") == 1
    assert outcome_count(router.url, "ok") == 2


def test_slow_backend_times_out_and_is_retried(procs, tmp_path):
    slow, fast = procs.emulator("unified", "--slowdown", "200"), procs.emulator()
    pol = fixed_policy(tmp_path / "p", ["unified"] * 2, 0, 0)
    router = procs.router([slow.url, fast.url], "--policy", str(pol),
                          "--backend-timeout-s", "0.5")
    t0 = time.monotonic()
    status, r = post(router.url + "/v1/completions", BODY)
    assert status == 200 and time.monotonic() - t0 < 5
    assert retries(router.url, "timeout") == 1


def test_backend_killed_mid_stream_ends_with_error_event(procs, tmp_path):
    a, b = procs.emulator(), procs.emulator()
    pol = fixed_policy(tmp_path / "p", ["unified"] * 2, 0, 0)
    router = procs.router([a.url, b.url], "--policy", str(pol))
    got: dict = {}

    def client():
        got["result"] = stream(router.url + "/v1/completions", {**BODY, "max_tokens": 400})

    t = threading.Thread(target=client)
    t.start()
    time.sleep(1.0)  # ~60 tokens streamed by then
    procs.kill(a)
    t.join(timeout=20)
    assert not t.is_alive(), "the client hung"
    status, ev, _ = got["result"]
    assert status == 200 and len(text_of(ev).split()) < 400
    assert "error" in ev[-2] and ev[-1] == "[DONE]"
    assert outcome_count(router.url, "stream_error") == 1


def test_stream_dropped_after_tokens_ends_with_error_event(procs, tmp_path):
    a, b = procs.emulator(), procs.emulator()
    pol = fixed_policy(tmp_path / "p", ["unified"] * 2, 0, 0)
    router = procs.router([a.url, b.url], "--policy", str(pol))
    set_faults(a.url, drop_after_tokens=3)
    status, ev, _ = stream(router.url + "/v1/completions", BODY)
    # tokens left a before the drop, so the router could not retry: error event
    assert status == 200 and "error" in ev[-2] and len(text_of(ev).split()) == 3
    assert retries(router.url, "stream_dropped") == 1
    assert outcome_count(router.url, "stream_error") == 1


def test_stream_dropped_before_any_token_is_retried(procs, tmp_path):
    a, b = procs.emulator(), procs.emulator()
    pol = fixed_policy(tmp_path / "p", ["unified"] * 2, 0, 0)
    router = procs.router([a.url, b.url], "--policy", str(pol), "--cooldown-s", "0")
    set_faults(a.url, drop_before_first_token=True)
    for path, body in (("/v1/completions", BODY),
                       ("/v1/chat/completions",  # the role chunk went out before the drop
                        {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                         "max_tokens": 4})):
        status, ev, _ = stream(router.url + path, body)
        assert status == 200 and ev[-1] == "[DONE]" and len(text_of(ev).split()) == \
            body["max_tokens"]
        assert not any("error" in e for e in ev if isinstance(e, dict))
        assert sum(1 for e in ev if isinstance(e, dict) and e["choices"]
                   and "role" in (e["choices"][0].get("delta") or {})) == int("chat" in path)
    assert retries(router.url, "stream_dropped") == 2
    assert outcome_count(router.url, "ok") == 2 and outcome_count(router.url, "stream_error") == 0


def test_overload_answers_429_and_no_backend_503(procs):
    emu = procs.emulator()
    router = procs.router([emu.url], "--max-inflight", "1")
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        post(router.url + "/v1/completions", {**BODY, "max_tokens": 60})[0])) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join(timeout=20)
    assert sorted(results) == [200, 429]
    assert outcome_count(router.url, "rejected_overload") == 1
    procs.kill(emu)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status, r = post(router.url + "/v1/completions", BODY)
        if status == 503:
            break
        time.sleep(0.2)
    assert status == 503 and "no healthy backend" in r["error"]["message"]


def test_router_against_xpyd_sim(procs):
    """A third-party OpenAI-compatible emulator (no vLLM metric names; colocated)."""
    port = free_port()
    sim = procs.start([str(Path(PY).parent / "xpyd-sim"), "serve",
                       "--mode", "dual", "--host", "127.0.0.1", "--port", str(port),
                       "--model", "m", "--prefill-delay-ms", "5",
                       "--decode-delay-per-token-ms", "2"],
                      f"http://127.0.0.1:{port}/health", "xpyd")
    assert sim.poll() is None
    router = procs.router([f"http://127.0.0.1:{port}"], "--heuristic", "join_shortest_queue")
    body = {**BODY, "ignore_eos": True}
    status, r = post(router.url + "/v1/completions", body)
    assert status == 200 and r["usage"]["completion_tokens"] == 8
    status, ev, _ = stream(router.url + "/v1/chat/completions",
                           {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": 5, "ignore_eos": True,
                            "stream_options": {"include_usage": True}})
    assert status == 200 and ev[-1] == "[DONE]" and ev[-2]["usage"]["completion_tokens"] == 5
    assert outcome_count(router.url, "ok") == 2


def test_in_stream_error_event_is_retried_not_relayed(procs, tmp_path):
    """A 200 stream carrying only an error event + [DONE] is a failed leg, not output."""
    bad, good = procs.fake("error_event"), procs.emulator()
    pol = fixed_policy(tmp_path / "p", ["unified"] * 2, 0, 0)  # always colocated on bad
    router = procs.router([bad.url, good.url], "--policy", str(pol), "--cooldown-s", "0")
    status, ev, _ = stream(router.url + "/v1/completions", BODY)
    assert status == 200 and ev[-1] == "[DONE]" and text_of(ev)
    assert not any("error" in e for e in ev if isinstance(e, dict))
    assert retries(router.url, "bad_response") == 1
    assert outcome_count(router.url, "ok") == 1 and outcome_count(router.url, "stream_error") == 0
    # tandem: the Follow's error event after the Lead's chunk ends the stream with an error
    pol2 = fixed_policy(tmp_path / "p2", ["unified"] * 2, 1, 0, split_bin=2)
    router2 = procs.router([bad.url, good.url], "--policy", str(pol2))
    status, ev, _ = stream(router2.url + "/v1/completions",
                           {**BODY, "stream_options": {"include_usage": True}})
    assert status == 200 and ev[-1] == "[DONE]" and "error" in ev[-2]
    assert not any(isinstance(e, dict) and e.get("usage") for e in ev)
    assert outcome_count(router2.url, "stream_error") == 1
    assert outcome_count(router2.url, "ok") == 0


def _disconnect_after(url: str, body: dict, seconds: float) -> None:
    """Send a request on a raw socket and hang up after ``seconds``, unanswered."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    data = json.dumps(body).encode()
    with socket.create_connection((u.hostname, u.port)) as s:
        s.sendall(f"POST {u.path} HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: "
                  f"application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        s.settimeout(seconds)
        try:
            assert not s.recv(1024), "the hanging backend answered"
        except TimeoutError:
            pass


def test_client_disconnect_releases_the_backend_at_once(procs):
    hang = procs.fake("hang")
    router = procs.router([hang.url], "--max-inflight", "1")
    for body in (BODY, {**BODY, "stream": True}):
        _disconnect_after(router.url + "/v1/completions", body, 0.5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        m = router_metrics(router.url)
        with urllib.request.urlopen(hang.url + "/fake/state") as r:
            fake = json.loads(r.read())
        if m.get(f'baton_router_backend_inflight{{backend="{hang.url}"}}') == 0 and \
                m.get("baton_router_requests_inflight") == 0 and fake["open"] == 0:
            break
        time.sleep(0.1)
    assert m.get(f'baton_router_backend_inflight{{backend="{hang.url}"}}') == 0
    assert m.get("baton_router_requests_inflight") == 0
    assert outcome_count(router.url, "client_disconnected") == 2
    assert sum(v for k, v in m.items() if k.startswith("baton_router_requests_total")) == 2
    assert sum(v for k, v in m.items() if k.startswith("baton_router_retries_total")) == 0
    assert (fake["requests"], fake["open"]) == (2, 0)  # the legs were closed


def test_refused_tandem_follow_is_retried(procs, tmp_path):
    """The Follow stream opens before the Lead's tokens go out: a refusal is retryable."""
    lead, follow, spare = procs.emulator(), procs.emulator(), procs.emulator()
    pol = fixed_policy(tmp_path / "p", ["unified"] * 3, 0, 1, split_bin=2)  # tandem 0 -> 1
    router = procs.router([lead.url, follow.url, spare.url], "--policy", str(pol),
                          "--scrape-interval-s", "60")
    procs.kill(follow)  # still believed healthy (no scrape for 60 s)
    status, ev, _ = stream(router.url + "/v1/completions", BODY)
    assert status == 200 and ev[-1] == "[DONE]" and len(text_of(ev).split()) == 8
    assert not any("error" in e for e in ev if isinstance(e, dict))
    assert retries(router.url, "refused") == 1
    assert outcome_count(router.url, "ok") == 1
    for u in (lead.url, spare.url):  # nothing left running (an emulator frees its slot
        deadline = time.monotonic() + 5.0  # just after the last chunk goes out)
        while (running := json.loads(urllib.request.urlopen(u + "/emulator/state").read())[
                "num_running"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert running == 0


def test_tandem_lead_keeps_stop_criteria_and_its_early_stop_is_the_answer(procs, tmp_path):
    lead, follow = procs.fake("stop_early"), procs.emulator()
    pol = fixed_policy(tmp_path / "p", ["unified"] * 2, 0, 1, split_bin=2)  # tandem, k = 4
    router = procs.router([lead.url, follow.url], "--policy", str(pol))
    body = {**BODY, "stop": ["zzz"], "stop_token_ids": [5], "min_tokens": 6}
    status, r = post(router.url + "/v1/completions", body)
    assert status == 200 and r["choices"][0]["text"] == " early"
    assert r["choices"][0]["finish_reason"] == "stop" and r["usage"]["completion_tokens"] == 1
    sent = json.loads(urllib.request.urlopen(lead.url + "/fake/state").read())["last_body"]
    assert sent["stop"] == ["zzz"] and sent["stop_token_ids"] == [5]
    assert "ignore_eos" not in sent and sent["min_tokens"] == 4 and sent["max_tokens"] == 4
    status, ev, _ = stream(router.url + "/v1/completions",
                           {**body, "stream_options": {"include_usage": True}})
    assert status == 200 and text_of(ev) == " early" and ev[-1] == "[DONE]"
    assert ev[-3]["choices"][0]["finish_reason"] == "stop" and ev[-2]["usage"]
    assert outcome_count(router.url, "ok", "tandem") == 2
    assert sum(v for k, v in router_metrics(router.url).items()
               if k.startswith("baton_router_retries_total")) == 0
    assert json.loads(urllib.request.urlopen(follow.url + "/emulator/state").read())[
        "num_iterations"] == 0  # no Follow
