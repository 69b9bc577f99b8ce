"""The emulator's engine: a real-time continuous-batching loop timed by the performance model.

One job: run requests the way a vLLM V1 engine does -- per-iteration token budget
(``max_num_batched_tokens``), ``max_num_seqs``, running requests first then FCFS admissions,
chunked prefill, paged KV blocks -- and sleep each iteration for the time
``LatencyBackend.iteration_time_s`` predicts for its batch. Tokens are emitted at the end of
the iteration that samples them.

Differences from :class:`sim.instance.Instance` (whose aggregated decode batch advances in
closed form and is not meant to be stepped against a wall clock): admission reserves the
blocks of the whole sequence (prompt + ``max_tokens``; vLLM's ``--scheduler-reserve-full-isl``
reserves the prompt's), so there is no preemption; no prefix caching. A prefill leg of a P/D
hand-off (``do_remote_decode``) keeps its blocks pinned after it finishes until the decode
instance pulls them or ``kv_abort_timeout_s`` passes, as NIXL's producer does.

Request state follows ``sim.instance.request``: ``num_computed_tokens`` has KV, it is
prefilling while ``num_computed_tokens < num_prompt_tokens``; each decode iteration computes
the last sampled token and samples the next.

Async scheduling (vLLM's ``--async-scheduling``, on by default since vLLM 0.14 unless
pipeline parallel; :attr:`sim.instance.InstanceConfig.async_scheduling`), as the simulator:
the iteration that starts when iteration N ends was planned while N ran, so it admits only
requests submitted by the start of N (a request arriving during N is first scheduled into
N+2); running requests continue as without it; when that plan would be empty the engine is
idle and schedules at once what is ready, and an idle engine starts an arrival at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from sim.perf import LatencyBackend

logger = logging.getLogger(__name__)

MAX_CATCH_UP_S = 0.025
"""Lateness of an iteration start absorbed, seconds: an iteration that follows another
starts at the previous planned end, and one that an arrival to an idle engine starts begins
at that arrival, if the loop gets there within this (host jitter is not the emulated GPU's
time; a longer stall is lost, not paid back by a burst of zero-length iterations)."""


USE_TIMERFD = sys.platform.startswith("linux")
"""Whether :class:`WakeTimer` may use a ``timerfd`` (else ``asyncio.sleep``)."""


class WakeTimer:
    """Wake-ups at absolute times of the event loop's clock, to tens of microseconds.

    The loop's own timers are rounded up to whole milliseconds by epoll (a sleep ends about
    1 ms late on average, more on a busy machine): every token would reach the client that
    much after the modelled time. On Linux this arms a ``timerfd`` on ``CLOCK_MONOTONIC``
    (the clock of ``loop.time()``) with an absolute expiry and waits for it to become
    readable, without blocking the loop; elsewhere it falls back to ``asyncio.sleep``.
    """

    def __init__(self) -> None:
        self._fd = -1
        self._fut: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._settime = None

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if not USE_TIMERFD or \
                time.get_clock_info("monotonic").implementation != "clock_gettime(CLOCK_MONOTONIC)":
            return
        fd = -1
        try:
            import ctypes

            class Timespec(ctypes.Structure):
                _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

            class Itimerspec(ctypes.Structure):
                _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]

            libc = ctypes.CDLL(None, use_errno=True)
            libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int,
                                             ctypes.POINTER(Itimerspec), ctypes.c_void_p]
            fd = libc.timerfd_create(1, os.O_NONBLOCK | os.O_CLOEXEC)  # CLOCK_MONOTONIC
            if fd < 0:
                return

            def settime(t_s: float) -> bool:
                sec = int(t_s)
                spec = Itimerspec(Timespec(0, 0),
                                  Timespec(sec, max(1, int((t_s - sec) * 1e9))))
                return libc.timerfd_settime(fd, 1, ctypes.byref(spec), None) == 0  # ABSTIME

            loop.add_reader(fd, self._on_expiry)
        except (OSError, AttributeError, NotImplementedError):
            if fd >= 0:  # created, but this loop cannot watch it: do not leak it
                os.close(fd)
            return
        self._fd, self._settime = fd, settime

    def _on_expiry(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            return
        if self._fut is not None and not self._fut.done():
            self._fut.set_result(None)

    async def sleep_until(self, t_s: float) -> None:
        """Return at ``loop.time() >= t_s`` (at once, after one yield, if that is past)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self.close()
            self._open(loop)
        if self._settime is None or t_s <= loop.time() or not self._settime(t_s):
            await asyncio.sleep(max(t_s - loop.time(), 0.0))
            while loop.time() < t_s:  # asyncio may fire a timer a clock tick early
                await asyncio.sleep(t_s - loop.time())
            return
        self._fut = loop.create_future()
        await self._fut
        while loop.time() < t_s:  # float rounding of the expiry: never return early
            await asyncio.sleep(t_s - loop.time())

    def close(self) -> None:
        """Release the timerfd."""
        if self._fd >= 0:
            try:
                self._loop.remove_reader(self._fd)
            except (RuntimeError, ValueError):  # loop closed
                pass
            os.close(self._fd)
        self._fd, self._settime, self._fut = -1, None, None


