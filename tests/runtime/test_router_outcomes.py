"""A streamed answer is counted ``ok`` even when the client hangs up right after ``[DONE]``
(nothing may await after the last byte: a cancelled handler counts client_disconnected)."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlparse

from .test_router import outcome_count

BODY = {"model": "m", "prompt": "one two three", "max_tokens": 3, "stream": True,
        "stream_options": {"include_usage": True}}


def _stream_and_hang_up(url: str) -> bytes:
    """Raw HTTP/1.1 streaming request; the socket closes as soon as ``[DONE]`` is read."""
    u = urlparse(url)
    body = json.dumps(BODY).encode()
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        got = b""
        while b"[DONE]" not in got:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    return got


def test_hang_up_after_done_is_still_ok(procs):
    emu = procs.emulator()
    router = procs.router([emu.url], "--heuristic", "round_robin")
    for _ in range(20):
        assert b"[DONE]" in _stream_and_hang_up(router.url)
    assert outcome_count(router.url, "ok") == 20
    assert outcome_count(router.url, "client_disconnected") == 0
