"""The emulator's request log and when it writes tokens (orderings, not speed)."""

from __future__ import annotations

import json
import urllib.request

from .conftest import post, stream


def request_log(url: str, clear: bool = False) -> list[dict]:
    with urllib.request.urlopen(url + "/emulator/requests" + ("?clear=1" if clear else "")) as r:
        return json.loads(r.read())


def test_first_token_is_written_when_sampled_not_with_the_second(procs):
    """Each chunk goes out as its token is sampled; the finish reason rides on the last."""
    # slowed down 20x: a decode iteration takes ~0.15 s, far more than a chunk write
    emu = procs.emulator("unified", "--slowdown", "20")
    status, ev, _ = stream(emu.url + "/v1/completions",
                           {"model": "m", "prompt": "a b c d", "max_tokens": 2},
                           headers={"X-Request-Id": "req-1"})
    assert status == 200
    chunks = [e for e in ev if isinstance(e, dict) and e["choices"]]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "length"]
    (rec,) = request_log(emu.url)
    assert rec["rid"] == "req-1" and rec["output_tokens"] == 2
    assert rec["recv_s"] <= rec["arrival_s"] <= rec["first_scheduled_s"] \
        < rec["first_token_s"] < rec["finish_s"]
    # written after it was sampled, before the next token was (a held-back first token
    # would go out only with the second one, at finish_s)
    assert rec["first_token_s"] <= rec["first_sent_s"] < rec["finish_s"] <= rec["last_sent_s"]


def test_request_log_covers_both_apis_and_clears(procs):
    emu = procs.emulator()
    post(emu.url + "/v1/completions", {"model": "m", "prompt": "x y", "max_tokens": 3},
         headers={"X-Request-Id": "plain"})
    stream(emu.url + "/v1/chat/completions",
           {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
           headers={"X-Request-Id": "chat"})
    log = {r["rid"]: r for r in request_log(emu.url, clear=True)}
    assert set(log) == {"plain", "chat"}
    assert log["plain"]["output_tokens"] == 3 and log["plain"]["first_sent_s"] > 0
    assert request_log(emu.url) == []


def _state(url: str) -> dict:
    with urllib.request.urlopen(url + "/emulator/state") as r:
        return json.loads(r.read())


def _wait_state(url: str, pred, timeout_s: float = 10.0) -> dict:
    import time
    deadline = time.monotonic() + timeout_s
    while True:
        s = _state(url)
        if pred(s) or time.monotonic() > deadline:
            return s
        time.sleep(0.02)


def test_client_that_goes_away_frees_its_kv_and_slot_at_once(procs):
    """As vLLM: a disconnected client aborts its request (non-streaming, or streaming before
    its first token), not when its generation would have ended."""
    import socket

    # 20x slower: the 4000-token prefill alone takes seconds, the 2000 tokens minutes
    emu = procs.emulator("unified", "--slowdown", "20")
    for streamed in (False, True):
        body = json.dumps({"model": "m", "prompt": "w " * 4000, "max_tokens": 2000,
                           "stream": streamed}).encode()
        s = socket.create_connection(("127.0.0.1", emu.port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                  b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        st = _wait_state(emu.url, lambda st: st["num_running"] == 1)
        assert st["num_running"] == 1 and st["kv_used_blocks"] > 0, st
        s.close()
        st = _wait_state(emu.url, lambda st: st["num_running"] == 0)
        assert (st["num_running"], st["num_waiting"], st["kv_used_blocks"]) == (0, 0, 0), st
