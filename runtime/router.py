"""The live router: ``python -m runtime.router --backends URL[=role] ... --policy p.onnx``.

One job: serve the OpenAI surface (``/v1/completions``, ``/v1/chat/completions`` streaming
and not, ``/v1/models``, ``/health``, its own ``/metrics``) in front of vLLM instances, and
carry each request out per the decision of an exported policy or a heuristic:

- colocated (Lead == Follow, or split >= max_tokens): forward the body unchanged;
- disaggregated (split 1): prefill leg, then decode leg with the returned
  ``kv_transfer_params`` verbatim, streamed back (:mod:`runtime.legs`);
- tandem (1 < split k < max_tokens): Lead generates k tokens (non-streaming, token ids
  returned), the client gets them as one chunk, the Follow continues on ``/v1/completions``
  from prompt + k token ids with the Lead's ``kv_transfer_params`` (see README: what vLLM must
  support for this is unverified without a GPU).

One ``X-Request-Id`` (the client's, or a fresh one) goes to every leg. Failures
(:data:`runtime.legs.FAILURE_KINDS`) are retried while nothing has reached the client: the
retry runs colocated (full prefill) on the least-loaded healthy backend not yet tried (for a
null ``kv_transfer_params``: on the chosen decode backend). Once bytes reached the client the
stream ends with an ``error`` event and ``[DONE]``. Every request ends with one counted
outcome (:data:`OUTCOMES`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from runtime import legs
from runtime import openai_api as oa
from runtime.backends import Backend, build_view, scrape_forever, view_fields
from runtime.decide import FOLLOW_ROLES, HeuristicDecider, PolicyDecider, fallback
from sim.routing import Decision, RequestInfo

logger = logging.getLogger(__name__)

OUTCOMES = ("ok", "bad_request", "unauthorized", "rejected_overload", "rejected_policy",
            "unavailable", "backend_rejected", "failed", "stream_error", "client_disconnected")
"""Label values of ``baton_router_requests_total{outcome}``."""
DECISION_BUCKETS = (5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3, 1e-2)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0)


class RouterMetrics:
    """The router's own Prometheus metrics."""

    def __init__(self, backends: list[Backend]) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("baton_router_requests", "Requests by outcome and mode.",
                                ("outcome", "mode"), registry=r)
        self.decision = Histogram("baton_router_decision_seconds",
                                  "Time to build the view and decide.",
                                  buckets=DECISION_BUCKETS, registry=r)
        self.inflight = Gauge("baton_router_backend_inflight", "Open legs per backend.",
                              ("backend",), registry=r)
        self.healthy = Gauge("baton_router_backend_healthy", "1 if decisions may use it.",
                             ("backend",), registry=r)
        self.e2e = Histogram("baton_router_e2e_seconds", "Request latency seen by the router.",
                             ("mode",), buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("baton_router_ttft_seconds", "Time to the first token sent.",
                              ("mode",), buckets=LATENCY_BUCKETS, registry=r)
        self.retries = Counter("baton_router_retries", "Leg failures retried or reported.",
                               ("reason",), registry=r)
        self.requests_inflight = Gauge("baton_router_requests_inflight",
                                       "Client requests being served.", registry=r)
        self.transfers_out = Gauge("baton_router_backend_transfers_out",
                                   "Hand-overs from this backend whose Follow has no token "
                                   "yet.", ("backend",), registry=r)
        for b in backends:
            self.inflight.labels(b.url).set(0)
            self.transfers_out.labels(b.url).set(0)
        self._done: dict[tuple[str, str], tuple] = {}

    def done(self, outcome: str, mode: str, e2e_s: float, ttft_s: float) -> None:
        """Count one finished request (latencies observed for ``ok``; ttft < 0: none)."""
        children = self._done.get((outcome, mode))
        if children is None:  # label lookups once per (outcome, mode)
            children = self._done[outcome, mode] = (
                self.requests.labels(outcome, mode), self.e2e.labels(mode),
                self.ttft.labels(mode))
        children[0].inc()
        if outcome == "ok":
            children[1].observe(e2e_s)
            if ttft_s >= 0:
                children[2].observe(ttft_s)


class Sink:
    """The client's side of one request: lazily opened SSE response, commit tracking."""

    def __init__(self, request: web.Request, rid: str) -> None:
        self.request, self.rid = request, rid
        self.resp: web.StreamResponse | None = None
        self.first_token_s = -1.0

    @property
    def committed(self) -> bool:
        """Whether any byte reached the client (no more retries then)."""
        return self.resp is not None

    async def _open(self) -> web.StreamResponse:
        """Prepare the SSE response (aiohttp sends its headers with the first bytes)."""
        self.resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Request-Id": self.rid})
        await self.resp.prepare(self.request)
        return self.resp

    async def write(self, data: bytes, token: bool = False) -> None:
        """Send SSE bytes (opens the response on first use)."""
        resp = self.resp or await self._open()
        if token and self.first_token_s < 0:
            self.first_token_s = time.monotonic()
        await resp.write(data)

    async def finish(self, data: bytes, token: bool = False) -> None:
        """Send the last SSE bytes and end the response, in one write."""
        resp = self.resp or await self._open()
        if token and self.first_token_s < 0:
            self.first_token_s = time.monotonic()
        await resp.write_eof(data)

    async def error_event(self, message: str) -> None:
        """End a committed stream with an error event and ``[DONE]``."""
        await self.finish(oa.sse(oa.error_body(message, 502, "BackendError")) + oa.DONE)


@dataclass
class Ctx:
    """One client request in flight."""

    req: oa.GenRequest
    rid: str
    sink: Sink
    headers: dict
    t0_s: float
    raw_body: bytes = b""
    """The client's body as received (a colocated leg forwards it unchanged)."""
    mode: str = "-"
    tried: list[int] = field(default_factory=list)

    @property
    def path(self) -> str:
        """Endpoint of the client request."""
        return "/v1/chat/completions" if self.req.chat else "/v1/completions"


class Router:
    """Router state and handlers (see the module docstring)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.decider = (PolicyDecider(args.policy) if args.policy
                        else HeuristicDecider(args.heuristic, args.seed))
        self.backends = self._backends(args)
        self.block_size = getattr(self.decider, "block_size", args.block_size)
        self._by_fields = isinstance(self.decider, PolicyDecider)
        self.metrics = RouterMetrics(self.backends)
        self.num_inflight = 0
        self.num_requests = 0
        self.t_start_s = time.monotonic()
        self.session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task] = []

    def _backends(self, args) -> list[Backend]:
        specs = [s.rsplit("=", 1) if "=" in s else (s, "") for s in args.backends]
        policy_roles = getattr(self.decider, "roles", None)
        if policy_roles is not None and len(policy_roles) != len(specs):
            raise SystemExit(f"--backends: {len(specs)} given, the policy was trained for "
                             f"{len(policy_roles)} instances (roles {list(policy_roles)})")
        kv = getattr(self.decider, "kv_total_blocks", None)
        out = []
        for i, (url, role) in enumerate(specs):
            role = role or (policy_roles[i] if policy_roles else "unified")
            if role not in ("unified", "prefill", "decode"):
                raise SystemExit(f"--backends: role {role!r} of {url} is not unified, prefill "
                                 "or decode")
            out.append(Backend(i, url.rstrip("/"), role,
                               kv[i] if kv else args.default_kv_blocks))
        return out

    # ---- app -------------------------------------------------------------------------------
    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=64 * 2**20)
        oa.add_openai_routes(app, self)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        a = self.args
        timeout = aiohttp.ClientTimeout(total=None, connect=a.connect_timeout_s,
                                        sock_read=a.backend_timeout_s)
        self.session = aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300))
        scrape = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=a.scrape_timeout_s))
        self._scrape_session = scrape
        self._tasks.append(asyncio.create_task(scrape_forever(
            scrape, self.backends, a.scrape_interval_s, self._backend_headers(None),
            kv_from_metrics=not a.policy)))

    async def _stop(self, app: web.Application) -> None:
        for t in self._tasks:
            t.cancel()
        await self.session.close()
        await self._scrape_session.close()

    def _backend_headers(self, request: web.Request | None) -> dict:
        key = self.args.backend_api_key
        if key:
            return {"Authorization": f"Bearer {key}"}
        if request is not None and "Authorization" in request.headers:
            return {"Authorization": request.headers["Authorization"]}
        return {}

    def _authorized(self, request: web.Request) -> bool:
        return not self.args.api_key or oa.key_matches(request.headers.get("Authorization"),
                                                       self.args.api_key)

    # ---- control endpoints -----------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        """200 when some backend is healthy, else 503."""
        now = time.monotonic()
        ok = any(b.healthy(now) for b in self.backends)
        return web.Response(status=200 if ok else 503)

    async def models(self, request: web.Request) -> web.Response:
        """The first healthy backend's ``/v1/models``."""
        if not self._authorized(request):
            return _error(401, "invalid or missing API key", "AuthenticationError")
        now = time.monotonic()
        for b in self.backends:
            if b.healthy(now):
                try:
                    async with self.session.get(b.url + "/v1/models",
                                                headers=self._backend_headers(request)) as r:
                        return web.Response(status=r.status, body=await r.read(),
                                            content_type="application/json")
                except (TimeoutError, aiohttp.ClientError):
                    continue
        return _error(503, "no healthy backend", "ServiceUnavailableError")

    async def prometheus(self, request: web.Request) -> web.Response:
        """The router's own metrics."""
        now = time.monotonic()
        for b in self.backends:
            self.metrics.inflight.labels(b.url).set(b.inflight)
            self.metrics.healthy.labels(b.url).set(1 if b.healthy(now) else 0)
            self.metrics.transfers_out.labels(b.url).set(b.transfers_out)
        self.metrics.requests_inflight.set(self.num_inflight)
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ---- generation ------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/completions``."""
        return await self._handle(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``."""
        return await self._handle(request, chat=True)

    async def _handle(self, request: web.Request, chat: bool) -> web.StreamResponse:
        t0 = time.monotonic()
        if not self._authorized(request):
            self.metrics.requests.labels("unauthorized", "-").inc()
            return _error(401, "invalid or missing API key", "AuthenticationError")
        try:
            raw = await request.read()
            req = oa.parse_generation(json.loads(raw), chat, count_only=True)
        except oa.BadRequest as e:
            self.metrics.requests.labels("bad_request", "-").inc()
            return _error(400, str(e), param=e.field)
        except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError)
            self.metrics.requests.labels("bad_request", "-").inc()
            return _error(400, "body: not valid UTF-8 JSON", param="body")
        except RecursionError:  # JSON nested deeper than the parser's stack
            self.metrics.requests.labels("bad_request", "-").inc()
            return _error(400, "body: JSON nested too deeply", param="body")
        except web.HTTPRequestEntityTooLarge:
            self.metrics.requests.labels("bad_request", "-").inc()
            return _error(413, f"body: larger than {request.client_max_size} bytes",
                          "RequestEntityTooLarge", param="body")
        except asyncio.CancelledError:  # gone while sending the body
            self.metrics.requests.labels("client_disconnected", "-").inc()
            raise
        if self.num_inflight >= self.args.max_inflight:
            self.metrics.requests.labels("rejected_overload", "-").inc()
            return _error(429, f"router overloaded: {self.num_inflight} requests in flight "
                               f"(--max-inflight {self.args.max_inflight}); retry later",
                          "RateLimitError")
        rid = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        ctx = Ctx(req, rid, Sink(request, rid),
                  {**self._backend_headers(request), "X-Request-Id": rid}, t0, raw)
        self.num_inflight += 1
        outcome = "failed"
        try:
            async with asyncio.timeout(self.args.request_timeout_s):
                resp, outcome = await self._serve(ctx)
            return resp
        except TimeoutError:
            outcome = "failed" if not ctx.sink.committed else "stream_error"
            logger.warning("request %s exceeded --request-timeout-s", rid)
            if ctx.sink.committed:
                return await self._end_with_error(ctx, "request timed out")
            return _error(504, "request timed out in the router", "TimeoutError")
        except ConnectionResetError:
            outcome = "client_disconnected"
            return ctx.sink.resp or web.Response(status=499)
        except asyncio.CancelledError:
            outcome = "client_disconnected"
            raise
        except Exception:  # a bug, or an answer no check foresaw: never a silently cut stream
            logger.exception("request %s failed unexpectedly", rid)
            if ctx.sink.committed:
                outcome = "stream_error"
                return await self._end_with_error(ctx, "internal router error")
            return _error(500, "internal router error", "InternalServerError")
        finally:
            self.num_inflight -= 1
            first = ctx.sink.first_token_s
            self.metrics.done(outcome, ctx.mode, time.monotonic() - t0,
                              first - t0 if first > 0 else -1.0)

    async def _end_with_error(self, ctx: Ctx, message: str) -> web.StreamResponse:
        try:
            await ctx.sink.error_event(message)
        except (ConnectionResetError, RuntimeError):  # client gone, or the response ended
            pass
        return ctx.sink.resp

    def decide(self, info: RequestInfo, now: float) -> Decision | None:
        """The decider's answer for one arrival at monotonic time ``now``, seconds.

        None when no backend is healthy. This is what ``baton_router_decision_seconds``
        times; a policy reads the backends' lists directly, a heuristic gets a
        :class:`~sim.routing.ClusterView`.
        """
        backends = self.backends
        healthy = [b.healthy(now) for b in backends]
        if not any(healthy):
            return None
        if self._by_fields:
            return self.decider.decide_fields(view_fields(backends), info, healthy)
        return self.decider(build_view(backends, now - self.t_start_s, self.block_size), info,
                            healthy)

    def _decide(self, ctx: Ctx) -> Decision | None:
        """Decision for a new request, timed."""
        t = time.perf_counter()
        now = time.monotonic()
        info = RequestInfo(self.num_requests, now - self.t_start_s, ctx.req.num_prompt_tokens,
                           ctx.req.max_tokens)
        self.num_requests += 1
        d = self.decide(info, now)
        self.metrics.decision.observe(time.perf_counter() - t)
        return d

    async def _serve(self, ctx: Ctx) -> tuple[web.StreamResponse, str]:
        d = self._decide(ctx)
        if d is None:
            return _error(503, "no healthy backend", "ServiceUnavailableError"), "unavailable"
        if d.reject:
            return _error(429, "rejected by the routing policy (admission control)",
                          "RateLimitError"), "rejected_policy"
        n = ctx.req.max_tokens
        plan = ("colocated", d.lead, d.lead, n)
        if d.follow != d.lead and d.split_tokens < n:
            plan = ("disaggregated" if d.split_tokens <= 1 else "tandem", d.lead, d.follow,
                    d.split_tokens)
        ctx.mode = plan[0]
        for _ in range(self.args.max_attempts):
            try:
                return await self._run(ctx, *plan), "ok"
            except legs.BackendRejected as e:
                if ctx.sink.committed:
                    return await self._end_with_error(ctx, f"backend answered {e.status}"), \
                        "stream_error"
                return web.Response(status=e.status, body=e.body,
                                    content_type="application/json"), "backend_rejected"
            except legs.LegError as e:
                self.metrics.retries.labels(e.kind).inc()
                b = getattr(e, "backend", None)
                logger.warning("request %s: backend %s failed (%s)", ctx.rid, b, e)
                if b is not None and e.kind != "null_kv_params":
                    self.backends[b].cool_down(self.args.cooldown_s)
                if ctx.sink.committed:
                    return await self._end_with_error(ctx, str(e)), "stream_error"
                plan = self._retry_plan(ctx, e, plan, b)
                if plan is None:
                    break
        return _error(502, f"no backend could serve the request (tried {ctx.tried})",
                      "BadGatewayError"), "failed"

    def _retry_plan(self, ctx: Ctx, e: legs.LegError, plan, failed: int | None):
        """Colocated on a healthy backend not tried yet (the decode pick after null params)."""
        n = ctx.req.max_tokens
        now = time.monotonic()
        healthy = [b.healthy(now) for b in self.backends]
        if e.kind == "null_kv_params" and healthy[plan[2]]:
            return ("colocated", plan[2], plan[2], n)
        view = build_view(self.backends, now - self.t_start_s, self.block_size)
        i = fallback(view, healthy, ("unified",) + FOLLOW_ROLES, ctx.tried)
        return None if i is None else ("colocated", i, i, n)

    # ---- the three modes -------------------------------------------------------------------
    async def _run(self, ctx: Ctx, mode: str, lead: int, follow: int, k: int):
        if mode == "colocated":
            ctx.tried.append(lead)
            return await self._final_leg(ctx, lead, ctx.raw_body or ctx.req.body,
                                         ctx.req.num_prompt_tokens,
                                         transfer=False)
        ctx.tried.append(lead)
        lb = self.backends[lead]
        with _Leg(lb, ctx.req.num_prompt_tokens):
            r = await self._json_leg(ctx, lead, ctx.path,
                                     legs.lead_body(ctx.req.body, k, token_ids=k > 1))
        finish = (r.get("choices") or [{}])[0].get("finish_reason")
        if k > 1 and finish not in (None, "length", "abort"):  # the client's stop within k
            return self._lead_answer(ctx, r, finish) if not ctx.req.stream \
                else await self._lead_answer_stream(ctx, r, finish)
        kv = r.get("kv_transfer_params")
        if not kv:
            err = legs.LegError("null_kv_params", "prefill response had no kv_transfer_params")
            err.backend = lead
            raise err
        ctx.tried.append(follow)
        ho = _Handover(lb)  # counted out of the Lead until the Follow's first token
        try:
            if mode == "disaggregated":
                return await self._final_leg(ctx, follow, legs.decode_body(ctx.req.body, kv), 0,
                                             transfer=True, handover=ho)
            return await self._tandem_follow(ctx, follow, r, kv, k, ho)
        finally:
            ho.done()

    def _lead_answer(self, ctx: Ctx, r: dict, finish: str) -> web.Response:
        """A Lead that stopped before k tokens is the whole answer (non-streaming)."""
        ctx.sink.first_token_s = time.monotonic()
        chat, rid = ctx.req.chat, ("chatcmpl-" if ctx.req.chat else "cmpl-") + ctx.rid
        body = oa.full_response(rid, r.get("model", ""), oa.response_text(r), finish,
                                r.get("usage") or {}, chat=chat)
        return web.json_response(body, headers={"X-Request-Id": ctx.rid})

    async def _lead_answer_stream(self, ctx: Ctx, r: dict, finish: str) -> web.StreamResponse:
        """A Lead that stopped before k tokens, as the client's stream."""
        chat, model = ctx.req.chat, r.get("model", "")
        rid = ("chatcmpl-" if chat else "cmpl-") + ctx.rid
        if chat:
            await ctx.sink.write(oa.sse(oa.completion_chunk(rid, model, None, chat=True,
                                                            first=True)))
        await ctx.sink.write(oa.sse(oa.completion_chunk(rid, model, oa.response_text(r),
                                                        finish, chat=chat)), token=True)
        if ctx.req.include_usage:
            await ctx.sink.write(oa.sse(oa.usage_chunk(rid, model, r.get("usage") or {},
                                                       chat=chat)))
        await ctx.sink.finish(oa.DONE)
        return ctx.sink.resp

    async def _json_leg(self, ctx: Ctx, i: int, path: str, body: dict) -> dict:
        return (await self._json_leg_raw(ctx, i, path, body))[0]

    async def _json_leg_raw(self, ctx: Ctx, i: int, path: str,
                            body: dict | bytes) -> tuple[dict, bytes]:
        try:
            return await legs.call_json_raw(self.session, self.backends[i].url + path, body,
                                            ctx.headers)
        except legs.LegError as e:
            e.backend = i
            raise

    async def _final_leg(self, ctx: Ctx, i: int, body: dict | bytes, prefill_tokens: int,
                         transfer: bool, handover: _Handover | None = None
                         ) -> web.StreamResponse:
        """The leg whose answer goes to the client unchanged (colocated or decode)."""
        b = self.backends[i]
        with _Leg(b, prefill_tokens, transfer, handover) as acct:
            if not ctx.req.stream:
                _, data = await self._json_leg_raw(ctx, i, ctx.path, body)
                acct.first_token()
                ctx.sink.first_token_s = time.monotonic()
                return web.Response(body=data, content_type="application/json",
                                    headers={"X-Request-Id": ctx.rid})
            try:
                s = await legs.open_stream(self.session, b.url + ctx.path, body, ctx.headers)
            except legs.LegError as e:
                e.backend = i
                raise
            try:
                await self._pump(ctx, s, acct)
            except legs.LegError as e:
                e.backend = i
                raise
            finally:
                s.close()
        return ctx.sink.resp

    async def _pump(self, ctx: Ctx, s: legs.Stream, acct: _Leg) -> None:
        """Relay SSE events, bytes unchanged.

        Events without output are held until the first token (a failure before it is
        retryable); after it, events without generated text or a finish reason (the usage
        chunk) are held until the next event (they go out with ``[DONE]``). The events of one
        network read go to the client in one write; the last write carries ``[DONE]`` and
        the end of the response.
        """
        held: list[bytes] = []
        started = ctx.sink.committed
        async for batch in s.batches():
            out: list[bytes] = []
            token = False
            try:
                for raw, payload in batch:
                    if payload is not None:
                        _raise_on_error_event(payload)
                        if not (_carries_output(payload) if not started
                                else _carries_token(payload)):
                            held.append(raw)
                            continue
                    if not started:
                        started = True
                        acct.first_token()
                    if held:
                        out.extend(held)
                        held.clear()
                    out.append(raw)
                    token = token or payload is not None
            except legs.LegError:
                if out:  # what came before the error event, as if relayed one by one
                    await ctx.sink.write(b"".join(out), token=token)
                raise
            if payload is None:  # [DONE], always last: the generator ends after it (an
                # abandoned async generator costs a finalizer task and a loop wake-up)
                await ctx.sink.finish(b"".join(out), token=token)
            elif out:
                await ctx.sink.write(b"".join(out), token=token)

    async def _tandem_follow(self, ctx: Ctx, i: int, lead_resp: dict, kv: dict, k: int,
                             ho: _Handover):
        """Send the Lead's k tokens to the client, then continue on the Follow."""
        prompt_ids, out_ids = oa.response_token_ids(lead_resp)
        if not prompt_ids or not out_ids or len(out_ids) != k:
            err = legs.LegError("bad_response", "Lead response lacks prompt_token_ids/token_ids "
                                                "(vLLM needs return_token_ids)")
            err.backend = ctx.tried[-2]
            raise err
        lead_text = oa.response_text(lead_resp)
        lead_usage = lead_resp.get("usage") or {}
        n_left = ctx.req.max_tokens - k
        body = legs.follow_body(ctx.req.body, prompt_ids + out_ids, n_left, k, kv)
        chat, model = ctx.req.chat, lead_resp.get("model", "")
        rid = ("chatcmpl-" if chat else "cmpl-") + ctx.rid
        b = self.backends[i]
        if not ctx.req.stream:
            with _Leg(b, 0, True, ho):
                r = await self._json_leg(ctx, i, "/v1/completions", body)
            ctx.sink.first_token_s = time.monotonic()
            fu = r.get("usage") or {}
            use = oa.usage(lead_usage.get("prompt_tokens", ctx.req.num_prompt_tokens),
                           lead_usage.get("completion_tokens", k)
                           + fu.get("completion_tokens", 0))
            finish = (r.get("choices") or [{}])[0].get("finish_reason", "length")
            return web.json_response(oa.full_response(
                rid, model, lead_text + oa.response_text(r), finish, use, chat=chat),
                headers={"X-Request-Id": ctx.rid})
        with _Leg(b, 0, True, ho) as acct:
            try:
                # the Follow is open (headers in) before the client sees a byte: a refused or
                # failing Follow can still be retried
                s = await legs.open_stream(self.session, b.url + "/v1/completions", body,
                                           ctx.headers)
                try:
                    if chat:
                        await ctx.sink.write(oa.sse(oa.completion_chunk(
                            rid, model, None, chat=True, first=True)))
                    await ctx.sink.write(oa.sse(oa.completion_chunk(rid, model, lead_text,
                                                                    chat=chat)), token=True)
                    await self._relay_follow(ctx, s, acct, rid, model, lead_usage, k)
                finally:
                    s.close()
            except legs.LegError as e:
                e.backend = i
                raise
        return ctx.sink.resp

    async def _relay_follow(self, ctx: Ctx, s: legs.Stream, acct: _Leg, rid: str, model: str,
                            lead_usage: dict, k: int) -> None:
        chat = ctx.req.chat
        async for _, p in s.events():
            if p is None:  # [DONE], always last (the generator ends after it)
                continue
            _raise_on_error_event(p)
            acct.first_token()
            if not p.get("choices"):  # the usage chunk: the router's sum
                if ctx.req.include_usage:
                    fu = p.get("usage") or {}
                    use = oa.usage(lead_usage.get("prompt_tokens", ctx.req.num_prompt_tokens),
                                   lead_usage.get("completion_tokens", k)
                                   + fu.get("completion_tokens", 0))
                    await ctx.sink.write(oa.sse(oa.usage_chunk(rid, model, use, chat=chat)))
                continue
            finish = p["choices"][0].get("finish_reason")
            text = oa.chunk_text(p)
            await ctx.sink.write(oa.sse(oa.completion_chunk(
                rid, model, text if (text or not chat) else None, finish, chat=chat)))
        await ctx.sink.finish(oa.DONE)