@dataclass(eq=False)
class Seq:
    """One request inside the engine."""

    rid: str
    """Request id (vLLM's internal id; the X-Request-Id when given)."""
    num_prompt_tokens: int
    """Prompt length, tokens."""
    max_tokens: int
    """Outputs to sample."""
    arrival_s: float
    """Engine clock (monotonic) at submission, seconds."""
    ready_s: float = -1.0
    """Engine clock when it was submitted (after a remote KV pull, later than arrival)."""
    num_computed_tokens: int = 0
    """Tokens with KV here (starts at ``prompt - 1`` after a remote prefill)."""
    num_output_tokens: int = 0
    """Outputs sampled so far."""
    num_blocks: int = 0
    """KV blocks it holds."""
    keep_kv: bool = False
    """Pin the blocks after finishing (prefill leg of a P/D hand-off)."""
    first_scheduled_s: float = -1.0
    """Start of the iteration that first admitted it (queue time = this - arrival_s)."""
    first_token_s: float = -1.0
    """When output 1 was sampled: the planned end of that iteration."""
    finish_s: float = -1.0
    """When the last output was sampled (planned end of that iteration), or -1."""
    finish_reason: str | None = None
    """Set (with ``finished``) before the last token's event is queued, so a reader of the
    token event knows it is the last one without waiting for ``("end", ...)``."""
    recv_s: float = -1.0
    """Emulator bookkeeping: when its HTTP handler started (before the body was read)."""
    first_sent_s: float = -1.0
    """Emulator bookkeeping: when the first token's chunk was written to the socket."""
    last_sent_s: float = -1.0
    """Emulator bookkeeping: when the last token's chunk (or the response) was written."""
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    """Items ``("token", n_out)`` per sampled token, then ``("end", finish_reason)``."""
    finished: bool = False


