"""Benchmark client: ``python -m runtime.loadgen --base-url URL --workload NAME|YAML ...``.

One job: replay a workload built by :mod:`sim.workload` (arrival times, prompt and output
lengths of a ``conf/workload`` config, a WorkloadConfig YAML, or a trace config) open-loop
against any OpenAI-compatible ``/v1/completions`` endpoint with streaming, and report the
metrics of ``vllm bench serve`` (protocol notes, section 5):

- each request: ``stream: true``, ``stream_options.include_usage``, ``max_tokens`` = the
  output length, ``ignore_eos: true``; the prompt is that many words (the emulator counts one
  token per word; against real vLLM the token count is only close);
- TTFT = send to the first SSE message with non-empty ``choices``; ITL = gaps between such
  messages, pooled over requests; E2EL = send to the last such message (the usage chunk does
  not move it); output tokens from ``usage.completion_tokens`` (else the messages counted);
- TPOT per request = (E2EL - TTFT) / (output - 1) when output > 1;
- request / output / total-token throughput over the benchmark duration (first send to last
  finish); goodput = requests meeting every SLO of ``--goodput ttft:MS tpot:MS e2el:MS``
  (single-token requests count as TPOT 0) / duration.

Every request ends ``completed`` or ``failed`` with a reason (``http_<status>: message``,
``stream_error: message`` for an error event, ``no_choice_chunk``, ``truncated`` for a
stream that ended without ``[DONE]``, ``timeout``, or the exception's class). Prints a table
like ``vllm bench serve``; ``--result-json PATH`` (``-`` = stdout) writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

CONF_WORKLOAD = Path(__file__).resolve().parents[1] / "conf" / "workload"
PROMPT_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
                "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa")
"""Prompts are made of these words (one emulator token each)."""
GOODPUT_KEYS = ("ttft", "tpot", "e2el")


@dataclass
class RequestResult:
    """What one request measured (times in seconds, relative to its send)."""

    index: int
    prompt_tokens: int
    max_tokens: int
    request_id: str = ""
    """Sent as ``X-Request-Id`` (the router and vLLM use it as the request's id)."""
    sched_s: float = 0.0
    """Scheduled send time (the workload's arrival), seconds since the benchmark start."""
    send_s: float = 0.0
    """Actual send time (TTFT and E2EL are measured from it), seconds since the start;
    ``send_s - sched_s`` is the load generator's own lateness."""
    send_mono_s: float = 0.0
    """The same instant on ``time.monotonic()`` (to line up with server-side timestamps)."""
    success: bool = False
    reason: str = ""
    """Why it failed ('' when completed)."""
    ttft_s: float = 0.0
    latency_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int = 0


def load_workload_config(spec: str):
    """A :class:`sim.workload.WorkloadConfig` from a ``conf/workload`` name or a YAML path."""
    from omegaconf import OmegaConf

    from sim.workload import WorkloadConfig

    path = Path(spec) if spec.endswith((".yaml", ".yml")) else CONF_WORKLOAD / f"{spec}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONF_WORKLOAD.glob("*.yaml")))
        raise SystemExit(f"workload {spec!r} not found; give a YAML path or one of: {known}")
    merged = OmegaConf.merge(OmegaConf.structured(WorkloadConfig), OmegaConf.load(path))
    return OmegaConf.to_object(merged)


def build(spec: str, num_requests: int | None = None, rate_scale: float = 1.0,
          seed: int = 0):
    """The :class:`sim.workload.Workload` to replay (``num_requests`` caps / sets the count)."""
    import dataclasses

    from sim.workload import build_workload

    cfg = load_workload_config(spec)
    if num_requests:
        cfg = dataclasses.replace(cfg, num_requests=num_requests, max_requests=num_requests)
    if rate_scale != 1.0:
        cfg = dataclasses.replace(cfg, rate_scale=cfg.rate_scale * rate_scale)
    return build_workload(cfg, np.random.default_rng(seed))


def make_prompt(index: int, num_tokens: int) -> str:
    """``num_tokens`` words; the first names the request (no shared prefixes)."""
    words = [f"r{index}"]
    n = len(PROMPT_WORDS)
    words += [PROMPT_WORDS[(index + j) % n] for j in range(num_tokens - 1)]
    return " ".join(words)


def parse_goodput(items: list[str] | None) -> dict[str, float]:
    """``["ttft:500", "tpot:50"]`` -> ``{"ttft": 0.5, "tpot": 0.05}`` (seconds)."""
    out = {}
    for item in items or []:
        key, _, value = item.partition(":")
        if key not in GOODPUT_KEYS or not value:
            raise SystemExit(f"--goodput {item!r}: use KEY:MS with KEY in {GOODPUT_KEYS}")
        out[key] = float(value) / 1000.0
    return out


class _Stream:
    """Timestamps of one streamed response (``vllm bench serve``'s bookkeeping)."""

    def __init__(self, r: RequestResult, st: float) -> None:
        self.r, self.st, self.last = r, st, st
        self.chunks = 0
        self.usage_tokens: int | None = None
        self.done = False

    def event(self, payload: bytes) -> str:
        """Handle one ``data:`` payload; returns a failure reason or ''."""
        if payload == b"[DONE]":
            self.done = True
            return ""
        msg = json.loads(payload)
        if msg.get("error") or msg.get("object") == "error":
            err = msg.get("error")
            text = err.get("message") if isinstance(err, dict) else msg.get("message", err)
            return f"stream_error: {text}"
        now = time.perf_counter()
        if msg.get("choices"):
            if self.chunks == 0:
                self.r.ttft_s = now - self.st
            else:
                self.r.itl_s.append(now - self.last)
            self.last = now
            self.chunks += 1
        if msg.get("usage"):
            self.usage_tokens = msg["usage"].get("completion_tokens")
        return ""

    def finish(self) -> None:
        """Mark the request completed or failed after the stream closed."""
        r = self.r
        if self.chunks == 0:
            r.reason = "no_choice_chunk"
        elif not self.done:
            r.reason = "truncated"
        else:
            r.latency_s = self.last - self.st
            r.output_tokens = int(self.usage_tokens) if self.usage_tokens is not None \
                else self.chunks
            r.success = True


async def _http_error(resp) -> str:
    text = (await resp.text())[:200]
    try:
        text = json.loads(text).get("message") or text
    except (ValueError, AttributeError):
        pass
    return f"http_{resp.status}: {text}"


async def _one(session, url: str, model: str, r: RequestResult, headers: dict,
               timeout_s: float, t0: float) -> None:
    import aiohttp

    body = {"model": model, "prompt": make_prompt(r.index, r.prompt_tokens),
            "max_tokens": r.max_tokens, "stream": True, "ignore_eos": True,
            "temperature": 0.0, "stream_options": {"include_usage": True}}
    if r.request_id:
        headers = {**headers, "X-Request-Id": r.request_id}
    now = time.perf_counter()
    r.send_s, r.send_mono_s = now - t0, time.monotonic()
    st = _Stream(r, now)
    try:
        async with asyncio.timeout(timeout_s), session.post(url, json=body,
                                                            headers=headers) as resp:
            if resp.status != 200:
                r.reason = await _http_error(resp)
                return
            buf = b""
            async for data in resp.content.iter_any():
                buf += data
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    for line in event.split(b"\n"):
                        if line.startswith(b"data:") and (reason := st.event(line[5:].strip())):
                            r.reason = reason
                            return
    except TimeoutError:
        r.reason = "timeout"
        return
    except (aiohttp.ClientError, OSError, ValueError) as e:
        r.reason = f"{type(e).__name__}: {e}"[:200]
        return
    st.finish()


async def fetch_model(base_url: str, headers: dict | None = None) -> str:
    """``data[0].id`` of ``GET /v1/models``."""
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(f"{base_url}/v1/models",
                                                   headers=headers or {}) as resp:
        return (await resp.json())["data"][0]["id"]


async def replay(base_url: str, workload, model: str = "", api_key: str = "",
                 timeout_s: float = 600.0, endpoint: str = "/v1/completions",
                 request_id_prefix: str | None = None
                 ) -> tuple[list[RequestResult], float]:
    """Send every request at its arrival time; returns the results and the duration, s.

    Request ``i`` goes with ``X-Request-Id: <request_id_prefix><i>`` (default prefix:
    ``bench-<random>-``; ``""`` sends none). Sends are timed against absolute targets (the
    start + the arrival), so a late one does not delay the next; ``send_s - sched_s`` is
    what the load generator itself added (timer granularity, a busy event loop).
    """
    import aiohttp

    base_url = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    model = model or await fetch_model(base_url, headers)
    url = base_url + endpoint
    if request_id_prefix is None:
        request_id_prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    arrivals = (workload.arrival_s - workload.arrival_s[0]).tolist()
    results = [RequestResult(i, int(p), int(o),
                             f"{request_id_prefix}{i}" if request_id_prefix else "", a)
               for i, (p, o, a) in enumerate(zip(workload.prompt_tokens.tolist(),
                                                 workload.output_tokens.tolist(), arrivals,
                                                 strict=True))]
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        t0 = time.perf_counter()
        tasks = []
        for r in results:
            delay = t0 + r.sched_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(session, url, model, r, headers, timeout_s,
                                                  t0)))
        await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
    return results, duration


