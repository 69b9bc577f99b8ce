"""The emulator's engine: when iterations start and end (behaviour, not speed).

These run the real loop on an asyncio event loop. They check orderings and the planned
(modelled) timestamps the engine records, never how fast this machine is; the one bound on
real time is generous (seconds against a ~millisecond event).
"""

from __future__ import annotations

import asyncio

import pytest

from runtime.engine import MAX_CATCH_UP_S, EmulatedEngine, Seq, WakeTimer
from sim.perf import AnalyticBackend

BACKEND = AnalyticBackend("Llama-3.1-8B", "A100-80GB-SXM", tp=1)


def make_engine(**kw) -> EmulatedEngine:
    args = {"num_blocks": 4096, "block_size": 16, "max_num_seqs": 64,
            "max_num_batched_tokens": 2048, **kw}
    return EmulatedEngine(BACKEND, **args)


async def _drain(seq: Seq) -> list[tuple]:
    out = []
    while True:
        item = await seq.events.get()
        out.append(item)
        if item[0] == "end":
            return out


def run(coro_fn, **engine_kw):
    async def main():
        eng = make_engine(**engine_kw)
        task = asyncio.create_task(eng.run())
        try:
            return await coro_fn(eng)
        finally:
            task.cancel()
    return asyncio.run(main())


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_arrival_to_an_idle_engine_starts_at_once(async_scheduling):
    """No tick: the first iteration starts when the request arrives (as the simulator), with
    or without async scheduling."""
    async def body(eng):
        await asyncio.sleep(0.05)  # the engine is parked, idle
        loop = asyncio.get_running_loop()
        s = Seq("a", 100, 2, loop.time())
        eng.submit(s)
        await _drain(s)
        return s
    s = run(body, async_scheduling=async_scheduling)
    # a tick-driven loop would start it only at its next tick; the iteration starts at the
    # submission (the simulator's arrival), unless the loop stalled longer than the
    # catch-up (then when the engine got control; the bound is generous)
    gap = s.first_scheduled_s - s.ready_s
    assert gap == 0 or MAX_CATCH_UP_S < gap < 0.5
    assert s.arrival_s <= s.ready_s < s.first_token_s


async def _b_during_a(eng, a_prompt: int, a_outputs: int) -> tuple[Seq, Seq]:
    """``a`` alone on an idle engine, ``b`` submitted 10 ms into a's first iteration."""
    loop = asyncio.get_running_loop()
    a = Seq("a", a_prompt, a_outputs, loop.time())  # a long prefill iteration (~0.1 s)
    eng.submit(a)
    await asyncio.sleep(0)  # the engine starts a's iteration
    await asyncio.sleep(0.01)
    assert a.first_scheduled_s >= 0 and a.first_token_s < 0  # still in the iteration
    b = Seq("b", 50, 2, loop.time())
    eng.submit(b)
    await asyncio.gather(_drain(a), _drain(b))
    return a, b


def test_arrival_during_an_iteration_joins_the_next_one():
    """vLLM V1 without async scheduling: a request that arrives while an iteration runs waits
    for its end."""
    async def body(eng):
        return eng, *await _b_during_a(eng, 2000, 3)
    eng, a, b = run(body, async_scheduling=False)
    assert b.first_scheduled_s >= a.first_token_s  # not slipped into a's running iteration
    if eng.num_stalls == 0:  # back-to-back: the next iteration starts at the planned end
        assert b.first_scheduled_s == a.first_token_s


def test_async_scheduling_arrival_at_a_busy_engine_starts_one_iteration_later():
    """With async scheduling the iteration after a's prefill was planned while the prefill
    ran: b (arrived during it) is not in it, a decodes alone, b joins the one after."""
    async def body(eng):
        return eng, *await _b_during_a(eng, 2000, 3)
    eng, a, b = run(body, async_scheduling=True)
    a_decode_s = BACKEND.iteration_time_s(0, 0, 0, 0, 0, 1, 2000 + 1)
    assert b.first_scheduled_s > a.first_token_s
    if eng.num_stalls == 0:
        assert b.first_scheduled_s == pytest.approx(a.first_token_s + a_decode_s, abs=1e-9)


def test_async_scheduling_an_empty_next_iteration_means_idle():
    """a's only iteration (prefill, 1 output) ends with nothing running: the plan made during
    it would be empty, so the engine idles and admits b (arrived during it) at once."""
    async def body(eng):
        return eng, *await _b_during_a(eng, 2000, 1)
    eng, a, b = run(body, async_scheduling=True)
    assert b.first_scheduled_s >= a.first_token_s
    if eng.num_stalls == 0:
        assert b.first_scheduled_s == a.first_token_s