class _Handover:
    """A hand-over counted in the Lead's ``transfers_out`` until the Follow's first token."""

    def __init__(self, lead: Backend) -> None:
        self.lead = lead
        lead.transfers_out += 1

    def done(self) -> None:
        """The Follow produced a token, or the hand-over ended (idempotent)."""
        if self.lead is not None:
            self.lead.transfers_out -= 1
            self.lead = None


class _Leg:
    """In-flight accounting of one leg on one backend (context manager)."""

    def __init__(self, b: Backend, prefill_tokens: int, transfer: bool = False,
                 handover: _Handover | None = None) -> None:
        self.b, self.prefill, self.transfer = b, prefill_tokens, transfer
        self.handover = handover

    def __enter__(self) -> _Leg:
        b = self.b
        b.inflight += 1
        b.queued_prefill_tokens += self.prefill
        b.transfers_in += int(self.transfer)
        return self

    def first_token(self) -> None:
        """Prefill done (idempotent)."""
        self.b.queued_prefill_tokens -= self.prefill
        self.b.transfers_in -= int(self.transfer)
        self.prefill, self.transfer = 0, False
        if self.handover is not None:
            self.handover.done()

    def __exit__(self, *exc) -> None:
        self.first_token()
        self.b.inflight -= 1


def _raise_on_error_event(payload: dict) -> None:
    """An in-stream error event (vLLM's after a 200 header) fails the leg.

    Raises:
        legs.LegError: ``bad_response`` (retried if nothing reached the client yet, else the
            client's stream ends with an error event).
    """
    if "error" in payload or payload.get("object") == "error":
        err = payload.get("error")
        msg = err.get("message") if isinstance(err, dict) else payload.get("message", err)
        raise legs.LegError("bad_response", f"error event in the stream: {str(msg)[:200]}")


