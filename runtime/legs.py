"""One request leg to one backend: body rewriting per protocol, calls, and failure kinds.

One job: build the bodies of the protocol notes' legs and run them, turning every way a
backend can fail into :class:`LegError` (``kind`` in :data:`FAILURE_KINDS`) or
:class:`BackendRejected` (a 4xx the client should see).

Legs (protocol notes 1.3, 1.5, 7):

- prefill / Lead: the client body with ``kv_transfer_params = {do_remote_decode: true, ...}``,
  ``stream`` false, no ``stream_options``, ``max_tokens`` (and ``max_completion_tokens`` if
  present) = k (1 for disaggregation); for k = 1 ``ignore_eos`` true and ``stop``/
  ``stop_token_ids``/``min_tokens``/``min_completion_tokens`` removed; for k > 1 the client's
  stop criteria kept (min-tokens capped at k) plus ``return_token_ids``;
- decode (k = 1): the client body unchanged plus the Lead's ``kv_transfer_params`` verbatim;
- Follow (k > 1): ``/v1/completions`` with ``prompt`` = the Lead's prompt token ids + its k
  output token ids, ``max_tokens`` = N - k, the client's sampling fields, the Lead's
  ``kv_transfer_params`` verbatim, ``stream_options.include_usage`` on (the router sums usage).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp

FAILURE_KINDS = ("refused", "timeout", "status_5xx", "stream_dropped", "null_kv_params",
                 "bad_response")
"""Why a leg failed (label of ``baton_router_retries_total``)."""
PREFILL_KV_PARAMS = {"do_remote_decode": True, "do_remote_prefill": False,
                     "remote_engine_id": None, "remote_block_ids": None, "remote_host": None,
                     "remote_port": None}
"""What the prefill leg asks for (NixlConnector)."""
_STRIP_ON_LEAD = ("stream_options", "stop", "stop_token_ids", "min_tokens",
                  "min_completion_tokens")
_CHAT_ONLY = ("messages", "max_completion_tokens", "tools", "tool_choice", "response_format",
              "logprobs", "top_logprobs", "chat_template_kwargs", "add_generation_prompt",
              "continue_final_message", "echo", "stream_options", "return_token_ids",
              "min_completion_tokens", "parallel_tool_calls", "chat_template", "documents")


class LegError(Exception):
    """A backend failed a leg; the router may retry elsewhere if nothing reached the client."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class BackendRejected(Exception):
    """A backend answered 4xx: the request itself is at fault; relay status and body."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"backend answered {status}")
        self.status = status
        self.body = body


def lead_body(body: dict, k: int, token_ids: bool) -> dict:
    """The prefill/Lead leg's body (k output tokens, hand-off requested).

    For k = 1 (a prefill) the stop criteria are stripped and EOS ignored, so the leg ends
    length-capped and returns ``kv_transfer_params`` (protocol notes 1.3). For k > 1 the
    Lead's tokens are the client's output: its ``stop``/``stop_token_ids``/EOS stay (a Lead
    that stops early is the whole answer; one that ends length-capped hands over) and the
    min-tokens fields are capped at k.
    """
    strip = _STRIP_ON_LEAD if k <= 1 else ("stream_options",)
    out = {key: v for key, v in body.items() if key not in strip}
    out.update(stream=False, max_tokens=k, kv_transfer_params=dict(PREFILL_KV_PARAMS))
    if k <= 1:
        out["ignore_eos"] = True
    else:
        for name in ("min_tokens", "min_completion_tokens"):
            if isinstance(body.get(name), int):
                out[name] = min(body[name], k)
    if "max_completion_tokens" in body:
        out["max_completion_tokens"] = k
    if token_ids:
        out["return_token_ids"] = True
    return out


def decode_body(body: dict, kv_params: dict) -> dict:
    """The decode leg (k = 1): the client's body plus the producer's params, verbatim."""
    return {**body, "kv_transfer_params": kv_params}


def follow_body(body: dict, token_prompt: list[int], max_tokens: int, k: int,
                kv_params: dict | None) -> dict:
    """The Follow leg (k > 1) on ``/v1/completions`` (see the module docstring)."""
    out = {key: v for key, v in body.items() if key not in _CHAT_ONLY}
    out.update(prompt=token_prompt, max_tokens=max_tokens,
               stream_options={"include_usage": True})
    if kv_params is not None:
        out["kv_transfer_params"] = kv_params
    else:
        out.pop("kv_transfer_params", None)
    if "min_tokens" in body:
        out["min_tokens"] = max(0, int(body["min_tokens"]) - k)
    return out


def _classify(e: BaseException) -> LegError:
    if isinstance(e, aiohttp.ClientConnectorError):
        return LegError("refused", str(e))
    if isinstance(e, TimeoutError):
        return LegError("timeout", "no answer within the backend timeout")
    if isinstance(e, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return LegError("stream_dropped", str(e))
    return LegError("bad_response", repr(e))


async def _check_status(r: aiohttp.ClientResponse) -> None:
    if r.status >= 500:
        raise LegError("status_5xx", f"{r.status}: {(await r.text())[:200]}")
    if r.status >= 400:
        raise BackendRejected(r.status, await r.read())


def _post(session: aiohttp.ClientSession, url: str, body: dict | bytes, headers: dict):
    """POST a body: a dict as JSON, bytes (JSON already) unchanged."""
    if isinstance(body, bytes):
        return session.post(url, data=body, headers={**headers, **_JSON})
    return session.post(url, json=body, headers=headers)


_JSON = {"Content-Type": "application/json"}


async def call_json(session: aiohttp.ClientSession, url: str, body: dict | bytes,
                    headers: dict) -> dict:
    """A non-streaming leg; returns the parsed response (see :func:`call_json_raw`)."""
    return (await call_json_raw(session, url, body, headers))[0]


async def call_json_raw(session: aiohttp.ClientSession, url: str, body: dict | bytes,
                        headers: dict) -> tuple[dict, bytes]:
    """A non-streaming leg; returns the parsed response and its bytes.

    ``body`` is a dict, or JSON bytes sent as they are.

    Raises:
        LegError: refused, timeout, 5xx, dropped connection or unparsable body.
        BackendRejected: a 4xx answer.
    """
    try:
        async with _post(session, url, body, headers) as r:
            await _check_status(r)
            data = await r.read()  # read and close the whole body (protocol notes 1.3)
    except (LegError, BackendRejected):
        raise
    except (TimeoutError, aiohttp.ClientError) as e:
        raise _classify(e) from e
    try:
        parsed = json.loads(data)
    except ValueError as e:
        raise LegError("bad_response", f"not JSON: {data[:100]!r}") from e
    if not isinstance(parsed, dict):
        raise LegError("bad_response", f"not a JSON object: {data[:100]!r}")
    return parsed, data


class Stream:
    """An open streaming leg.

    Iterate :meth:`batches` (or :meth:`events`) for ``(raw bytes, payload)`` pairs.
    """

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def batches(self) -> AsyncIterator[list[tuple[bytes, dict | None]]]:
        """SSE events as they arrive, one batch per network read.

        A batch is every complete event of one read (a relay writes a batch at once); the
        payload is None for ``[DONE]`` (always last).

        Lines are ``data: <json>`` (a JSON value split over several ``data:`` lines of one
        event is joined); blank lines, comments and other fields are skipped.

        Raises:
            LegError: ``stream_dropped`` when the stream ends without ``[DONE]`` or the
                connection breaks, ``timeout`` when the backend goes silent,
                ``bad_response`` for an event whose data is not JSON (e.g. a plain-text
                error; it used to be glued to the following events, which were then lost).
        """
        content = self.resp.content
        rest = b""   # an incomplete last line
        buf = b""    # data lines of a JSON value not complete yet
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                batch = []
                bad = ""  # why the stream is unusable from this event on
                for line in lines:
                    if not line.startswith(b"data:"):
                        if buf and not line.strip():  # the event ended, still not JSON
                            bad = f"SSE event is not JSON: {buf[:100]!r}"  # (not glued to
                            break                                         # the next ones)
                        continue  # blank lines, comments / pings
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        batch.append((b"data: [DONE]\n\n", None))
                        yield batch
                        return
                    data = buf + data
                    try:
                        payload = json.loads(data)
                    except ValueError:
                        buf = data
                        continue
                    buf = b""
                    if payload.__class__ is not dict:  # e.g. "data: 5": not a chunk
                        bad = f"SSE event is not an object: {data[:100]!r}"
                        break
                    batch.append((b"data: " + data + b"\n\n", payload))
                if batch:  # the good events before a bad one go out, as one by one
                    yield batch
                if bad:
                    raise LegError("bad_response", bad)
        except (TimeoutError, aiohttp.ClientError) as e:
            raise _classify(e) from e
        if rest.startswith(b"data:") and rest[5:].strip() == b"[DONE]":
            yield [(b"data: [DONE]\n\n", None)]  # no newline after the last line
            return
        raise LegError("stream_dropped", "stream ended without [DONE]")

    async def events(self) -> AsyncIterator[tuple[bytes, dict | None]]:
        """:meth:`batches`, one event at a time."""
        async for batch in self.batches():
            for event in batch:
                yield event

    def close(self) -> None:
        """Drop the connection (the backend aborts the request)."""
        self.resp.close()


async def open_stream(session: aiohttp.ClientSession, url: str, body: dict | bytes,
                      headers: dict) -> Stream:
    """Start a streaming leg (status checked).

    Raises:
        LegError, BackendRejected: as :func:`call_json`.
    """
    try:
        r = await _post(session, url, body, headers)
    except (TimeoutError, aiohttp.ClientError) as e:
        raise _classify(e) from e
    try:
        await _check_status(r)
    except BaseException:
        r.close()
        raise
    return Stream(r)
