"""What the router knows about its backends: own in-flight accounting plus scraped /metrics.

One job: keep per-backend state and turn it into the simulator's
:class:`~sim.routing.ClusterView`, so a policy sees the same fields live as in simulation.

A field of the view, per backend ``i``::

    num_running            scraped vllm:num_requests_running
    num_waiting            max(scraped vllm:num_requests_waiting,
                               router in-flight - scraped running)   (sent, not yet counted)
    queued_prefill_tokens  prompt tokens the router sent whose prefill has not returned
                           (first token or prefill-leg response; vLLM exports no such gauge)
    kv_used_blocks         round(scraped vllm:kv_cache_usage_perc * kv_total_blocks)
                           (vllm:gpu_cache_usage_perc on vLLM <= 0.9)
    kv_total_blocks        the policy sidecar's, else vllm:cache_config_info num_gpu_blocks,
                           else --default-kv-blocks
    num_transfers_in       decode/Follow legs sent here that have not produced a token yet
    num_transfers_out      prefill/Lead legs from here whose Follow has no token yet

A backend is healthy while its last scrape succeeded and no request failure put it in
cool-down (``down_until_s``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from dataclasses import dataclass

import aiohttp

from sim.routing import ClusterView

logger = logging.getLogger(__name__)

RUNNING = ("vllm:num_requests_running",)
WAITING = ("vllm:num_requests_waiting",)
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
"""Metric names in order of preference (the second is vLLM <= 0.9's)."""
CACHE_INFO = "vllm:cache_config_info"


@dataclass
class Scrape:
    """Values read from one ``/metrics`` page (summed over engines)."""

    num_running: int = 0
    num_waiting: int = 0
    kv_used_frac: float = 0.0
    num_gpu_blocks: int = 0
    """From vllm:cache_config_info, 0 if absent."""


_WANTED = RUNNING + WAITING + KV_USAGE + (CACHE_INFO,)
_SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)[ \t]*(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?'
                     r'[ \t]+(\S+)')
"""A sample line of the text exposition format: name, optional {labels}, value."""
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"')


def _finite(text: str) -> float | None:
    """A label value as a finite float, None for NaN/Inf/unparsable (e.g. ``"None"``)."""
    try:
        x = float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def parse_metrics(text: str) -> Scrape:
    """Read the gauges a router needs from Prometheus text (older names as fallback).

    Only the sample lines of those gauges are parsed (a vLLM page is mostly histogram lines
    the router does not read; a full parse would hold the event loop for milliseconds).

    Non-finite values (``NaN``, ``+Inf``) count as absent: the older metric name, else 0, is
    used (a NaN would break the view's arithmetic, an Inf the int conversion).

    Raises:
        ValueError: a line of one of those gauges is malformed.
    """
    samples: dict[str, list[float]] = {}
    blocks = 0
    for line in text.splitlines():
        if not line.startswith(_WANTED):  # comments, other metrics
            continue
        m = _SAMPLE.match(line)
        if m is None:
            raise ValueError(f"malformed metrics line {line[:120]!r}")
        name, labels, value = m.groups()
        if name not in _WANTED:  # a longer name with the same prefix
            continue
        if name == CACHE_INFO:
            for key, v in _LABEL.findall(labels or ""):
                if key == "num_gpu_blocks":
                    n = _finite(v)  # "None" before the engine sized its cache: absent
                    if n is not None and n > 0:
                        blocks += int(n)
            continue
        x = float(value)
        if not math.isfinite(x):  # NaN/Inf: absent (the older name or 0 is used instead)
            continue
        samples.setdefault(name, []).append(x)
    values = {name: (sum(v) if name not in KV_USAGE else sum(v) / len(v))
              for name, v in samples.items()}

    def first(names: tuple[str, ...]) -> float:
        return next((values[n] for n in names if n in values), 0.0)

    return Scrape(int(first(RUNNING)), int(first(WAITING)), float(first(KV_USAGE)), blocks)