def test_async_scheduling_must_be_a_bool():
    with pytest.raises(ValueError, match="async_scheduling"):
        make_engine(async_scheduling="yes")


def test_iterations_end_at_absolute_planned_times():
    """Token times are start + the model's iteration times: loop jitter does not add up."""
    n_out = 12

    async def body(eng):
        loop = asyncio.get_running_loop()
        s = Seq("a", 300, n_out, loop.time())
        eng.submit(s)
        events = await _drain(s)
        return eng, s, events
    eng, s, events = run(body)
    assert [e[1] for e in events[:-1]] == list(range(1, n_out + 1))
    assert events[-1] == ("end", "length") and s.finish_reason == "length"
    if eng.num_stalls:
        pytest.skip("the machine stalled the loop by more than MAX_CATCH_UP_S")
    prefill = BACKEND.iteration_time_s(300, 1, 0, 0, 300 * 300, 0, 0)
    decodes = sum(BACKEND.iteration_time_s(0, 0, 0, 0, 0, 1, 300 + k + 1)
                  for k in range(n_out - 1))
    assert s.first_token_s == pytest.approx(s.first_scheduled_s + prefill, abs=1e-9)
    assert s.finish_s == pytest.approx(s.first_token_s + decodes, abs=1e-9)


def test_the_last_token_is_known_when_sampled():
    """finish_reason is set before the last token's event is read (no token held back)."""
    async def body(eng):
        loop = asyncio.get_running_loop()
        s = Seq("a", 20, 3, loop.time())
        eng.submit(s)
        seen = []
        while True:
            kind, val = await s.events.get()
            if kind == "end":
                return seen
            seen.append((val, s.finish_reason is not None and val >= s.num_output_tokens))
    assert run(body) == [(1, False), (2, False), (3, True)]


async def _sleep_never_early(timer: WakeTimer) -> None:
    """Sleep to a few targets (future, now, past); each wake-up is at or after its target."""
    loop = asyncio.get_running_loop()
    for d in (0.003, 0.0, 0.0105, -1.0, 0.001):
        t = loop.time() + d
        await timer.sleep_until(t)
        assert loop.time() >= t


def test_wake_timer_never_returns_early_and_survives_a_new_loop():
    async def main():
        timer = WakeTimer()
        await _sleep_never_early(timer)
        return timer

    timer = asyncio.run(main())
    asyncio.run(timer.sleep_until(0.0))  # another loop: the timer re-arms on it
    timer.close()


def _open_fds() -> int:
    import os
    return len(os.listdir("/proc/self/fd"))


def test_without_timerfd_the_engine_falls_back_to_asyncio_sleep(monkeypatch):
    """What runs off Linux: no timerfd, same answers, never an early wake-up."""
    from runtime import engine as engine_mod

    monkeypatch.setattr(engine_mod, "USE_TIMERFD", False)

    async def sleeps():
        timer = WakeTimer()
        await _sleep_never_early(timer)
        assert timer._fd == -1 and timer._settime is None
        timer.close()

    asyncio.run(sleeps())

    async def body(eng):
        loop = asyncio.get_running_loop()
        s = Seq("a", 300, 5, loop.time())
        eng.submit(s)
        events = await _drain(s)
        assert eng._timer._fd == -1
        return s, events
    s, events = run(body)
    assert [e[1] for e in events] == [1, 2, 3, 4, 5, "length"]
    assert s.first_scheduled_s < s.first_token_s < s.finish_s


def test_wake_timer_closes_its_fd_when_the_loop_cannot_watch_it(monkeypatch):
    """A loop without add_reader (Windows' proactor) gets the fallback, and no fd leaks."""
    def no_reader(self, fd, cb, *args):
        raise NotImplementedError

    monkeypatch.setattr(asyncio.SelectorEventLoop, "add_reader", no_reader)

    async def main():
        loop = asyncio.get_running_loop()
        timer = WakeTimer()
        before = _open_fds()
        for _ in range(20):
            timer._loop = None  # as if on a new loop: the next sleep opens again
            t = loop.time() + 0.001
            await timer.sleep_until(t)
            assert loop.time() >= t
        assert timer._fd == -1
        return before, _open_fds()

    before, after = asyncio.run(main())
    assert after == before


def test_wake_timer_fd_is_released_by_the_engine_and_across_loops():
    before = _open_fds()
    timer = WakeTimer()
    for _ in range(5):  # a new loop each time: the old loop's fd is closed, a new one opened
        asyncio.run(timer.sleep_until(0.0))
    timer.close()

    async def body(eng):
        loop = asyncio.get_running_loop()
        s = Seq("a", 20, 2, loop.time())
        eng.submit(s)
        await _drain(s)
    for _ in range(3):
        run(body)
    assert _open_fds() == before
