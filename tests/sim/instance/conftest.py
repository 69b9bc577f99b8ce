"""Builders for instance-level tests: a small vLLM instance and hand-made requests."""

from __future__ import annotations

import numpy as np

from sim.instance import Instance, InstanceConfig, IterationPlan, Request


def make_instance(num_blocks: int = 64, hash_block_tokens: int = 16, index: int = 0,
                  **cfg) -> Instance:
    """An idle instance with ``num_blocks`` KV blocks of 16 tokens.

    Defaults: budget 128 tokens, 8 sequences, chunked prefill and prefix caching on.
    """
    cfg.setdefault("max_num_batched_tokens", 128)
    cfg.setdefault("max_num_seqs", 8)
    inst = Instance(index, InstanceConfig(**cfg), num_blocks, hash_block_tokens)
    inst.record_batch_members = True  # plans list decode-batch members (plan_reqs)
    return inst


def make_request(rid: int = 0, prompt: int = 32, output: int = 4, hashes=None,
                 stop: int | None = None) -> Request:
    """A request that stops after ``stop`` outputs on its instance (default: all of them)."""
    if hashes is not None:
        hashes = np.asarray(hashes, dtype=np.int64)
    r = Request(rid, 0.0, prompt, output, hashes)
    r.stop_tokens = output if stop is None else stop
    return r


def step(inst: Instance) -> tuple[IterationPlan | None, list[Request]]:
    """Schedule and complete one iteration; stopped requests give their blocks back."""
    plan = inst.schedule()
    if plan is None:
        return None, []
    stopped = inst.complete(plan)
    for r in stopped:
        inst.release_blocks(r)
    inst.kv.check()
    _ = inst.running  # brings the decode batch's lazy counters up to date for assertions
    return plan, stopped


def plan_reqs(plan: IterationPlan) -> list[Request]:
    """Every request a plan schedules, in schedule order (decode-batch members first)."""
    return list(plan.batch_reqs or []) + plan.reqs


def plan_num_new(plan: IterationPlan) -> list[int]:
    """Tokens scheduled per request, in :func:`plan_reqs` order."""
    return [1] * plan.batch_seqs + plan.num_new


def scheduled(plan: IterationPlan) -> dict[int, int]:
    """``rid -> tokens scheduled`` of a plan."""
    return {r.rid: n for r, n in zip(plan_reqs(plan), plan_num_new(plan), strict=True)}
