"""The OpenAI-compatible wire format shared by the emulator and the router.

One job: turn request bodies into a validated :class:`GenRequest` (400s name the field), and
build the response objects and SSE frames vLLM sends (``/v1/completions`` and
``/v1/chat/completions``, streaming and not; layout from the protocol notes, sections 2.1
and 4.1).

The fake tokenizer: a prompt string is split on whitespace and every word is one token, with
id ``crc32(word) % VOCAB_SIZE``; a chat is rendered as ``<|role|> content`` per message plus
``<|assistant|>`` and tokenized the same way. Generated text cycles through :data:`WORDS`
(one word per token, chosen by the token's position in the sequence). Router and emulator use
the same functions, so the router's prompt-length estimate is exact against the emulator;
against real vLLM it is an estimate (words, not BPE tokens).
"""

from __future__ import annotations

import hmac
import json
import time
import zlib
from dataclasses import dataclass

VOCAB_SIZE = 32000
"""Token ids of the fake tokenizer are in ``[0, VOCAB_SIZE)``."""
WORDS = ("The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "and",
         "runs", "far", "away", "into", "a", "green", "field")
"""Generated text cycles through these words (one per token)."""
WORD_ID_BASE = 100
"""Token id of ``WORDS[0]`` in generated output."""
DEFAULT_MAX_TOKENS = 16
"""``max_tokens`` when a completions request gives none (OpenAI's and vLLM's default)."""
DEFAULT_CHAT_MAX_TOKENS = 256
"""``max_tokens`` when a chat request gives none (vLLM uses the rest of the context)."""
DONE = b"data: [DONE]\n\n"
"""The SSE frame that ends a stream."""


class BadRequest(ValueError):
    """A malformed request; ``field`` names the offending body field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass
class GenRequest:
    """A validated generation request (the original body is kept for forwarding)."""

    body: dict
    """The client's JSON body, unchanged."""
    chat: bool
    """``/v1/chat/completions`` (True) or ``/v1/completions``."""
    prompt_token_ids: list[int] | None
    """The prompt as fake-tokenizer ids (exact when the client sent ids); None when parsed
    with ``count_only`` (the length is all a router needs)."""
    max_tokens: int
    """Tokens to generate at most."""
    stream: bool
    """SSE response."""
    include_usage: bool
    """``stream_options.include_usage``: a final usage chunk."""
    ignore_eos: bool
    """Generate exactly ``max_tokens`` (the emulator never stops early anyway)."""
    kv_transfer_params: dict | None
    """vLLM's P/D hand-off parameters, opaque."""
    return_token_ids: bool
    """Put ``prompt_token_ids`` / ``token_ids`` in the response (newer vLLM)."""
    num_prompt_tokens: int = -1
    """Prompt length, tokens (from ``prompt_token_ids`` when not given)."""

    def __post_init__(self) -> None:
        if self.num_prompt_tokens < 0:
            self.num_prompt_tokens = len(self.prompt_token_ids)


def tokenize(text: str) -> list[int]:
    """Fake token ids of a string (one per whitespace-separated word)."""
    return [zlib.crc32(w.encode()) % VOCAB_SIZE for w in text.split()]


def count_tokens(text: str) -> int:
    """``len(tokenize(text))`` without computing the ids."""
    return len(text.split())


def render_chat(messages: list) -> str:
    """The chat template of the fake tokenizer (``<|role|> content`` ... ``<|assistant|>``)."""
    parts = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}]", "each message needs a string 'role'")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            texts = [p.get("text") or "" for p in content if isinstance(p, dict)]
            if not all(isinstance(t, str) for t in texts):
                raise BadRequest(f"messages[{i}].content", "a part's 'text' must be a string")
            content = " ".join(texts)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content", "must be a string or a list of parts")
        parts.append(f"<|{m['role']}|> {content}")
    parts.append("<|assistant|>")
    return " ".join(parts)