def _stats(xs: list[float], percentiles: list[float]) -> dict:
    a = np.asarray(xs, dtype=float) * 1000.0
    if a.size == 0:
        a = np.zeros(1)
    out = {"mean": float(a.mean()), "median": float(np.median(a)), "std": float(a.std())}
    for p in percentiles:
        out[f"p{p:g}"] = float(np.percentile(a, p))
    return out


def summarize(results: list[RequestResult], duration_s: float,
              goodput: dict[str, float] | None = None,
              percentiles: tuple[float, ...] = (99.0,)) -> dict:
    """``vllm bench serve``'s numbers (latencies in ms) plus failure reasons."""
    ok = [r for r in results if r.success]
    pct = list(percentiles)
    tpots = [(r.latency_s - r.ttft_s) / (r.output_tokens - 1) for r in ok
             if r.output_tokens > 1]
    itls = [x for r in ok for x in r.itl_s]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    out = {
        "num_requests": len(results), "completed": len(ok), "failed": len(results) - len(ok),
        "failure_reasons": dict(Counter(r.reason.split(":")[0] for r in results
                                        if not r.success)),
        "duration_s": duration_s,
        "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration_s,
        "output_throughput": out_tokens / duration_s,
        "total_token_throughput": (in_tokens + out_tokens) / duration_s,
        "ttft_ms": _stats([r.ttft_s for r in ok], pct),
        "tpot_ms": _stats(tpots, pct),
        "itl_ms": _stats(itls, pct),
        "e2el_ms": _stats([r.latency_s for r in ok], pct),
        "send_lateness_ms": {**_stats([r.send_s - r.sched_s for r in results], pct),
                             "max": 1e3 * max((r.send_s - r.sched_s for r in results),
                                              default=0.0)},
    }
    ends = sorted([(r.send_s, 1) for r in results] +
                  [(r.send_s + (r.latency_s if r.success else 0.0), -1) for r in results],
                  key=lambda x: (x[0], x[1]))
    cur = peak = 0
    for _, d in ends:
        cur += d
        peak = max(peak, cur)
    out["max_concurrent_requests"] = peak
    if goodput:
        good = 0
        for r in ok:
            tpot = (r.latency_s - r.ttft_s) / (r.output_tokens - 1) if r.output_tokens > 1 \
                else 0.0
            vals = {"ttft": r.ttft_s, "tpot": tpot, "e2el": r.latency_s}
            good += all(vals[k] <= v for k, v in goodput.items())
        out["goodput_slo_ms"] = {k: v * 1000.0 for k, v in goodput.items()}
        out["good_requests"] = good
        out["request_goodput"] = good / duration_s
    return out


