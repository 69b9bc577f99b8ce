"""vLLM V1 instance scheduling: budget, order, chunked prefill, preemption, prefix hits."""

from __future__ import annotations

import pytest

from sim.instance import InstanceConfig, RequestStatus
from tests.sim.instance.conftest import (
    make_instance,
    make_request,
    plan_num_new,
    plan_reqs,
    scheduled,
    step,
)


def test_idle_instance_has_no_plan():
    assert make_instance().schedule() is None


def test_enqueue_sets_state_and_counts_prefill_tokens():
    inst = make_instance(index=3)
    r = make_request(prompt=40)
    inst.enqueue(r)
    assert r.instance == 3 and r.status == RequestStatus.WAITING
    assert list(inst.waiting) == [r] and inst.queued_prefill_tokens == 40


def test_single_prompt_within_budget_is_one_prefill():
    inst = make_instance(max_num_batched_tokens=128)
    r = make_request(prompt=100)
    inst.enqueue(r)
    plan, _ = step(inst)
    assert scheduled(plan) == {0: 100}
    assert plan.shape_args() == (100, 1, 0, 0, 100 * 100, 0, 0)
    assert r.status == RequestStatus.RUNNING and r.num_output_tokens == 1
    assert inst.queued_prefill_tokens == 0


def test_token_budget_is_shared_fcfs():
    inst = make_instance(max_num_batched_tokens=100)
    for rid in range(3):
        inst.enqueue(make_request(rid, prompt=60))
    plan, _ = step(inst)
    assert scheduled(plan) == {0: 60, 1: 40}
    assert sum(plan_num_new(plan)) == 100 and len(inst.waiting) == 1


def test_running_requests_are_scheduled_before_waiting_ones():
    inst = make_instance(max_num_batched_tokens=64)
    first = make_request(0, prompt=32, output=10)
    inst.enqueue(first)
    step(inst)
    late = make_request(1, prompt=200)
    inst.enqueue(late)
    plan, _ = step(inst)
    assert [r.rid for r in plan_reqs(plan)] == [0, 1]
    assert scheduled(plan) == {0: 1, 1: 63}  # the decode first, the rest of the budget after
    assert plan.num_decode_seqs == 1 and plan.decode_ctx_tokens == 33
    assert plan.num_prefill_seqs == 1 and plan.num_prefill_tokens == 63


def test_chunked_prefill_splits_a_long_prompt_exactly():
    inst = make_instance(max_num_batched_tokens=100)
    r = make_request(prompt=250, output=3)
    inst.enqueue(r)
    chunks, outputs, ctx = [], [], []
    for _ in range(3):
        plan, _ = step(inst)
        chunks.append(plan_num_new(plan)[0])
        ctx.append(plan.prefill_ctx_tokens)
        outputs.append(r.num_output_tokens)
    assert chunks == [100, 100, 50]
    assert ctx == [0, 100, 200]
    assert outputs == [0, 0, 1]  # first token on the iteration that completes the prompt
    plan, _ = step(inst)
    assert inst.running == [r]  # reading the batch brings its lazy counters up to date
    assert plan.num_decode_seqs == 1 and plan.num_prefill_seqs == 0 and r.num_output_tokens == 2


def test_chunk_cross_terms():
    inst = make_instance(max_num_batched_tokens=100)
    inst.enqueue(make_request(prompt=250))
    step(inst)
    plan, _ = step(inst)
    assert plan.shape_args() == (100, 1, 100, 100 * 100, 100 * 100, 0, 0)


def test_long_prefill_token_threshold_caps_a_chunk():
    inst = make_instance(max_num_batched_tokens=128, long_prefill_token_threshold=48)
    inst.enqueue(make_request(0, prompt=100))
    inst.enqueue(make_request(1, prompt=100))
    plan, _ = step(inst)
    assert scheduled(plan) == {0: 48, 1: 48}


