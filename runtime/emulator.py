"""A vLLM-compatible instance without a GPU: ``python -m runtime.emulator --port N ...``.

One job: serve vLLM's OpenAI-compatible HTTP surface (``/v1/completions``,
``/v1/chat/completions`` streaming and not, ``/v1/models``, ``/health``, ``/metrics`` with
vLLM's metric names) and NixlConnector's ``kv_transfer_params`` hand-off, with token timing
from the performance model (:mod:`runtime.engine`: batching, token budget, KV blocks).

P/D hand-off, as vLLM's NixlConnector (protocol notes 1.3):

- a request with ``kv_transfer_params.do_remote_decode`` runs normally, then keeps its KV
  blocks pinned; its non-streaming response carries ``kv_transfer_params`` =
  ``{do_remote_prefill: true, do_remote_decode: false, remote_block_ids, remote_engine_id,
  remote_request_id, remote_host, remote_port, tp_size}``. ``remote_host:remote_port`` is this
  emulator's HTTP address (real vLLM gives its NIXL side channel);
- a request with ``do_remote_prefill`` and all five remote keys pulls the KV: it POSTs
  ``/emulator/kv_pull`` to the producer (which frees the blocks), waits the KV transfer time
  of the link (``--kv-link``), then computes only the last prompt token and samples every
  output itself. Missing keys: a full local prefill ("Got invalid KVTransferParams"). A failed
  pull: error 500 (``--kv-load-failure-policy fail``, vLLM's default) or a full prefill
  (``recompute``).

The role flag only labels the instance (NixlConnector ignores ``kv_role``; any instance serves
either leg). Generated text is fake (:mod:`runtime.openai_api`): words cycling through a fixed
list, prompts tokenized one word per token. Test hooks: ``POST /emulator/faults`` (JSON with
``status`` (answer generation requests with this HTTP status), ``null_kv_params``,
``drop_after_tokens`` (close streams abruptly after N tokens), ``drop_before_first_token``
(close streams after the header, before any token), ``slowdown``),
``GET /emulator/state``, and ``GET /emulator/requests[?clear=1]``: the engine timestamps of
the last finished requests (monotonic clock of this machine, seconds: ``recv_s`` handler
entered, ``arrival_s`` queued to the engine, ``first_scheduled_s`` start of its first
iteration, ``first_token_s`` planned end of the iteration that sampled output 1,
``first_sent_s`` its chunk written to the socket, ``finish_s``, ``last_sent_s``), keyed by
``rid`` (the ``X-Request-Id``), for sim-to-live decompositions.

Streaming writes every token's chunk as soon as the engine samples it (the last one carries
the finish reason, as vLLM: the engine knows a token is the last when it samples it).

Async scheduling follows ``vllm serve``: ``--async-scheduling`` / ``--no-async-scheduling``,
and without either vLLM's default (since 0.14: on unless ``--pipeline-parallel-size`` > 1),
resolved by :class:`sim.instance.InstanceConfig` as in the simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import uuid
from collections import deque

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from runtime import openai_api as oa
from runtime.engine import EmulatedEngine, Seq
from sim.instance import InstanceConfig, vllm_default_limits
from sim.perf import get_link, kv_transfer_time_s, load_engine_params, make_backend, plan_memory

logger = logging.getLogger(__name__)

REMOTE_KEYS = ("remote_block_ids", "remote_engine_id", "remote_request_id", "remote_host",
               "remote_port")
"""Keys a decode leg needs to pull remote KV (else vLLM prefills locally)."""
REQUEST_LOG_SIZE = 20_000
"""Finished requests whose timestamps ``/emulator/requests`` keeps (a few MB)."""
REQUEST_LOG_FIELDS = ("rid", "prompt_tokens", "output_tokens", "recv_s", "arrival_s",
                      "first_scheduled_s", "first_token_s", "first_sent_s", "finish_s",
                      "last_sent_s")
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


class VllmMetrics:
    """vLLM's Prometheus metrics (names of vLLM >= 0.10; ``legacy`` adds the 0.9 ones)."""

    def __init__(self, model_name: str, block_size: int, num_blocks: int, legacy: bool) -> None:
        r = self.registry = CollectorRegistry()
        lab = ("model_name", "engine")
        self.labels = {"model_name": model_name, "engine": "0"}
        self.running = Gauge("vllm:num_requests_running", "Requests in the running batch.",
                             lab, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting.", lab, registry=r)
        name = "vllm:gpu_cache_usage_perc" if legacy else "vllm:kv_cache_usage_perc"
        self.kv = Gauge(name, "KV-cache usage, 1 = 100%.", lab, registry=r)
        info = Gauge("vllm:cache_config_info", "KV cache configuration.",
                     ("block_size", "num_gpu_blocks"), registry=r)
        info.labels(str(block_size), str(num_blocks)).set(1)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens.", lab, registry=r)
        self.gen_tokens = Counter("vllm:generation_tokens", "Generated tokens.", lab,
                                  registry=r)
        self.success = Counter("vllm:request_success", "Finished requests.",
                               (*lab, "finished_reason"), registry=r)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "TTFT.", lab,
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "ITL.", lab,
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "E2E latency.", lab,
                             buckets=E2E_BUCKETS, registry=r)
        self.queue = Histogram("vllm:request_queue_time_seconds", "Queue time.", lab,
                               buckets=E2E_BUCKETS, registry=r)


