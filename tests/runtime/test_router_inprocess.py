"""The router against scripted backends in this process (odd answers no emulator gives)."""

from __future__ import annotations

import asyncio
import json

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from runtime import router as router_mod
from runtime.router import Router, build_parser

CHUNK = {"id": "cmpl-x", "object": "text_completion", "model": "m",
         "choices": [{"index": 0, "text": " a", "finish_reason": None}]}
ANSWER = {"id": "cmpl-x", "object": "text_completion", "model": "m",
          "choices": [{"index": 0, "text": " a", "finish_reason": "length"}],
          "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}


def sse(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def backend_app(stream_bytes: list[bytes], answer) -> web.Application:
    """Streams ``stream_bytes`` (one write each), or answers ``answer`` as JSON."""
    async def gen(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.Response(body=json.dumps(answer).encode(),
                                content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for b in stream_bytes:
            await resp.write(b)
        await resp.write_eof()
        return resp

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="")

    app = web.Application()
    app.router.add_post("/v1/completions", gen)
    app.router.add_get("/metrics", ok)
    app.router.add_get("/health", ok)
    return app


async def with_router(backends: list[web.Application], fn):
    servers = [TestServer(a, host="127.0.0.1") for a in backends]
    for s in servers:
        await s.start_server()
    args = build_parser().parse_args(
        ["--backends", *[f"http://127.0.0.1:{s.port}" for s in servers],
         "--scrape-interval-s", "0.02", "--heuristic", "round_robin"])
    router = Router(args)
    rs = TestServer(router.app(), host="127.0.0.1")
    await rs.start_server()
    url = f"http://127.0.0.1:{rs.port}"
    try:
        async with ClientSession() as session:
            for _ in range(500):  # every backend scraped once
                if all(b.scrape_ok for b in router.backends):
                    break
                await asyncio.sleep(0.01)
            return await fn(session, url, router)
    finally:
        await rs.close()
        for s in servers:
            await s.close()


def outcomes(router: Router) -> dict[str, float]:
    out = {}
    for metric in router.metrics.requests.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.value:
                out[sample.labels["outcome"]] = out.get(sample.labels["outcome"], 0) \
                    + sample.value
    return out


def events_of(data: bytes) -> list:
    out = []
    for line in data.decode().splitlines():
        if line.startswith("data:"):
            d = line[5:].strip()
            out.append(d if d == "[DONE]" else json.loads(d))
    return out


def test_a_stream_event_that_is_not_an_object_ends_the_stream_with_an_error_event():
    """``data: 5`` after a token: used to raise TypeError in the relay (stream cut, no error
    event, counted failed); now an error event, [DONE], counted stream_error."""
    app = backend_app([sse(CHUNK), b"data: 5\n\n", b"data: [DONE]\n\n"], ANSWER)

    async def fn(session, url, router):
        async with session.post(url + "/v1/completions",
                                json={"prompt": "a b", "max_tokens": 3, "stream": True}) as r:
            return r.status, events_of(await r.read()), outcomes(router)
    status, ev, counted = asyncio.run(with_router([app], fn))
    assert status == 200 and ev[0] == CHUNK
    assert ev[-2]["object"] == "error" and ev[-1] == "[DONE]"
    assert counted == {"stream_error": 1}


def test_a_json_answer_that_is_not_an_object_is_retried_elsewhere():
    """A non-streaming answer ``[]`` was relayed as a 200; it is a bad response, retried."""
    bad, good = backend_app([], []), backend_app([], ANSWER)

    async def fn(session, url, router):
        got = []
        for _ in range(2):  # round robin: one of the two lands on the bad backend first
            async with session.post(url + "/v1/completions",
                                    json={"prompt": "a b", "max_tokens": 1}) as r:
                got.append((r.status, await r.json()))
        return got, outcomes(router)
    got, counted = asyncio.run(with_router([bad, good], fn))
    assert got == [(200, ANSWER), (200, ANSWER)]
    assert counted == {"ok": 2}


def test_an_unexpected_error_after_the_first_byte_still_ends_with_an_error_event(monkeypatch):
    """Whatever goes wrong once the client has bytes, the stream ends with an error event
    (it used to be cut: the client saw no error event and no [DONE])."""
    app = backend_app([sse(CHUNK), sse(CHUNK), b"data: [DONE]\n\n"], ANSWER)
    real_finish = router_mod.Sink.finish
    calls = []

    async def broken_finish(self, data, token=False):
        calls.append(data)
        if len(calls) == 1:  # the relay's last write: its bytes go out, then a bug
            await self.write(data[:data.index(b"data: [DONE]")], token)
            raise KeyError("a bug")
        await real_finish(self, data, token)

    monkeypatch.setattr(router_mod.Sink, "finish", broken_finish)

    async def fn(session, url, router):
        async with session.post(url + "/v1/completions",
                                json={"prompt": "a b", "max_tokens": 3, "stream": True}) as r:
            return r.status, events_of(await r.read()), outcomes(router)
    status, ev, counted = asyncio.run(with_router([app], fn))
    assert len(calls) == 2 and status == 200 and ev[:2] == [CHUNK, CHUNK]
    assert ev[-2]["object"] == "error" and ev[-1] == "[DONE]"
    assert counted == {"stream_error": 1}


def test_startup_garbage_is_collected_not_frozen(monkeypatch):
    """gc.freeze() after start-up must not make the start-up's cyclic garbage immortal."""
    import gc
    import weakref

    class Node:
        pass

    monkeypatch.setattr(router_mod.web, "run_app", lambda *a, **kw: None)
    was_enabled = gc.isenabled()
    gc.disable()  # only the explicit collections decide
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: only the cyclic collector frees it
        ref = weakref.ref(a)
        del a, b
        router_mod.main(["--backends", "http://127.0.0.1:9"])
        assert ref() is None
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()