def test_without_chunked_prefill_a_prompt_over_budget_blocks_the_queue():
    inst = make_instance(max_num_batched_tokens=100, enable_chunked_prefill=False)
    big, small = make_request(0, prompt=150), make_request(1, prompt=10)
    inst.enqueue(big)
    inst.enqueue(small)
    assert inst.schedule() is None
    assert list(inst.waiting) == [big, small] and inst.kv.num_used == 0


def test_without_chunked_prefill_a_prompt_is_scheduled_whole_or_not_at_all():
    inst = make_instance(max_num_batched_tokens=100, enable_chunked_prefill=False)
    inst.enqueue(make_request(0, prompt=60))
    inst.enqueue(make_request(1, prompt=60))
    plan, _ = step(inst)
    assert scheduled(plan) == {0: 60}
    plan, _ = step(inst)
    assert scheduled(plan) == {0: 1, 1: 60}


def test_max_num_seqs_caps_the_batch():
    inst = make_instance(max_num_seqs=2, max_num_batched_tokens=512)
    for rid in range(5):
        inst.enqueue(make_request(rid, prompt=10, output=5))
    plan, _ = step(inst)
    assert len(plan_reqs(plan)) == 2 and len(inst.running) == 2 and len(inst.waiting) == 3
    plan, _ = step(inst)
    assert [r.rid for r in plan_reqs(plan)] == [0, 1]


def test_stop_tokens_end_the_request_on_this_instance():
    inst = make_instance()
    r = make_request(prompt=20, output=5, stop=2)
    inst.enqueue(r)
    plan = inst.schedule()
    assert inst.complete(plan) == []
    plan = inst.schedule()
    assert inst.complete(plan) == [r]
    assert inst.running == [] and r.num_output_tokens == 2
    assert r.num_blocks == 2 and inst.kv.num_used == 2  # the caller frees or hands over
    inst.release_blocks(r)
    assert inst.kv.num_used == 0 and r.num_blocks == 0


def _fill_two_decoders(inst):
    """Two 47-token prompts fill 6 blocks; both decode once (48 tokens fit in 3 blocks)."""
    a, b = make_request(0, prompt=47, output=3), make_request(1, prompt=47, output=20)
    inst.enqueue(a)
    inst.enqueue(b)
    step(inst)
    step(inst)
    assert inst.kv.num_used == 6 and a.num_tokens == b.num_tokens == 49
    return a, b


def test_preemption_evicts_the_last_running_request():
    inst = make_instance(num_blocks=6, max_num_batched_tokens=256)
    a, b = _fill_two_decoders(inst)
    c = make_request(2, prompt=8)
    inst.enqueue(c)
    plan = inst.schedule()  # a needs a 4th block: b (last) is preempted
    assert plan.num_preempted == 1 and scheduled(plan) == {0: 1}
    assert inst.running == [a]
    assert list(inst.waiting) == [b, c]  # requeued first; c not admitted in this step
    assert b.status == RequestStatus.WAITING and b.num_computed_tokens == 0
    assert b.num_blocks == 0 and b.num_preemptions == 1 and b.num_output_tokens == 2
    assert inst.kv.num_used == 4
    assert inst.queued_prefill_tokens == 49 + 8
    inst.kv.check()


def test_preempted_request_recomputes_prompt_and_outputs():
    inst = make_instance(num_blocks=6, max_num_batched_tokens=256, enable_prefix_caching=False)
    a, b = _fill_two_decoders(inst)
    plan, stopped = step(inst)  # preempts b; a samples its 3rd and last token
    assert plan.num_preempted == 1 and stopped == [a]
    plan, _ = step(inst)
    assert scheduled(plan) == {1: 47 + 2}
    assert plan.num_prefill_seqs == 1 and plan.num_decode_seqs == 0
    assert b.num_output_tokens == 3 and b.num_computed_tokens == 49  # one new token only
    plan, _ = step(inst)
    assert plan.num_decode_seqs == 1 and b.num_output_tokens == 4