def output_token_id(position: int) -> int:
    """Token id generated at sequence position ``position`` (prompt tokens count).

    A function of the position only, so a Follow continuing from prompt + k tokens produces
    exactly the text a colocated run would.
    """
    return WORD_ID_BASE + position % len(WORDS)


def token_text(token_id: int) -> str:
    """Text of one generated token id: a space and a word."""
    k = token_id - WORD_ID_BASE
    return " " + (WORDS[k] if 0 <= k < len(WORDS) else f"t{token_id}")


def _int_field(body: dict, name: str, default: int | None, low: int) -> int | None:
    v = body.get(name)
    if v is None:  # absent or JSON null: the default, as vLLM
        return default
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise BadRequest(name, f"must be an integer >= {low}, got {v!r}")
    return v


def _bool_field(body: dict, name: str, default: bool = False) -> bool:
    v = body.get(name, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise BadRequest(name, f"must be true or false, got {v!r}")
    return v


def _prompt_ids(body: dict, count_only: bool = False) -> list[int] | int:
    """The prompt's token ids, or only their number (``count_only``)."""
    if "prompt" not in body:
        raise BadRequest("prompt", "is required for /v1/completions")
    p = body["prompt"]
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str | list):
        p = p[0]  # a batch of one
    if isinstance(p, str):
        return count_tokens(p) if count_only else tokenize(p)
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool)
                                         for t in p):
        return len(p) if count_only else list(p)
    if isinstance(p, list) and p and all(isinstance(x, str | list) for x in p):
        raise BadRequest("prompt", "batches of several prompts are not supported; send one "
                                   "request per prompt")
    raise BadRequest("prompt", "must be a string, a list of token ids, or a list of one of "
                               "these")


def parse_generation(body, chat: bool, count_only: bool = False) -> GenRequest:
    """Validate a generation body.

    Args:
        body: the parsed JSON body.
        chat: whether it came to ``/v1/chat/completions``.
        count_only: count the prompt's tokens without building their ids
            (``prompt_token_ids`` None; what a router needs).

    Returns:
        The request.

    Raises:
        BadRequest: naming the first malformed field.
    """
    if not isinstance(body, dict):
        raise BadRequest("body", "must be a JSON object")
    if "model" in body and not isinstance(body["model"], str):
        raise BadRequest("model", f"must be a string, got {body['model']!r}")
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise BadRequest("messages", "must be a non-empty list of messages")
        text = render_chat(msgs)
        ids = count_tokens(text) if count_only else tokenize(text)
        max_tokens = _int_field(body, "max_completion_tokens", None, 1)
        if max_tokens is None:
            max_tokens = _int_field(body, "max_tokens", DEFAULT_CHAT_MAX_TOKENS, 1)
    else:
        ids = _prompt_ids(body, count_only)
        max_tokens = _int_field(body, "max_tokens", DEFAULT_MAX_TOKENS, 1)
    if not ids:
        raise BadRequest("messages" if chat else "prompt", "is empty (no tokens)")
    _int_field(body, "min_tokens", 0, 0)  # a leg rewrites it: an integer, or a 400 here
    if _int_field(body, "n", 1, 1) != 1:
        raise BadRequest("n", "only n = 1 is supported")
    if not isinstance(body.get("stream_options") or {}, dict):
        raise BadRequest("stream_options", "must be an object")
    opts = body.get("stream_options") or {}
    kv = body.get("kv_transfer_params")
    if kv is not None and not isinstance(kv, dict):
        raise BadRequest("kv_transfer_params", "must be an object or null")
    for name in ("temperature", "top_p"):
        v = body.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise BadRequest(name, f"must be a number, got {v!r}")
    n_prompt = ids if count_only else len(ids)
    return GenRequest(body=body, chat=chat, prompt_token_ids=None if count_only else ids,
                      num_prompt_tokens=n_prompt, max_tokens=max_tokens,
                      stream=_bool_field(body, "stream"),
                      include_usage=_bool_field(opts, "include_usage"),
                      ignore_eos=_bool_field(body, "ignore_eos"), kv_transfer_params=kv,
                      return_token_ids=_bool_field(body, "return_token_ids"))


