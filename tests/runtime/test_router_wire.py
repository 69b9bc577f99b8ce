"""The router's wire-level pieces without processes: SSE batching, /metrics scan, counting."""

from __future__ import annotations

import asyncio

import pytest

from runtime import legs
from runtime import openai_api as oa
from runtime.backends import parse_metrics


class _Content:
    def __init__(self, chunks):
        self.chunks = list(chunks)

    async def readany(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


class _Resp:
    def __init__(self, chunks):
        self.content = _Content(chunks)


def batches(chunks):
    async def run():
        return [b async for b in legs.Stream(_Resp(chunks)).batches()]
    return asyncio.run(run())


def test_events_of_one_read_come_as_one_batch_bytes_unchanged():
    got = batches([b'data: {"a": 1}\n\ndata: {"b"', b': 2}\n\n: ping\n\ndata: {"c":\n',
                   b'data: 3}\n\ndata: [DONE]\n\n'])
    assert [[raw for raw, _ in b] for b in got] == [
        [b'data: {"a": 1}\n\n'], [b'data: {"b": 2}\n\n'],
        [b'data: {"c":3}\n\n', b"data: [DONE]\n\n"]]
    assert [[p for _, p in b] for b in got] == [[{"a": 1}], [{"b": 2}], [{"c": 3}, None]]


def test_done_without_a_final_newline_ends_the_stream_and_no_done_is_a_drop():
    assert batches([b'data: {"a": 1}\r\n\r\ndata: [DONE]'])[-1] == [(b"data: [DONE]\n\n", None)]
    with pytest.raises(legs.LegError, match="stream_dropped"):
        batches([b'data: {"a": 1}\n\n'])


def test_events_flattens_the_batches():
    async def run():
        s = legs.Stream(_Resp([b'data: {"a": 1}\n\ndata: {"b": 2}\n\n', b"data: [DONE]\n\n"]))
        return [p async for _, p in s.events()]
    assert asyncio.run(run()) == [{"a": 1}, {"b": 2}, None]


def test_metrics_scan_reads_only_the_gauges_it_needs():
    text = """# HELP vllm:num_requests_running Running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 4.0
vllm:num_requests_running_extra{engine="0"} 100.0
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0 1700000000000
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.9
vllm:cache_config_info{block_size="16",note="a} \\"b\\" c",num_gpu_blocks="800"} 1.0
vllm:time_to_first_token_seconds_bucket{le="+Inf"} 12.0
not a prometheus line at all
"""
    s = parse_metrics(text)
    # engines summed, KV usage averaged, the newer KV name preferred
    assert (s.num_running, s.num_waiting, s.kv_used_frac, s.num_gpu_blocks) == (7, 2, 0.5, 800)
    assert parse_metrics("") == parse_metrics("# nothing\n")
    with pytest.raises(ValueError):
        parse_metrics("vllm:num_requests_running{engine=\"0\" 3\n")


@pytest.mark.parametrize("body,chat", [
    ({"prompt": "one  two\tthree\nfour "}, False), ({"prompt": [5, 6, 7]}, False),
    ({"prompt": ["a b c"]}, False),
    ({"messages": [{"role": "user", "content": "hi there"},
                   {"role": "user", "content": [{"type": "text", "text": "x y"}]}]}, True)])
def test_count_only_parsing_counts_what_the_tokenizer_would(body, chat):
    full = oa.parse_generation(body, chat)
    counted = oa.parse_generation(body, chat, count_only=True)
    assert counted.prompt_token_ids is None
    assert counted.num_prompt_tokens == full.num_prompt_tokens == len(full.prompt_token_ids)
    with pytest.raises(oa.BadRequest):
        oa.parse_generation({"prompt": "   "}, False, count_only=True)


def test_metrics_scan_treats_non_finite_values_as_absent():
    # NaN from one name falls back to the older name; +Inf/NaN gauges count as absent, not as
    # a crash (an Inf running count raised OverflowError, which ended the scrape loop)
    s = parse_metrics('vllm:kv_cache_usage_perc{engine="0",model_name="m"} NaN\n'
                      'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 3e-01\n'
                      'vllm:num_requests_running{engine="0"} +Inf\n'
                      'vllm:num_requests_running{engine="1"} 1e+01\n'
                      'vllm:num_requests_waiting{engine="0"} NaN\n'
                      'vllm:cache_config_info{num_gpu_blocks="None",block_size="16"} 1.0\n')
    assert (s.num_running, s.num_waiting, s.kv_used_frac, s.num_gpu_blocks) == (10, 0, 0.3, 0)
    assert parse_metrics("vllm:kv_cache_usage_perc NaN\n").kv_used_frac == 0.0
    with pytest.raises(ValueError):
        parse_metrics("vllm:num_requests_running{engine=\"0\"} three\n")


def test_a_scrape_that_raises_does_not_end_the_scrape_loop(monkeypatch):
    from runtime import backends as bk

    calls = []

    async def flaky(session, b, headers, kv_from_metrics):
        calls.append(b.index)
        if len(calls) == 1:
            raise OverflowError("odd page")
        b.scrape_ok = True

    monkeypatch.setattr(bk, "scrape_once", flaky)
    b = bk.Backend(0, "http://127.0.0.1:1", "unified", 16)

    async def run():
        task = asyncio.create_task(bk.scrape_forever(None, [b], 0.001, {}, False))
        for _ in range(1000):
            await asyncio.sleep(0.001)
            if len(calls) >= 3:
                break
        assert not task.done(), task.exception()
        task.cancel()
    asyncio.run(run())
    assert len(calls) >= 3 and b.scrape_ok


def test_an_event_that_is_not_json_fails_the_leg_and_swallows_nothing():
    # a plain-text error event used to be glued to every later event (none parsed, all lost,
    # and the stream still ended with [DONE] as if fine)
    with pytest.raises(legs.LegError, match="bad_response"):
        batches([b'data: {"a": 1}\n\ndata: upstream error\n\n',
                 b'data: {"b": 2}\n\ndata: [DONE]\n\n'])
    with pytest.raises(legs.LegError, match="bad_response"):
        batches([b'data: upstream error\r\n', b'\r\ndata: {"b": 2}\n\ndata: [DONE]\n\n'])
    # one JSON value over two data lines of one event is still one event
    assert batches([b'data: {"c":\ndata: 3}\n\n', b"data: [DONE]\n\n"]) == [
        [(b'data: {"c":3}\n\n', {"c": 3})], [(b"data: [DONE]\n\n", None)]]
