"""A misbehaving OpenAI-compatible backend for router tests.

``python -m tests.runtime.fake_backend --port N --mode MODE``; modes:

- ``error_event``: every generation request answers 200 with an SSE error event then
  ``[DONE]`` (what vLLM sends when a streaming request fails after the header);
- ``hang``: generation requests never answer (until the client goes away);
- ``stop_early``: non-streaming completions answer one token with ``finish_reason: stop``
  and ``kv_transfer_params: null`` (a Lead whose stop criteria ended it before k tokens).

``/health`` and ``/metrics`` (empty page) answer 200; ``GET /fake/state`` reports
``{"requests": N, "open": M, "last_body": {...}}`` (requests received, handlers still
running, the last generation body).
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=("error_event", "hang", "stop_early"), required=True)
    args = p.parse_args()
    state: dict = {"requests": 0, "open": 0, "last_body": None}

    async def generate(request: web.Request) -> web.StreamResponse:
        state["requests"] += 1
        state["open"] += 1
        try:
            body = state["last_body"] = await request.json()
            if args.mode == "hang":
                await asyncio.sleep(3600)
            if args.mode == "stop_early":
                choice = {"index": 0, "text": " early", "logprobs": None,
                          "finish_reason": "stop", "stop_reason": None,
                          "prompt_token_ids": [1, 2], "token_ids": [7]}
                if request.path.endswith("/chat/completions"):
                    choice = {"index": 0, "finish_reason": "stop", "logprobs": None,
                              "message": {"role": "assistant", "content": " early"},
                              "token_ids": [7]}
                return web.json_response({
                    "id": "cmpl-x", "object": "text_completion", "created": 0,
                    "model": body.get("model", "m"), "choices": [choice],
                    "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
                    "kv_transfer_params": None})
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            err = {"error": {"object": "error", "message": "injected in-stream failure",
                             "type": "InternalServerError", "param": None, "code": 500}}
            await resp.write(b"data: " + json.dumps(err).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        finally:
            state["open"] -= 1

    async def ok(request: web.Request) -> web.Response:
        return web.Response(status=200, text="")

    async def get_state(request: web.Request) -> web.Response:
        return web.json_response(state)

    app = web.Application()
    app.router.add_post("/v1/completions", generate)
    app.router.add_post("/v1/chat/completions", generate)
    app.router.add_get("/health", ok)
    app.router.add_get("/metrics", ok)
    app.router.add_get("/fake/state", get_state)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None,
                handler_cancellation=True, print=lambda *a: None)


if __name__ == "__main__":
    main()