# ---- response objects ----------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """An OpenAI ``usage`` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_chunk(rid: str, model: str, text: str | None, finish_reason: str | None = None,
                     *, chat: bool, first: bool = False, created: int | None = None,
                     token_ids: list[int] | None = None) -> dict:
    """One streaming chunk (text or chat flavour)."""
    created = created or int(time.time())
    if chat:
        delta: dict = {}
        if first:
            delta = {"role": "assistant", "content": ""}
        elif text is not None:
            delta = {"content": text}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None,
                  "finish_reason": finish_reason, "stop_reason": None}
        obj = "text_completion"
    if token_ids is not None:
        choice["token_ids"] = token_ids
    return {"id": rid, "object": obj, "created": created, "model": model,
            "choices": [choice], "usage": None}


def usage_chunk(rid: str, model: str, use: dict, *, chat: bool) -> dict:
    """The final ``choices: []`` chunk of ``stream_options.include_usage``."""
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [], "usage": use}


def full_response(rid: str, model: str, text: str, finish_reason: str, use: dict, *,
                  chat: bool, kv_transfer_params: dict | None = None,
                  prompt_token_ids: list[int] | None = None,
                  token_ids: list[int] | None = None) -> dict:
    """A non-streaming completion; token ids are added when given (``return_token_ids``).

    Completions put ``prompt_token_ids`` and ``token_ids`` in the choice; chat puts
    ``prompt_token_ids`` at the top level and ``token_ids`` in the choice (newer vLLM).
    """
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "logprobs": None, "finish_reason": finish_reason, "stop_reason": None}
        out = {"id": rid, "object": "chat.completion"}
        if prompt_token_ids is not None:
            out["prompt_token_ids"] = prompt_token_ids
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason,
                  "stop_reason": None}
        if prompt_token_ids is not None:
            choice["prompt_token_ids"] = prompt_token_ids
        out = {"id": rid, "object": "text_completion"}
    if token_ids is not None:
        choice["token_ids"] = token_ids
    out.update({"created": int(time.time()), "model": model, "choices": [choice],
                "usage": use, "kv_transfer_params": kv_transfer_params})
    return out


def error_body(message: str, code: int, err_type: str = "BadRequestError",
               param: str | None = None) -> dict:
    """The error object vLLM returns."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code},
            "object": "error", "message": message, "type": err_type, "code": code}


def key_matches(authorization: str | None, key: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <key>`` (constant-time compare)."""
    return hmac.compare_digest((authorization or "").encode(), f"Bearer {key}".encode())


def sse(obj: dict) -> bytes:
    """One SSE event."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def chunk_text(chunk: dict) -> str:
    """Generated text carried by a streaming chunk (either flavour; '' if none)."""
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    if "delta" in c:
        return (c.get("delta") or {}).get("content") or ""
    return c.get("text") or ""


def response_text(resp: dict) -> str:
    """Generated text of a non-streaming response (either flavour)."""
    c = (resp.get("choices") or [{}])[0]
    if "message" in c:
        return (c.get("message") or {}).get("content") or ""
    return c.get("text") or ""


def response_token_ids(resp: dict) -> tuple[list[int] | None, list[int] | None]:
    """``(prompt_token_ids, token_ids)`` of a non-streaming response, None when absent."""
    c = (resp.get("choices") or [{}])[0]
    return c.get("prompt_token_ids", resp.get("prompt_token_ids")), c.get("token_ids")


def add_openai_routes(app, server) -> None:
    """Register vLLM's OpenAI-compatible surface on an aiohttp ``app``.

    ``server`` provides the handlers ``completions``, ``chat_completions``, ``models``,
    ``health`` and ``prometheus`` (the emulator and the router both do).
    """
    app.router.add_post("/v1/completions", server.completions)
    app.router.add_post("/v1/chat/completions", server.chat_completions)
    app.router.add_get("/v1/models", server.models)
    app.router.add_get("/health", server.health)
    app.router.add_get("/metrics", server.prometheus)