class Emulator:
    """State of one emulated instance (engine, metrics, faults) and its handlers."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        be = make_backend(args.perf_backend, model=args.model, gpu=args.gpu,
                          tp=args.tensor_parallel_size, pp=args.pipeline_parallel_size)
        self.model = be.model
        self.served_model_name = args.served_model_name or be.model.hf_id
        tokens, seqs = vllm_default_limits(be.gpu.memory_gib, be.gpu.name)
        max_batched = args.max_num_batched_tokens or tokens
        num_blocks = args.num_gpu_blocks_override or plan_memory(
            be.model, be.gpu, args.tensor_parallel_size, args.pipeline_parallel_size,
            load_engine_params("vllm_v1"), args.gpu_memory_utilization, args.block_size,
            max_batched).num_blocks
        self.max_model_len = args.max_model_len or be.model.max_position_embeddings
        self.async_scheduling = resolve_async_scheduling(args)
        self.engine = EmulatedEngine(be, num_blocks, args.block_size,
                                     args.max_num_seqs or seqs, max_batched, args.slowdown,
                                     args.kv_abort_timeout_s,
                                     async_scheduling=self.async_scheduling)
        self.link = get_link(args.kv_link)
        self.engine_id = args.engine_id or str(uuid.uuid4())
        self.metrics = VllmMetrics(self.served_model_name, args.block_size, num_blocks,
                                   args.legacy_metric_names)
        self.faults: dict = {"status": args.fault_status, "null_kv_params": False,
                             "drop_after_tokens": 0}
        self.request_log: deque[tuple] = deque(maxlen=REQUEST_LOG_SIZE)
        """Timestamps of finished requests (``GET /emulator/requests``)."""
        self.last_remote_prefill: dict | None = None
        """The ``kv_transfer_params`` of the last decode leg received (tests)."""
        self.session: aiohttp.ClientSession | None = None
        self._engine_task: asyncio.Task | None = None

    # ---- app -------------------------------------------------------------------------------
    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=64 * 2**20)
        oa.add_openai_routes(app, self)
        app.router.add_post("/emulator/kv_pull", self.kv_pull)
        app.router.add_post("/emulator/faults", self.set_faults)
        app.router.add_get("/emulator/state", self.state)
        app.router.add_get("/emulator/requests", self.requests)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self._engine_task = asyncio.create_task(self.engine.run())

    async def _stop(self, app: web.Application) -> None:
        if self._engine_task:
            self._engine_task.cancel()
        if self.session:
            await self.session.close()

    # ---- control endpoints -----------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        """200 with an empty body, as vLLM."""
        return web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:
        """``/v1/models`` in vLLM's layout."""
        self._check_key(request)
        return web.json_response({"object": "list", "data": [{
            "id": self.served_model_name, "object": "model", "created": 0, "owned_by": "vllm",
            "root": self.served_model_name, "parent": None,
            "max_model_len": self.max_model_len, "permission": []}]})

    async def prometheus(self, request: web.Request) -> web.Response:
        """Prometheus text with vLLM's names."""
        m, e, lab = self.metrics, self.engine, self.metrics.labels
        m.running.labels(**lab).set(len(e.running))
        m.waiting.labels(**lab).set(len(e.waiting) + e.num_pulling)
        m.kv.labels(**lab).set(e.kv_used_frac)
        return web.Response(body=generate_latest(m.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def kv_pull(self, request: web.Request) -> web.Response:
        """The consumer reads a pinned prefill's KV (stands in for the NIXL read)."""
        body = await request.json()
        n = self.engine.release_pinned(str(body.get("remote_request_id")))
        if n is None:
            return web.json_response({"error": "unknown or expired remote_request_id"},
                                     status=404)
        return web.json_response({"num_tokens": n, "engine_id": self.engine_id})

    async def set_faults(self, request: web.Request) -> web.Response:
        """Change injected faults at run time (tests)."""
        body = await request.json()
        if "slowdown" in body:
            self.engine.slowdown = float(body.pop("slowdown"))
        self.faults.update(body)
        return web.json_response({**self.faults, "slowdown": self.engine.slowdown})

    async def state(self, request: web.Request) -> web.Response:
        """Engine counters as JSON (tests)."""
        e = self.engine
        return web.json_response({
            "num_running": len(e.running), "num_waiting": len(e.waiting),
            "num_pinned": len(e.pinned), "kv_used_blocks": e.num_used_blocks,
            "kv_total_blocks": e.num_blocks, "num_iterations": e.num_iterations,
            "num_stalls": e.num_stalls, "wake_late_sum_s": e.wake_late_sum_s,
            "wake_late_max_s": e.wake_late_max_s, "async_scheduling": e.async_scheduling,
            "role": self.args.role, "last_remote_prefill": self.last_remote_prefill})

    async def requests(self, request: web.Request) -> web.Response:
        """Timestamps of the last finished requests (``?clear=1`` empties the log)."""
        out = [dict(zip(REQUEST_LOG_FIELDS, r, strict=True)) for r in self.request_log]
        if request.query.get("clear") in ("1", "true"):
            self.request_log.clear()
        return web.json_response(out)

    # ---- generation ------------------------------------------------------------------------
    def _check_key(self, request: web.Request) -> None:
        key = self.args.api_key
        if key and not oa.key_matches(request.headers.get("Authorization"), key):
            raise web.HTTPUnauthorized(text=json.dumps(oa.error_body(
                "invalid or missing API key", 401, "AuthenticationError")),
                content_type="application/json")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/completions``."""
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``."""
        return await self._generate(request, chat=True)

    def _error(self, message: str, status: int, param: str | None = None) -> web.Response:
        kind = {400: "BadRequestError", 404: "NotFoundError"}.get(status, "InternalServerError")
        return web.json_response(oa.error_body(message, status, kind, param), status=status)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        recv_s = asyncio.get_running_loop().time()
        self._check_key(request)
        if self.faults.get("status"):
            return self._error("injected fault", int(self.faults["status"]))
        try:
            req = oa.parse_generation(await request.json(), chat)
        except oa.BadRequest as e:
            return self._error(str(e), 400, e.field)
        except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError)
            return self._error("body: not valid UTF-8 JSON", 400, "body")
        model = req.body.get("model", self.served_model_name)
        if model != self.served_model_name:
            return self._error(f"The model `{model}` does not exist.", 404, "model")
        total = req.num_prompt_tokens + req.max_tokens
        if total > self.max_model_len or not self.engine.fits_ever(total):
            return self._error(f"prompt ({req.num_prompt_tokens} tokens) + max_tokens "
                               f"({req.max_tokens}) exceed the context of this instance", 400,
                               "max_tokens")
        rid = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        seq = Seq(rid, req.num_prompt_tokens, req.max_tokens, loop.time(), recv_s=recv_s)
        kv = req.kv_transfer_params or {}
        seq.keep_kv = bool(kv.get("do_remote_decode"))
        if kv.get("do_remote_prefill"):
            self.last_remote_prefill = kv
            err = await self._pull_remote_kv(seq, kv)
            if err:
                return self._error(err, 500)
        self.engine.submit(seq)
        self.metrics.prompt_tokens.labels(**self.metrics.labels).inc(req.num_prompt_tokens)
        try:
            if req.stream:
                return await self._stream(request, req, seq, model)
            return await self._collect(req, seq, model)
        finally:
            if not seq.finished:
                self.engine.abort(seq)

    async def _pull_remote_kv(self, seq: Seq, kv: dict) -> str | None:
        """Fetch the producer's KV; sets ``num_computed_tokens``. Returns an error or None."""
        if any(kv.get(k) is None for k in REMOTE_KEYS):
            logger.warning("Got invalid KVTransferParams: %s; prefilling locally", kv)
            return None
        self.engine.num_pulling += 1
        try:
            url = f"http://{kv['remote_host']}:{kv['remote_port']}/emulator/kv_pull"
            async with self.session.post(url, json={
                    "remote_request_id": kv["remote_request_id"],
                    "remote_engine_id": kv["remote_engine_id"]}) as r:
                if r.status != 200:
                    raise RuntimeError(f"producer answered {r.status}")
                n = int((await r.json())["num_tokens"])
            await asyncio.sleep(float(kv_transfer_time_s(self.model, n, self.link)))
        except (TimeoutError, aiohttp.ClientError, RuntimeError, KeyError) as e:
            msg = f"KV load from {kv.get('remote_host')}:{kv.get('remote_port')} failed: {e}"
            if self.args.kv_load_failure_policy == "fail":
                return msg
            logger.warning("%s; recomputing the prompt", msg)
            return None
        finally:
            self.engine.num_pulling -= 1
        seq.num_computed_tokens = min(n, seq.num_prompt_tokens - 1)
        return None

    def _kv_params(self, seq: Seq) -> dict | None:
        if not seq.keep_kv:
            return None
        if self.faults.get("null_kv_params"):
            self.engine.release_pinned(seq.rid)
            return None
        nblocks = self.engine.blocks_for(seq.num_computed_tokens)
        return {"do_remote_prefill": True, "do_remote_decode": False,
                "remote_block_ids": list(range(nblocks)), "remote_engine_id": self.engine_id,
                "remote_request_id": seq.rid, "remote_host": self.args.host,
                "remote_port": self.args.port, "tp_size": self.args.tensor_parallel_size}

    def _observe(self, seq: Seq, now_s: float, last_s: float, reason: str) -> None:
        m, lab = self.metrics, self.metrics.labels
        m.gen_tokens.labels(**lab).inc(seq.num_output_tokens)
        m.success.labels(**lab, finished_reason=reason).inc()
        m.e2e.labels(**lab).observe(now_s - seq.arrival_s)
        if seq.first_token_s >= 0:
            m.ttft.labels(**lab).observe(seq.first_token_s - seq.arrival_s)
        if seq.first_scheduled_s >= 0:
            m.queue.labels(**lab).observe(seq.first_scheduled_s - seq.arrival_s)
        self.request_log.append((
            seq.rid, seq.num_prompt_tokens, seq.num_output_tokens, seq.recv_s, seq.arrival_s,
            seq.first_scheduled_s, seq.first_token_s, seq.first_sent_s, seq.finish_s,
            seq.last_sent_s))

    def _observe_token(self, val: int, now_s: float, last_s: float) -> None:
        """Inter-token latency of output token ``val`` (from the 2nd on), every request."""
        if val > 1:
            self.metrics.itl.labels(**self.metrics.labels).observe(now_s - last_s)

    async def _collect(self, req: oa.GenRequest, seq: Seq, model: str) -> web.Response:
        ids: list[int] = []
        loop = asyncio.get_running_loop()
        last_s = seq.arrival_s
        while True:
            kind, val = await seq.events.get()
            if kind == "end":
                break
            now_s = loop.time()
            self._observe_token(val, now_s, last_s)
            last_s = now_s
            ids.append(oa.output_token_id(seq.num_prompt_tokens + val - 1))
        loop_s = loop.time()
        seq.first_sent_s = seq.last_sent_s = loop_s  # the whole answer goes at once
        self._observe(seq, loop_s, last_s, val)
        text = "".join(oa.token_text(t) for t in ids)
        prefix = "chatcmpl-" if req.chat else "cmpl-"
        want_ids = req.return_token_ids
        body = oa.full_response(prefix + seq.rid, model, text, val,
                                oa.usage(req.num_prompt_tokens, len(ids)), chat=req.chat,
                                kv_transfer_params=self._kv_params(seq),
                                prompt_token_ids=req.prompt_token_ids if want_ids else None,
                                token_ids=ids if want_ids else None)
        return web.json_response(body, headers={"X-Request-Id": seq.rid})

    async def _stream(self, request: web.Request, req: oa.GenRequest, seq: Seq,
                      model: str) -> web.StreamResponse:
        """SSE as vLLM: a chunk per token, written when the engine samples it.

        The finish reason rides on the last token's chunk.
        """
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache", "X-Request-Id": seq.rid})
        await resp.prepare(request)
        rid = ("chatcmpl-" if req.chat else "cmpl-") + seq.rid
        want_ids = req.return_token_ids
        if req.chat:
            await resp.write(oa.sse(oa.completion_chunk(rid, model, None, chat=True,
                                                        first=True)))
        drop = int(self.faults.get("drop_after_tokens") or 0)
        if self.faults.get("drop_before_first_token"):
            return self._drop(request, resp, seq, 0)
        loop = asyncio.get_running_loop()
        last_s = seq.arrival_s
        sent = 0

        while True:
            kind, val = await seq.events.get()
            if kind == "end":
                break
            now_s = loop.time()
            self._observe_token(val, now_s, last_s)
            last_s = now_s
            # the engine marks the request finished before it queues the last token's event
            last = seq.finish_reason is not None and val >= seq.num_output_tokens
            tid = oa.output_token_id(seq.num_prompt_tokens + val - 1)
            await resp.write(oa.sse(oa.completion_chunk(
                rid, model, oa.token_text(tid), seq.finish_reason if last else None,
                chat=req.chat, token_ids=[tid] if want_ids else None)))
            sent += 1
            seq.last_sent_s = loop.time()
            if sent == 1:
                seq.first_sent_s = seq.last_sent_s
            if drop and sent >= drop and not last:
                return self._drop(request, resp, seq, sent)
        self._observe(seq, loop.time(), last_s, val)
        tail = []  # what follows the last token goes out in one write with the end
        if sent == 0:  # no token at all: the finish reason alone
            tail.append(oa.sse(oa.completion_chunk(rid, model, None if req.chat else "",
                                                   val, chat=req.chat)))
        if req.include_usage:
            tail.append(oa.sse(oa.usage_chunk(
                rid, model, oa.usage(req.num_prompt_tokens, seq.num_output_tokens),
                chat=req.chat)))
        tail.append(oa.DONE)
        await resp.write_eof(b"".join(tail))
        return resp

    def _drop(self, request: web.Request, resp: web.StreamResponse, seq: Seq,
              sent: int) -> web.StreamResponse:
        """Injected fault: close the connection abruptly after ``sent`` tokens."""
        logger.warning("injected fault: dropping the stream of %s after %d tokens", seq.rid,
                       sent)
        self.engine.abort(seq)
        request.transport.close()
        return resp


def resolve_async_scheduling(args: argparse.Namespace) -> bool:
    """``--[no-]async-scheduling``, else vLLM's default for the pipeline parallelism.

    Raises:
        ValueError: naming the field, for a bad value.
    """
    return InstanceConfig(tensor_parallel_size=args.tensor_parallel_size,
                          pipeline_parallel_size=args.pipeline_parallel_size,
                          async_scheduling=args.async_scheduling).async_scheduling


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags (``vllm serve`` names where one exists)."""
    p = argparse.ArgumentParser(prog="python -m runtime.emulator", description=__doc__.split(
        "\n")[0])
    p.add_argument("--role", choices=("unified", "prefill", "decode"), default="unified",
                   help="label only: any instance serves either P/D leg (as NIXL)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default="Llama-3.1-8B", help="catalog model name")
    p.add_argument("--served-model-name", default="", help="default: the model's HF id")
    p.add_argument("--gpu", default="A100-80GB-SXM", help="catalog GPU name")
    p.add_argument("--tensor-parallel-size", "--tp", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", "--pp", type=int, default=1)
    p.add_argument("--perf-backend", default="analytic")
    p.add_argument("--max-num-seqs", type=int, default=0, help="0 = vLLM's default")
    p.add_argument("--max-num-batched-tokens", type=int, default=0, help="0 = vLLM's default")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--num-gpu-blocks-override", type=int, default=0)
    p.add_argument("--max-model-len", type=int, default=0)
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                   help="plan each iteration while the previous one runs (default: vLLM's, "
                        "on unless --pipeline-parallel-size > 1)")
    p.add_argument("--slowdown", type=float, default=1.0,
                   help="multiply every iteration time (a slow GPU)")
    p.add_argument("--kv-link", default="nvlink_a100", help="KV transfer link preset")
    p.add_argument("--kv-load-failure-policy", choices=("fail", "recompute"), default="fail")
    p.add_argument("--kv-abort-timeout-s", type=float, default=480.0)
    p.add_argument("--engine-id", default="")
    p.add_argument("--api-key", default="")
    p.add_argument("--legacy-metric-names", action="store_true",
                   help="vllm:gpu_cache_usage_perc instead of kv_cache_usage_perc (vLLM<=0.9)")
    p.add_argument("--fault-status", type=int, default=0,
                   help="answer every generation request with this HTTP status (tests)")
    return p


def main(argv: list[str] | None = None) -> None:
    """Run one emulated instance until interrupted."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    emu = Emulator(args)
    logger.info("emulating %s on %s (%s): %d KV blocks, %d seqs, %d tokens/iteration, "
                "async scheduling %s", emu.model.name, args.gpu, args.role,
                emu.engine.num_blocks, emu.engine.max_num_seqs,
                emu.engine.max_num_batched_tokens, "on" if emu.async_scheduling else "off")
    # a client that goes away cancels its handler, which aborts the request (frees its KV
    # blocks and its slot) at once, as vLLM does; without this a non-streaming request, or a
    # streaming one before its first token, ran to its end for nobody
    web.run_app(emu.app(), host=args.host, port=args.port, access_log=None,
                handler_cancellation=True, print=lambda *a: None)


if __name__ == "__main__":
    main()