def test_preempted_request_reuses_its_cached_blocks():
    # with prefix caching, b's full blocks stay cached (evictable) after preemption; a frees
    # its blocks on completion without needing b's, so readmission recomputes only the tail
    inst = make_instance(num_blocks=6, max_num_batched_tokens=256)
    a, b = _fill_two_decoders(inst)
    plan, stopped = step(inst)  # preempts b; a samples its last token
    assert plan.num_preempted == 1 and stopped == [a]
    full = 47 // 16  # b had 47 computed tokens: 2 full blocks cached
    assert inst.kv.num_evictable >= full
    inst.release_blocks(a)
    plan, _ = step(inst)
    assert scheduled(plan) == {1: 49 - full * 16}
    assert b.num_computed_tokens == 49 and b.num_output_tokens == 3
    inst.kv.check()


def test_preempting_itself_stops_the_step():
    """The only running request needs a block that does not exist: it preempts itself."""
    inst = make_instance(num_blocks=3, max_num_batched_tokens=256, scheduler_reserve_full_isl=False)
    r = make_request(prompt=48, output=5)
    inst.enqueue(r)
    step(inst)
    plan = inst.schedule()
    assert plan is None or r not in plan_reqs(plan)
    assert r.status == RequestStatus.WAITING and r.num_preemptions == 1
    assert inst.kv.num_used == 0


def test_reserve_full_isl_waits_for_the_whole_prompt():
    """Admission needs blocks for the whole prompt, not just the first chunk."""
    for reserve, admitted in ((True, False), (False, True)):
        inst = make_instance(num_blocks=4, max_num_batched_tokens=32,
                             scheduler_reserve_full_isl=reserve)
        inst.enqueue(make_request(prompt=100))
        assert (inst.schedule() is not None) is admitted


def _cache_prefix(inst, hashes, prompt):
    """Serve one request with ``hashes`` so its blocks become cached entries."""
    r = make_request(99, prompt=prompt, output=1, hashes=hashes)
    inst.enqueue(r)
    while not step(inst)[1]:
        pass
    assert inst.kv.num_used == 0


def test_prefix_hit_skips_the_cached_prefill():
    inst = make_instance(num_blocks=32)
    _cache_prefix(inst, [1, 2, 3, 4], prompt=70)
    r = make_request(0, prompt=70, hashes=[1, 2, 3, 4])
    inst.enqueue(r)
    plan, _ = step(inst)
    assert scheduled(plan) == {0: 70 - 64}
    assert plan.prefill_ctx_tokens == 64
    assert r.num_cached_prompt_tokens == 64 and r.num_output_tokens == 1
    assert inst.kv.num_hit_tokens == 64


def test_prefix_hit_never_covers_the_last_prompt_token():
    inst = make_instance(num_blocks=32)
    _cache_prefix(inst, [1, 2, 3, 4], prompt=64)
    r = make_request(0, prompt=64, hashes=[1, 2, 3, 4])
    inst.enqueue(r)
    plan, _ = step(inst)
    assert scheduled(plan) == {0: 16}  # 3 of the 4 blocks: the last token is recomputed
    assert r.num_cached_prompt_tokens == 48 and r.num_output_tokens == 1


def test_prefix_hit_stops_at_the_first_divergent_block():
    inst = make_instance(num_blocks=32)
    _cache_prefix(inst, [1, 2, 3, 4], prompt=80)
    r = make_request(0, prompt=80, hashes=[1, 2, 9, 4])
    inst.enqueue(r)
    plan, _ = step(inst)
    assert scheduled(plan) == {0: 80 - 32}