@dataclass
class Backend:
    """One vLLM instance behind the router."""

    index: int
    """Position in ``--backends`` (the policy's instance index)."""
    url: str
    """Base URL, e.g. ``http://127.0.0.1:8100``."""
    role: str
    """unified, prefill or decode."""
    kv_total_blocks: int
    """KV blocks of the instance (see the module docstring)."""
    scrape: Scrape | None = None
    """Last successful scrape (None before the first)."""
    scrape_ok: bool = False
    down_until_s: float = 0.0
    """Monotonic time until which request failures keep it out of decisions."""
    inflight: int = 0
    """Legs the router has open on it."""
    queued_prefill_tokens: int = 0
    transfers_in: int = 0
    transfers_out: int = 0

    def healthy(self, now_s: float) -> bool:
        """Whether decisions may use it."""
        return self.scrape_ok and now_s >= self.down_until_s

    def cool_down(self, seconds: float) -> None:
        """Keep it out of decisions for a while after a failure."""
        self.down_until_s = time.monotonic() + seconds

    def load(self) -> int:
        """Requests on it (for fallback choices)."""
        s = self.scrape
        scraped = (s.num_running + s.num_waiting) if s else 0
        return max(scraped, self.inflight)


_NO_SCRAPE = Scrape()


def view_fields(backends: list[Backend]) -> dict[str, list[int]]:
    """Every :data:`~sim.routing.VIEW_FIELDS` list of the backends now (module docstring)."""
    running, waiting, used, queued, t_in, t_out, total = [], [], [], [], [], [], []
    for b in backends:
        s = b.scrape or _NO_SCRAPE
        r = s.num_running
        running.append(r)
        waiting.append(max(s.num_waiting, b.inflight - r))
        used.append(round(s.kv_used_frac * b.kv_total_blocks))
        queued.append(b.queued_prefill_tokens)
        t_in.append(b.transfers_in)
        t_out.append(b.transfers_out)
        total.append(b.kv_total_blocks)
    return {"num_waiting": waiting, "num_running": running, "queued_prefill_tokens": queued,
            "kv_used_blocks": used, "kv_total_blocks": total, "num_transfers_in": t_in,
            "num_transfers_out": t_out}


def build_view(backends: list[Backend], now_s: float, block_size: int) -> ClusterView:
    """The :class:`ClusterView` of the backends now (see the module docstring)."""
    return ClusterView(now_s, tuple(b.role for b in backends), block_size,
                       **view_fields(backends))


async def scrape_once(session: aiohttp.ClientSession, b: Backend, headers: dict,
                      kv_from_metrics: bool) -> None:
    """Scrape one backend; marks it healthy or not."""
    try:
        async with session.get(b.url + "/metrics", headers=headers) as r:
            if r.status != 200:
                raise aiohttp.ClientResponseError(r.request_info, (), status=r.status)
            s = parse_metrics(await r.text())
    except (TimeoutError, aiohttp.ClientError, ValueError) as e:
        if b.scrape_ok:
            logger.warning("backend %d (%s) scrape failed: %s", b.index, b.url, e)
        b.scrape_ok = False
        return
    if not b.scrape_ok:
        logger.info("backend %d (%s) is up", b.index, b.url)
    b.scrape, b.scrape_ok = s, True
    if kv_from_metrics and s.num_gpu_blocks:
        b.kv_total_blocks = s.num_gpu_blocks


async def scrape_forever(session: aiohttp.ClientSession, backends: list[Backend],
                         interval_s: float, headers: dict, kv_from_metrics: bool) -> None:
    """Scrape every backend every ``interval_s`` seconds, concurrently."""
    while True:
        results = await asyncio.gather(*(scrape_once(session, b, headers, kv_from_metrics)
                                         for b in backends), return_exceptions=True)
        for b, r in zip(backends, results, strict=True):
            if isinstance(r, Exception):  # never let one odd page end scraping for good
                logger.error("backend %d (%s) scrape raised %r", b.index, b.url, r)
                b.scrape_ok = False
        await asyncio.sleep(interval_s)