def format_table(s: dict) -> str:
    """The summary as ``vllm bench serve`` prints it."""
    lines = ["{s:{c}^60}".format(s=" Serving Benchmark Result ", c="=")]

    def row(label, value, fmt="{:<10.2f}"):
        lines.append(f"{label:<45} " + fmt.format(value))

    row("Successful requests:", s["completed"], "{:<10}")
    row("Failed requests:", s["failed"], "{:<10}")
    for reason, n in sorted(s["failure_reasons"].items()):
        row(f"  failed ({reason}):", n, "{:<10}")
    row("Benchmark duration (s):", s["duration_s"])
    row("Total input tokens:", s["total_input_tokens"], "{:<10}")
    row("Total generated tokens:", s["total_output_tokens"], "{:<10}")
    row("Request throughput (req/s):", s["request_throughput"])
    if "request_goodput" in s:
        row("Request goodput (req/s):", s["request_goodput"])
    row("Output token throughput (tok/s):", s["output_throughput"])
    row("Total token throughput (tok/s):", s["total_token_throughput"])
    row("Max concurrent requests:", s["max_concurrent_requests"], "{:<10}")
    if "send_lateness_ms" in s:
        late = s["send_lateness_ms"]
        row("Send lateness, mean / max (ms):", f"{late['mean']:.2f} / {late['max']:.2f}",
            "{:<10}")
    for key, title in (("ttft_ms", "Time to First Token"),
                       ("tpot_ms", "Time per Output Token (excl. 1st token)"),
                       ("itl_ms", "Inter-token Latency"), ("e2el_ms", "End-to-end Latency")):
        short = key.split("_")[0].upper()
        lines.append("{s:{c}^60}".format(s=f" {title} ", c="-"))
        st = s[key]
        row(f"Mean {short} (ms):", st["mean"])
        row(f"Median {short} (ms):", st["median"])
        for k, v in st.items():
            if k.startswith("p"):
                row(f"P{k[1:]} {short} (ms):", v)
    lines.append("=" * 60)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags."""
    p = argparse.ArgumentParser(prog="python -m runtime.loadgen",
                                description=__doc__.split("\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8080")
    p.add_argument("--workload", default="poisson",
                   help="conf/workload name or a WorkloadConfig YAML path")
    p.add_argument("--num-requests", type=int, default=0, help="0 = the config's count")
    p.add_argument("--rate-scale", type=float, default=1.0, help="multiply the arrival rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="", help="default: /v1/models data[0].id")
    p.add_argument("--api-key", default="")
    p.add_argument("--goodput", nargs="*", default=None, metavar="KEY:MS",
                   help="SLOs, e.g. ttft:500 tpot:50 (e2el also allowed)")
    p.add_argument("--metric-percentiles", default="99",
                   help="comma-separated percentiles, e.g. 50,90,99")
    p.add_argument("--timeout-s", type=float, default=600.0, help="per request")
    p.add_argument("--request-id-prefix", default=None,
                   help="X-Request-Id of request i is PREFIX<i> (default: bench-<random>-; "
                        "'' sends none)")
    p.add_argument("--result-json", default="", help="write the summary JSON here ('-' = stdout)")
    p.add_argument("--save-detailed", action="store_true",
                   help="include per-request results in the JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    """Replay, print the table, write JSON; exit 1 if every request failed."""
    a = build_parser().parse_args(argv)
    goodput = parse_goodput(a.goodput)
    workload = build(a.workload, a.num_requests or None, a.rate_scale, a.seed)
    results, duration = asyncio.run(replay(a.base_url, workload, a.model, a.api_key,
                                           a.timeout_s,
                                           request_id_prefix=a.request_id_prefix))
    pct = tuple(float(x) for x in a.metric_percentiles.split(","))
    s = summarize(results, duration, goodput, pct)
    s["workload"] = {"spec": a.workload, "num_requests": len(workload),
                     "rate_per_s": workload.rate_per_s, "seed": a.seed}
    if a.save_detailed:
        s["requests"] = [asdict(r) for r in results]
    if a.result_json != "-":
        print(format_table(s))
    if a.result_json:
        text = json.dumps(s, indent=2)
        if a.result_json == "-":
            print(text)
        else:
            Path(a.result_json).write_text(text)
    return 0 if s["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