def test_shared_prefix_blocks_are_counted_once():
    inst = make_instance(num_blocks=32, max_num_batched_tokens=512)
    _cache_prefix(inst, [1, 2], prompt=40)
    a = make_request(0, prompt=40, output=5, hashes=[1, 2])
    b = make_request(1, prompt=40, output=5, hashes=[1, 2])
    inst.enqueue(a)
    inst.enqueue(b)
    step(inst)
    assert a.num_shared_blocks == b.num_shared_blocks == 2
    assert inst.kv.num_used == 2 + 1 + 1  # two shared + one private tail block each
    for r in (a, b):
        inst.release_blocks(r)
    assert inst.kv.num_used == 0 and inst.kv.num_evictable == 2


def test_prefix_caching_off_ignores_hashes():
    inst = make_instance(num_blocks=32, enable_prefix_caching=False)
    _cache_prefix(inst, [1, 2], prompt=40)
    r = make_request(0, prompt=40, hashes=[1, 2])
    inst.enqueue(r)
    plan, _ = step(inst)
    assert scheduled(plan) == {0: 40} and inst.kv.num_evictable == 0


def test_computed_blocks_are_registered_for_later_requests():
    inst = make_instance(num_blocks=32, max_num_batched_tokens=16)
    r = make_request(0, prompt=40, output=4, hashes=[5, 6])
    inst.enqueue(r)
    step(inst)
    assert r.shared_hashes == (5,) and r.num_shared_blocks == 1  # first 16-token chunk
    step(inst)
    assert r.shared_hashes == (5, 6)


def test_unadmitted_head_does_not_pin_cached_blocks():
    inst = make_instance(num_blocks=10, max_num_batched_tokens=512)
    _cache_prefix(inst, [1, 2, 3, 4], prompt=65)  # 4 evictable blocks
    a = make_request(0, prompt=90, output=40)
    inst.enqueue(a)
    step(inst)  # a holds 6 blocks (room to 96 tokens); the 4 free blocks are cached entries
    assert inst.kv.num_used == 6 and inst.kv.num_evictable == 4
    b = make_request(1, prompt=100, output=1, hashes=[1, 2, 3, 4])
    inst.enqueue(b)
    step(inst)  # b needs its 4 cached blocks plus 3 more: not admitted
    assert list(inst.waiting) == [b] and b.num_blocks == 0 and not b.shared_hashes
    assert inst.kv.num_evictable == 4, "a failed admission must not reference cached blocks"
    inst.kv.check()


def test_instance_config_validation_names_the_field():
    with pytest.raises(ValueError, match="role"):
        InstanceConfig(role="both")
    with pytest.raises(ValueError, match="max_num_seqs"):
        InstanceConfig(max_num_seqs=-1)
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        InstanceConfig(tensor_parallel_size=0)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        InstanceConfig(gpu_memory_utilization=1.5)


def test_resolved_fills_vllm_defaults():
    cfg = InstanceConfig().resolved(80, "A100-80GB-SXM")
    assert (cfg.max_num_batched_tokens, cfg.max_num_seqs) == (2048, 256)
    cfg = InstanceConfig(max_num_seqs=7).resolved(80, "H100-SXM")
    assert (cfg.max_num_batched_tokens, cfg.max_num_seqs) == (8192, 7)


def test_ready_by_hides_waiting_requests_that_arrived_later():
    """Async scheduling: a plan admits only requests that arrived by ``ready_by`` (FCFS)."""
    inst = make_instance(max_num_batched_tokens=128)
    early, late = make_request(0, prompt=20), make_request(1, prompt=20)
    early.arrival_s, late.arrival_s = 1.0, 2.0
    inst.enqueue(early)
    inst.enqueue(late)
    plan = inst.schedule(ready_by=1.0)  # arrived exactly at ready_by: visible
    assert scheduled(plan) == {0: 20} and list(inst.waiting) == [late]
    inst.complete(plan)
    plan = inst.schedule(ready_by=1.5)
    assert scheduled(plan) == {0: 1}  # running ones go on
    inst.complete(plan)
    assert scheduled(inst.schedule()) == {0: 1, 1: 20}