class EmulatedEngine:
    """Continuous batching in real time (see the module docstring)."""

    def __init__(self, backend: LatencyBackend, num_blocks: int, block_size: int,
                 max_num_seqs: int, max_num_batched_tokens: int,
                 slowdown: float = 1.0, kv_abort_timeout_s: float = 480.0, *,
                 async_scheduling: bool = True) -> None:
        """Create an idle engine (start :meth:`run` as a task).

        Args:
            backend: times an iteration from its batch sums.
            num_blocks: KV blocks of the instance.
            block_size: tokens per KV block.
            max_num_seqs: sequences per iteration.
            max_num_batched_tokens: token budget per iteration.
            slowdown: multiplies every iteration time (1 = the model's prediction).
            kv_abort_timeout_s: pinned blocks nobody pulls are freed after this, seconds.
            async_scheduling: plan each iteration while the previous one runs (vLLM's
                ``--async-scheduling``; its default for ``pipeline_parallel_size`` 1; the
                emulator resolves it as :class:`sim.instance.InstanceConfig` does).
        """
        if num_blocks < 1 or block_size < 1 or max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("num_blocks, block_size, max_num_seqs and max_num_batched_tokens "
                             "must all be >= 1")
        if not isinstance(async_scheduling, bool):
            raise ValueError(f"async_scheduling must be true or false, got "
                             f"{async_scheduling!r}")
        self.backend = backend
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.slowdown = slowdown
        self.async_scheduling = async_scheduling
        self.kv_abort_timeout_s = kv_abort_timeout_s
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.pinned: dict[str, tuple[Seq, float]] = {}
        """rid -> (finished prefill leg, expiry on the engine clock)."""
        self.num_used_blocks = 0
        self.num_pulling = 0
        """Decode legs fetching remote KV (reported as waiting, like vLLM's deferred)."""
        self.num_iterations = 0
        self.num_stalls = 0
        """Iterations that started late by more than MAX_CATCH_UP_S after the previous one."""
        self.wake_late_sum_s = 0.0
        self.wake_late_max_s = 0.0
        """Sum and max of how late the loop woke after an iteration's planned end, s."""
        self._wake = asyncio.Event()
        self._timer = WakeTimer()

    # ---- requests --------------------------------------------------------------------------
    def blocks_for(self, num_tokens: int) -> int:
        """KV blocks ``num_tokens`` tokens occupy."""
        return -(-num_tokens // self.block_size)

    def fits_ever(self, num_tokens: int) -> bool:
        """Whether an empty cache could hold ``num_tokens`` tokens."""
        return self.blocks_for(num_tokens) <= self.num_blocks

    def submit(self, seq: Seq) -> None:
        """Queue a request (FCFS); it may join an iteration that starts from now on."""
        seq.ready_s = asyncio.get_running_loop().time()
        self.waiting.append(seq)
        self._wake.set()

    def abort(self, seq: Seq) -> None:
        """Drop a request (client went away); frees its blocks."""
        if seq.finished:
            return
        seq.finished = True
        if seq in self.running:
            self.running.remove(seq)
            self._free(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def release_pinned(self, rid: str) -> int | None:
        """Free a pinned prefill leg's blocks (the decode side read them).

        Returns:
            Tokens whose KV it held, or None if no such pinned request.
        """
        item = self.pinned.pop(rid, None)
        if item is None:
            return None
        seq = item[0]
        self._free(seq)
        self._wake.set()
        return seq.num_computed_tokens

    def _free(self, seq: Seq) -> None:
        self.num_used_blocks -= seq.num_blocks
        seq.num_blocks = 0
        assert 0 <= self.num_used_blocks <= self.num_blocks, "KV block count out of range"

    @property
    def kv_used_frac(self) -> float:
        """KV blocks in use (running and pinned) as a 0-1 fraction."""
        return self.num_used_blocks / self.num_blocks

    # ---- the loop --------------------------------------------------------------------------
    async def run(self) -> None:
        """Step forever: schedule, sleep until the iteration's planned end, emit tokens.

        Timing, on the event loop's monotonic clock:

        - an idle engine waits on an event that :meth:`submit` sets, so a request arriving to
          an idle engine starts its iteration at once (no tick), at its arrival time, as the
          simulator does;
        - back-to-back iterations start at the previous iteration's *planned* end and end at
          ``start + duration`` (absolute targets, waited for with :class:`WakeTimer`, never
          by blocking the loop), so timer overshoot and the Python time spent between
          iterations do not accumulate (the model's engine overhead already
          covers vLLM's own CPU time); a stall longer than :data:`MAX_CATCH_UP_S` is not paid
          back by zero-length iterations: the next one starts when the loop gets control;
        - as vLLM V1, a request that arrives while an iteration runs joins the next one; one
          that arrives after an iteration's planned end (while the loop was still waking up)
          is not slipped into the iteration that started at that end, it joins the one after;
        - with async scheduling, an iteration that follows another was planned while that one
          ran: it admits only requests submitted by the previous iteration's start (one that
          arrives during iteration N joins N+2), unless it would be empty (then the engine is
          idle and admits what is ready at its start).
        """
        try:
            await self._run()
        finally:
            self._timer.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        end_s = -1.0  # planned end of the previous iteration (-1: the engine was idle)
        last_end_s = -1.0  # planned end of the last iteration run
        prev_start_s = -1.0  # start of the previous iteration (async scheduling's cut-off)
        while True:
            now_s = loop.time()
            self._expire_pinned(now_s)
            if end_s >= 0 and now_s - end_s <= MAX_CATCH_UP_S:
                start_s = end_s
            else:
                if end_s >= 0:
                    self.num_stalls += 1
                start_s = now_s
                if end_s < 0 and self.waiting:  # idle: start at the arrival that woke it
                    t_s = max(self.waiting[0].ready_s, last_end_s)
                    if 0 <= now_s - t_s <= MAX_CATCH_UP_S:
                        start_s = t_s
            ready_by = start_s
            if self.async_scheduling and end_s >= 0:
                ready_by = prev_start_s  # planned while the previous iteration ran
            batch = self._schedule(start_s, ready_by)
            if not batch and ready_by < start_s:
                # that plan is empty: the engine idles and admits at once what is ready
                batch = self._schedule(start_s, start_s)
            if not batch:
                if end_s >= 0 and self.waiting and self.waiting[0].ready_s > start_s:
                    end_s = -1.0  # only late arrivals wait: start their iteration now
                    continue
                end_s = -1.0
                self._wake.clear()
                timeout = 1.0 if self.pinned else None
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    pass
                continue
            dt_s = self._iteration_time_s(batch) * self.slowdown
            prev_start_s = start_s
            end_s = last_end_s = start_s + dt_s
            await self._timer.sleep_until(end_s)  # handlers write and read meanwhile
            late_s = loop.time() - end_s
            self.wake_late_sum_s += max(late_s, 0.0)
            self.wake_late_max_s = max(self.wake_late_max_s, late_s)
            self._complete(batch, end_s)
            self.num_iterations += 1

    def _schedule(self, start_s: float, ready_by: float) -> list[tuple[Seq, int]]:
        """Running first (decodes 1 token, prefills a chunk), then FCFS admissions.

        Only requests submitted by ``ready_by`` are admitted: the iteration's start
        ``start_s``, or with async scheduling the previous iteration's start.
        """
        budget = self.max_num_batched_tokens
        batch: list[tuple[Seq, int]] = []
        for s in self.running:
            if budget <= 0:
                break
            left = s.num_prompt_tokens - s.num_computed_tokens
            n = 1 if left <= 0 else min(left, budget)
            batch.append((s, n))
            budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            s = self.waiting[0]
            if s.ready_s > ready_by:
                break  # arrived after this iteration (async: the previous one) started
            need = self.blocks_for(s.num_prompt_tokens + s.max_tokens)
            if self.num_used_blocks + need > self.num_blocks:
                break  # head-of-line blocking, as vLLM's FCFS
            self.waiting.popleft()
            s.num_blocks = need
            self.num_used_blocks += need
            s.first_scheduled_s = start_s
            self.running.append(s)
            n = min(s.num_prompt_tokens - s.num_computed_tokens, budget)
            batch.append((s, n))
            budget -= n
        return batch

    def _iteration_time_s(self, batch: list[tuple[Seq, int]]) -> float:
        pt = ps = pctx = pxc = psq = ds = dctx = 0
        for s, n in batch:
            if s.num_computed_tokens < s.num_prompt_tokens:
                x = s.num_computed_tokens
                pt += n
                ps += 1
                pctx += x
                pxc += n * x
                psq += n * n
            else:
                ds += 1
                dctx += s.num_computed_tokens + 1
        return self.backend.iteration_time_s(pt, ps, pctx, pxc, psq, ds, dctx)

    def _complete(self, batch: list[tuple[Seq, int]], now_s: float) -> None:
        for s, n in batch:
            if s.finished:  # aborted while the iteration ran
                continue
            s.num_computed_tokens += n
            if s.num_computed_tokens < s.num_prompt_tokens:
                continue  # a prefill chunk that did not finish the prompt
            s.num_output_tokens += 1
            if s.first_token_s < 0:
                s.first_token_s = now_s
            last = s.num_output_tokens >= s.max_tokens
            if last:
                s.finished, s.finish_reason, s.finish_s = True, "length", now_s
            s.events.put_nowait(("token", s.num_output_tokens))
            if last:
                self._finish(s, now_s)

    def _finish(self, s: Seq, now_s: float) -> None:
        s.finished = True
        self.running.remove(s)
        if s.keep_kv:
            self.pinned[s.rid] = (s, now_s + self.kv_abort_timeout_s)
        else:
            self._free(s)
        s.events.put_nowait(("end", "length"))

    def _expire_pinned(self, now_s: float) -> None:
        for rid in [r for r, (_, exp) in self.pinned.items() if exp <= now_s]:
            logger.warning("KV of %s was never pulled; freed after %.0f s", rid,
                           self.kv_abort_timeout_s)
            self.release_pinned(rid)


def monotonic_s() -> float:
    """Wall clock for latencies, seconds."""
    return time.monotonic()
