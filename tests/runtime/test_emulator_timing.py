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