def _carries_output(payload: dict) -> bool:
    """Whether a chunk carries generated text or a finish reason (or is a usage chunk)."""
    choices = payload.get("choices")
    if not choices:
        return True
    return bool(oa.chunk_text(payload)) or choices[0].get("finish_reason") is not None


def _carries_token(payload: dict) -> bool:
    """Whether a chunk carries generated text or a finish reason (not the usage chunk)."""
    choices = payload.get("choices")
    return bool(choices) and (bool(oa.chunk_text(payload))
                              or choices[0].get("finish_reason") is not None)


def _error(status: int, message: str, kind: str = "BadRequestError",
           param: str | None = None) -> web.Response:
    return web.json_response(oa.error_body(message, status, kind, param), status=status)


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags."""
    p = argparse.ArgumentParser(prog="python -m runtime.router",
                                description="Baton's live router in front of vLLM instances.")
    p.add_argument("--backends", nargs="+", required=True,
                   help="base URLs, each optionally =role (unified|prefill|decode); the order "
                        "is the policy's instance order")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--policy", default="", help="exported policy (.onnx with its .json)")
    g.add_argument("--heuristic", default="join_shortest_queue",
                   help="built-in heuristic when no --policy")
    p.add_argument("--seed", type=int, default=0, help="seed of the random heuristic")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", default=os.environ.get("BATON_API_KEY", ""),
                   help="required Bearer key (also BATON_API_KEY); passed through to backends")
    p.add_argument("--backend-api-key", default="",
                   help="key for the backends instead of the client's header")
    p.add_argument("--max-inflight", type=int, default=1024,
                   help="requests in flight before answering 429")
    p.add_argument("--max-attempts", type=int, default=3, help="tries per request")
    p.add_argument("--connect-timeout-s", type=float, default=2.0)
    p.add_argument("--backend-timeout-s", type=float, default=120.0,
                   help="longest silence on a backend connection")
    p.add_argument("--request-timeout-s", type=float, default=600.0)
    p.add_argument("--cooldown-s", type=float, default=2.0,
                   help="a failed backend stays out of decisions this long")
    p.add_argument("--scrape-interval-s", type=float, default=0.25)
    p.add_argument("--scrape-timeout-s", type=float, default=1.0)
    p.add_argument("--block-size", type=int, default=16, help="without a policy")
    p.add_argument("--default-kv-blocks", type=int, default=16384,
                   help="KV blocks per backend until cache_config_info is scraped")
    return p


def main(argv: list[str] | None = None) -> None:
    """Run the router until interrupted."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    router = Router(args)
    logger.info("routing with %s over %s", router.decider.name,
                [(b.url, b.role) for b in router.backends])
    # everything built so far (modules, the ONNX session, the app) lives as long as the
    # process: keep it out of the collector's full passes (pauses on the request path);
    # collect first, or the start-up's cyclic garbage would be frozen, never freed
    gc.collect()
    gc.freeze()
    # a client that goes away cancels its handler: legs close, accounting is released now
    # (aiohttp's default keeps the handler running until a backend timeout)
    web.run_app(router.app(), host=args.host, port=args.port, access_log=None,
                handler_cancellation=True, print=lambda *a: None)


if __name__ == "__main__":
    main()
