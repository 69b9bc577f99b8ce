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
    return Instance(index, InstanceConfig(**cfg), num_blocks, hash_block_tokens)


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
    return plan, stopped


def scheduled(plan: IterationPlan) -> dict[int, int]:
    """``rid -> tokens scheduled`` of a plan."""
    return {r.rid: n for r, n in zip(plan.reqs, plan.num_new, strict=True)}
