"""Builders for simulator tests: small clusters, hand-made workloads, scripted routers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from sim.catalog import get_gpu, get_model
from sim.engine import ClusterConfig, SimConfig, Simulator
from sim.instance import InstanceConfig, Request, RequestStatus
from sim.routers import COLOCATE
from sim.routing import Decision
from sim.workload import Workload

MODEL = get_model("llama31_8b")
"""Llama-3.1-8B: 32 heads (TP 1, 2, 4, 8), 128 KiB of KV per token."""
GPU = get_gpu("a100_80gb_sxm")

TIMESTAMPS = ("arrival_s", "first_scheduled_s", "first_token_s", "lead_done_s",
              "transfer_start_s", "transfer_end_s", "finish_s")
"""Request timestamps in the order a request passes them (-1 when never reached)."""


def make_instance_cfg(**kw) -> InstanceConfig:
    """A TP1 unified instance: 256-token budget, 16 sequences, 200 KV blocks."""
    kw.setdefault("max_num_batched_tokens", 256)
    kw.setdefault("max_num_seqs", 16)
    kw.setdefault("num_gpu_blocks_override", 200)
    return InstanceConfig(**kw)


def make_cluster(*instances: InstanceConfig, **kw) -> ClusterConfig:
    """One 8-GPU node holding ``instances`` (one default instance if none given)."""
    return ClusterConfig(instances=list(instances) or [make_instance_cfg()], **kw)


def make_workload(arrival_s: Sequence[float], prompt: Sequence[int], output: Sequence[int],
                  hashes: Sequence[Sequence[int]] | None = None) -> Workload:
    """A workload from plain lists; ``hashes[i]`` are request i's prompt block ids."""
    offsets = ids = None
    if hashes is not None:
        offsets = np.concatenate(([0], np.cumsum([len(h) for h in hashes]))).astype(np.int64)
        ids = np.array([x for h in hashes for x in h], dtype=np.int64)
    return Workload(np.asarray(arrival_s, float), np.asarray(prompt), np.asarray(output),
                    offsets, ids)


def random_workload(seed: int = 0, n: int = 40, rate_per_s: float = 20.0,
                    max_prompt: int = 400, max_output: int = 100) -> Workload:
    """Poisson arrivals with uniform prompt and output lengths."""
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1.0 / rate_per_s, n))
    return Workload(arrival, rng.integers(16, max_prompt + 1, n),
                    rng.integers(1, max_output + 1, n))


class ScriptedRouter:
    """Returns ``decisions[rid]`` (a Decision, or an ``int`` meaning colocated there)."""

    def __init__(self, decisions: Sequence[Decision | int] | Callable) -> None:
        self.decisions = decisions

    def __call__(self, view, info) -> Decision:
        d = (self.decisions(info) if callable(self.decisions)
             else self.decisions[info.rid])
        return Decision(d, d, COLOCATE) if isinstance(d, int) else d


def colocate_on(i: int = 0) -> ScriptedRouter:
    """Every request colocated on instance ``i``."""
    return ScriptedRouter(lambda info: i)


def make_sim(workload: Workload, *instances: InstanceConfig, router=None,
             cluster_kw: dict | None = None, **sim_kw) -> Simulator:
    """A simulator of ``instances`` on Llama-3.1-8B / A100-80GB with invariant checks on."""
    sim_kw.setdefault("check_invariants", True)
    return Simulator(MODEL, GPU, make_cluster(*instances, **(cluster_kw or {})),
                     SimConfig(**sim_kw), workload, router or colocate_on(0))


class BatchRecorder:
    """Wraps a latency backend and logs ``(sequences, tokens)`` of every batch it times.

    A fast-forwarded decode run is logged once, as its first iteration.
    """

    def __init__(self, backend, log: list[tuple[int, int]]) -> None:
        self.backend = backend
        self.log = log

    def iteration_time_s(self, *args) -> float:
        self.log.append((args[1] + args[5], args[0] + args[5]))
        return self.backend.iteration_time_s(*args)

    def decode_line(self, num_seqs: int, ctx_tokens: int):
        self.log.append((num_seqs, num_seqs))
        return self.backend.decode_line(num_seqs, ctx_tokens)


def record_batches(sim: Simulator) -> list[list[tuple[int, int]]]:
    """Make ``sim`` log each instance's batches; returns the per-instance logs."""
    logs: list[list[tuple[int, int]]] = [[] for _ in sim.instances]
    sim.backends = [BatchRecorder(b, logs[i]) for i, b in enumerate(sim.backends)]
    return logs


def timestamps(r: Request) -> list[float]:
    """The request's timestamps that were set, in lifecycle order."""
    return [t for t in (getattr(r, name) for name in TIMESTAMPS) if t >= 0]


def check_request_invariants(reqs: Sequence[Request], num_entered: int) -> None:
    """Terminal, counted, monotone, and no token sampled twice."""
    assert len(reqs) == num_entered
    assert all(r.status >= RequestStatus.COMPLETED for r in reqs), "a request is not terminal"
    for r in reqs:
        ts = timestamps(r)
        assert ts == sorted(ts), (r.rid, ts)
        if r.status == RequestStatus.COMPLETED:
            assert r.first_token_s - r.arrival_s <= r.finish_s - r.arrival_s
            assert r.num_output_tokens == r.max_output_tokens, r
            assert r.num_computed_tokens == r.num_prompt_tokens + r.max_output_tokens - 1, r
            if r.follow != r.lead:
                assert 0 <= r.lead_done_s <= r.transfer_start_s <= r.transfer_end_s
