"""Per-instance capacity of every candidate configuration (role, TP, PP) under the SLOs.

A candidate is one instance of the model on ``tp x pp`` GPUs whose weights and some KV cache
fit (``sim.perf.plan_memory``). Its capacity is the highest arrival rate, req/s, it can take
alone while meeting the SLOs:

* **prefill** -- DistServe's queueing analysis (paper section 3.1): a prefill instance is an
  M/D/1 queue whose deterministic service time is one prefill iteration. With the lengths
  of a real workload the service time varies per prompt, so the Pollaczek-Khinchine mean wait
  ``W = R E[S^2] / (2 (1 - R E[S]))`` is used (M/D/1 when every prompt has the same length),
  with the usual exponential tail ``P(wait > t) = rho exp(-rho t / W)``. A request meets
  the TTFT SLO when its wait plus its own prefill latency fits; capacity is the largest
  ``R`` whose share of such requests reaches the TTFT attainment target.
* **decode** -- the largest batch ``B`` whose iteration time (the TPOT) meets the SLO and
  whose KV cache fits (``B x`` mean sequence length <= KV tokens, ``B <= max_num_seqs``);
  by Little's law it sustains ``B / (E[output - 1] x t(B))`` req/s.
* **colocated** (``unified``) -- both on one instance: prefill iterations (with the running
  decodes piggybacked, vLLM's chunked prefill) take the share ``R E[S]`` of the time, decode
  iterations the rest; the TPOT is the mean gap between iterations, solved as a fixed point
  with Little's law; the TTFT waits behind prefills (M/G/1) plus half a decode iteration.

Pipeline parallelism: with ``pp_overlap=False`` (the Baton simulator's semantics) an
instance runs one iteration at a time through all stages; with ``pp_overlap=True``
(DistServe's) micro-batches overlap, so the queue is served ``pp`` times faster than one
request's latency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sim.catalog import CatalogError, GpuSpec, ModelSpec
from sim.instance import InstanceConfig
from sim.metrics import SLO
from sim.perf import (
    AnalyticBackend,
    DistServeBackend,
    LatencyBackend,
    load_engine_params,
    plan_memory,
)
from sim.workload import load_length_table, resolve_path

CANDIDATE_ROLES = ("prefill", "decode", "unified")
"""Roles a candidate can take (``unified`` = colocated prefill and decode)."""
PERF_BACKENDS = ("analytic", "distserve")
"""Performance model backends the capacity analysis can use."""
DEFAULT_LENGTHS = "sim/workload/fixtures/sharegpt_like_lengths.csv"
"""Shipped ShareGPT-like length table (relative to the repository root)."""


@dataclass(frozen=True)
class LengthStats:
    """A sample of request lengths, the workload statistics the capacity analysis needs.

    Attributes:
        prompt_tokens: (n,) int64 prompt lengths, tokens.
        output_tokens: (n,) int64 output lengths, tokens (>= 1).
    """

    prompt_tokens: np.ndarray
    output_tokens: np.ndarray

    def __post_init__(self) -> None:
        p, o = np.asarray(self.prompt_tokens), np.asarray(self.output_tokens)
        if p.ndim != 1 or p.shape != o.shape or p.size == 0:
            raise ValueError(f"LengthStats needs two equal non-empty 1-D arrays, got shapes "
                             f"{p.shape} and {o.shape}")
        if np.any(p < 1) or np.any(o < 1):
            raise ValueError("LengthStats: prompt_tokens and output_tokens must be >= 1")

    @classmethod
    def from_table(cls, path: str | Path = DEFAULT_LENGTHS, max_rows: int = 1000) -> LengthStats:
        """Read a ``prompt_tokens,output_tokens`` CSV (relative paths: repository root).

        Args:
            path: the CSV (DistServe's ``sharegpt_lengths.csv`` or the shipped fixture).
            max_rows: keep an evenly spaced subsample of at most this many rows.
        """
        table = load_length_table(resolve_path(path))
        if len(table) > max_rows:
            table = table[np.linspace(0, len(table) - 1, max_rows).astype(np.int64)]
        return cls(table[:, 0].astype(np.int64), table[:, 1].astype(np.int64))

    @classmethod
    def fixed(cls, prompt_tokens: int, output_tokens: int) -> LengthStats:
        """Every request with the same lengths."""
        return cls(np.array([prompt_tokens]), np.array([output_tokens]))

    def servable(self, max_model_len: int) -> tuple[LengthStats, float]:
        """The requests with prompt + output <= ``max_model_len`` and their share (0-1).

        The others are rejected by every instance (and count as SLO misses).
        """
        ok = self.prompt_tokens + self.output_tokens <= max_model_len
        if not ok.any():
            return self, 0.0
        return LengthStats(self.prompt_tokens[ok], self.output_tokens[ok]), float(ok.mean())

    @property
    def mean_prompt_tokens(self) -> float:
        """Mean prompt length, tokens."""
        return float(np.mean(self.prompt_tokens))

    @property
    def mean_output_tokens(self) -> float:
        """Mean output length, tokens."""
        return float(np.mean(self.output_tokens))

    @property
    def mean_seq_tokens(self) -> float:
        """Mean prompt + output, tokens (KV a request holds at its end)."""
        return float(np.mean(self.prompt_tokens + self.output_tokens))

    @property
    def decode_ctx_tokens(self) -> float:
        """Context a decode iteration sees per sequence, averaged over decode iterations.

        ``E[o (p + o / 2)] / E[o]``: long outputs contribute more iterations.
        """
        p = self.prompt_tokens.astype(np.float64)
        o = self.output_tokens.astype(np.float64)
        return float(np.sum(o * (p + o / 2)) / np.sum(o))

    def kv_occupancy_tokens(self, num_running: float) -> tuple[float, float]:
        """Mean and standard deviation of the KV tokens held by ``num_running`` decodes.

        Requests decode in an M/G/infinity fashion: one holds ``p + j`` tokens at its ``j``-th
        output, for a time proportional to ``o``. With ``num_running`` running on average
        (Little), the occupancy is shot noise with mean ``N E[o (p + o/2)] / E[o]`` and
        variance ``N E[o (p^2 + p o + o^2 / 3)] / E[o]``.
        """
        p = self.prompt_tokens.astype(np.float64)
        o = self.output_tokens.astype(np.float64)
        scale = num_running / float(np.mean(o))
        mean = scale * float(np.mean(o * (p + o / 2)))
        var = scale * float(np.mean(o * (p * p + p * o + o * o / 3)))
        return mean, var ** 0.5


@dataclass(frozen=True)
class CapacityConfig:
    """How capacities are computed."""

    perf_backend: str = "analytic"
    """``analytic`` (default) or ``distserve`` (DistServe's fitted coefficients)."""
    engine: str = "vllm_v1"
    """Engine overhead profile for the analytic backend (``conf/engine``)."""
    distserve_coeffs_path: str = ""
    """CSV of DistServe's coefficients (perf_backend=distserve)."""
    gpu_memory_utilization: float = 0.9
    """``--gpu-memory-utilization`` of every instance."""
    block_size: int = 16
    """``--block-size`` of every instance, tokens."""
    pp_overlap: bool = False
    """True: pipeline stages overlap micro-batches (DistServe); False: Baton's simulator."""
    ttft_budget_frac: float = 1.0
    """Share of the attainment miss budget given to TTFT misses (the rest to TPOT)."""
    tpot_margin_frac: float = 1.0
    """Decode/colocated iterations must stay within this fraction of the TPOT SLO."""
    kv_headroom_sigmas: float = 2.0
    """Decode KV must hold the mean occupancy plus this many standard deviations."""
    max_gpus_per_instance: int = 64
    """Largest tp x pp considered."""

    def __post_init__(self) -> None:
        if self.perf_backend not in PERF_BACKENDS:
            raise ValueError(f"capacity.perf_backend {self.perf_backend!r} is not one of "
                             f"{', '.join(PERF_BACKENDS)}")
        if self.perf_backend == "distserve" and not self.distserve_coeffs_path:
            raise ValueError("capacity.distserve_coeffs_path is required with perf_backend="
                             "distserve; point it at latency_coeffs_a100_80g.csv")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"capacity.gpu_memory_utilization must be in (0, 1], got "
                             f"{self.gpu_memory_utilization}")
        if not 0 < self.ttft_budget_frac <= 1:
            raise ValueError(f"capacity.ttft_budget_frac must be in (0, 1], got "
                             f"{self.ttft_budget_frac}")
        if not 0 < self.tpot_margin_frac <= 1:
            raise ValueError(f"capacity.tpot_margin_frac must be in (0, 1], got "
                             f"{self.tpot_margin_frac}")
        if self.kv_headroom_sigmas < 0:
            raise ValueError(f"capacity.kv_headroom_sigmas must be >= 0, got "
                             f"{self.kv_headroom_sigmas}")
        if self.max_gpus_per_instance < 1:
            raise ValueError("capacity.max_gpus_per_instance must be >= 1, got "
                             f"{self.max_gpus_per_instance}")


@dataclass(frozen=True)
class Candidate:
    """One instance configuration and the rate it sustains alone under the SLOs."""

    role: str
    """prefill, decode or unified."""
    tp: int
    """Tensor parallel degree (GPUs per stage)."""
    pp: int
    """Pipeline parallel degree (stages)."""
    capacity_per_s: float
    """Highest arrival rate meeting the SLOs, req/s (0 = cannot meet them at all)."""
    kv_tokens: int = 0
    """KV-cache capacity of the instance, tokens."""
    max_batch: int = 0
    """decode/unified: running sequences at that rate (Little's law)."""
    service_s: float = 0.0
    """Mean prefill latency (prefill/unified) or decode iteration (decode), seconds."""
    note: str = field(default="", compare=False)
    """Why the capacity is what it is (binding constraint)."""

    @property
    def num_gpus(self) -> int:
        """GPUs of one instance."""
        return self.tp * self.pp

    @property
    def key(self) -> str:
        """Short label, e.g. ``prefill-tp2pp1``."""
        return f"{self.role}-tp{self.tp}pp{self.pp}"


def parallel_shapes(model: ModelSpec, max_gpus: int) -> list[tuple[int, int]]:
    """Every (tp, pp) the model accepts with ``tp x pp <= max_gpus``."""
    out = []
    for tp in range(1, max_gpus + 1):
        if model.num_attention_heads % tp:
            continue
        for pp in range(1, max_gpus // tp + 1):
            if pp <= model.num_layers and model.num_layers % pp == 0:
                out.append((tp, pp))
    return out


def min_gpus_to_fit(model: ModelSpec, gpu: GpuSpec, cfg: CapacityConfig) -> int | None:
    """Fewest GPUs (tp x pp) on which the weights plus one KV block fit, or None."""
    engine = load_engine_params(_engine_name(cfg))
    for n in range(1, cfg.max_gpus_per_instance + 1):
        for tp, pp in parallel_shapes(model, n):
            if tp * pp != n:
                continue
            try:
                plan_memory(model, gpu, tp, pp, engine, cfg.gpu_memory_utilization,
                            cfg.block_size, _limits(gpu)[0])
            except CatalogError:
                continue
            return n
    return None


def _engine_name(cfg: CapacityConfig) -> str:
    return "distserve" if cfg.perf_backend == "distserve" else cfg.engine


def _limits(gpu: GpuSpec) -> tuple[int, int]:
    """VLLM's (max_num_batched_tokens, max_num_seqs) on this GPU, as the simulator uses."""
    cfg = InstanceConfig().resolved(gpu.memory_gib, gpu.name)
    return cfg.max_num_batched_tokens, cfg.max_num_seqs


def make_backend(model: ModelSpec, gpu: GpuSpec, tp: int, pp: int,
                 cfg: CapacityConfig) -> LatencyBackend:
    """The backend the simulator would use for this instance shape."""
    if cfg.perf_backend == "distserve":
        return DistServeBackend(model, gpu, tp=tp, pp=pp, coeffs=cfg.distserve_coeffs_path)
    return AnalyticBackend(model, gpu, tp=tp, pp=pp, engine=cfg.engine)


def prefill_latencies_s(be: LatencyBackend, prompt_tokens: np.ndarray,
                        chunk_tokens: int) -> np.ndarray:
    """Latency of prefilling each prompt alone, chunked at ``chunk_tokens``: (n,) float64."""
    return mixed_latencies_s(be, prompt_tokens, chunk_tokens, 0, 0.0)


def ttft_attainment(rate_per_s: float, occupancy_s: np.ndarray, latency_s: np.ndarray,
                    ttft_slo_s: float, extra_wait_s: float = 0.0) -> float:
    """Share of requests whose TTFT meets the SLO in an M/G/1 queue (exponential wait tail).

    Args:
        rate_per_s: arrival rate, req/s.
        occupancy_s: (n,) time each request keeps the server busy, seconds.
        latency_s: (n,) each request's own prefill latency, seconds.
        ttft_slo_s: the TTFT SLO, seconds.
        extra_wait_s: deterministic extra wait (e.g. the decode iteration in flight), seconds.
    """
    es, es2 = float(occupancy_s.mean()), float((occupancy_s ** 2).mean())
    rho = rate_per_s * es
    if rho >= 1.0:
        return 0.0
    slack = ttft_slo_s - latency_s - extra_wait_s
    if rho <= 0.0:
        return float(np.mean(slack >= 0))
    mean_wait = rate_per_s * es2 / (2.0 * (1.0 - rho))
    p_miss = np.where(slack >= 0, rho * np.exp(-rho * np.maximum(slack, 0) / mean_wait), 1.0)
    return float(1.0 - p_miss.mean())


def _max_rate(ok, hi: float, iters: int = 40) -> float:
    """Largest rate in (0, hi) with ``ok(rate)`` true (monotone), by bisection; 0 if none."""
    lo = 0.0
    if not ok(hi * 1e-6):
        return 0.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def prefill_capacity_per_s(be: LatencyBackend, lengths: LengthStats, slo: SLO,
                           cfg: CapacityConfig, chunk_tokens: int) -> tuple[float, float]:
    """``(capacity req/s, mean prefill latency s)`` of a prefill-only instance."""
    lat = prefill_latencies_s(be, lengths.prompt_tokens, chunk_tokens)
    occ = lat / be.pp if cfg.pp_overlap else lat
    target = _ttft_target(slo, cfg)
    rate = _max_rate(lambda r: ttft_attainment(r, occ, lat, slo.ttft_s) >= target,
                     1.0 / float(occ.mean()))
    return rate, float(lat.mean())


def _ttft_target(slo: SLO, cfg: CapacityConfig) -> float:
    return 1.0 - (1.0 - slo.attainment_target_frac) * cfg.ttft_budget_frac


def _decode_iter_s(be: LatencyBackend, batch: int, ctx_tokens: float) -> float:
    return be.iteration_time_s(0, 0, 0, 0, 0, batch, int(round(batch * ctx_tokens)))


def kv_fits(lengths: LengthStats, num_running: float, kv_tokens: int, max_num_seqs: int,
            cfg: CapacityConfig) -> bool:
    """Whether ``num_running`` decodes on average fit the KV cache and ``max_num_seqs``.

    Both with ``cfg.kv_headroom_sigmas`` standard deviations of headroom (occupancy as shot
    noise, the count as Poisson).
    """
    z = cfg.kv_headroom_sigmas
    mean, std = lengths.kv_occupancy_tokens(num_running)
    return (mean + z * std <= kv_tokens
            and num_running + z * math.sqrt(num_running) <= max_num_seqs)


def decode_capacity_per_s(be: LatencyBackend, lengths: LengthStats, slo: SLO,
                          cfg: CapacityConfig, kv_tokens: int,
                          max_num_seqs: int) -> tuple[float, int, float, str]:
    """``(capacity req/s, batch, iteration s, binding constraint)`` of a decode instance.

    The batch ``B`` is the mean number of running decodes; it sustains ``B / (E[o - 1] t(B))``
    req/s (Little). With ``pp_overlap`` the batch splits into ``pp`` micro-batches in flight,
    each taking the whole pipeline latency per token.
    """
    ctx = lengths.decode_ctx_tokens
    out_tokens = max(lengths.mean_output_tokens - 1.0, 1.0)
    mb = be.pp if cfg.pp_overlap else 1
    tpot_cap = slo.tpot_s * cfg.tpot_margin_frac
    best = (0.0, 0, 0.0, "tpot: one sequence already misses the TPOT SLO")
    for batch in range(1, max_num_seqs + 1):
        if not kv_fits(lengths, batch, kv_tokens, max_num_seqs, cfg):
            if batch == 1:
                best = (0.0, 0, 0.0, "kv: one mean-length sequence does not fit the KV cache")
            else:
                seqs_bound = batch + cfg.kv_headroom_sigmas * math.sqrt(batch) > max_num_seqs
                best = best[:3] + ("max_num_seqs" if seqs_bound else "kv",)
            break
        t = _decode_iter_s(be, max(batch // mb, 1), ctx)
        if t > tpot_cap:
            best = best[:3] + ("tpot",)
            break
        rate = batch / (out_tokens * t)
        if rate > best[0]:  # iteration times can step (CUDA-graph / wave padding)
            best = (rate, batch, t, "")
    return best


def colocated_capacity_per_s(be: LatencyBackend, lengths: LengthStats, slo: SLO,
                             cfg: CapacityConfig, kv_tokens: int, max_num_seqs: int,
                             chunk_tokens: int) -> tuple[float, int, float]:
    """``(capacity req/s, batch, mean prefill s)`` of a colocated (unified) instance.

    Prefill chunks run in mixed iterations with the running decodes (timed as such by the
    backend), decode-only iterations fill the remaining time; TPOT is the mean gap between
    iterations, a fixed point with the batch ``B = R E[o - 1] TPOT``.
    """
    ctx, out_tokens = lengths.decode_ctx_tokens, max(lengths.mean_output_tokens - 1.0, 1.0)
    target = _ttft_target(slo, cfg)
    tpot_cap = slo.tpot_s * cfg.tpot_margin_frac
    chunks = _chunks_per_request(lengths, chunk_tokens)
    solo = prefill_latencies_s(be, lengths.prompt_tokens, chunk_tokens)

    def state(rate: float):
        batch, tpot, lat = 1.0, math.inf, solo
        for _ in range(30):  # fixed point of batch = rate * out * tpot(batch)
            nb = max(int(math.ceil(batch)), 1)
            lat = mixed_latencies_s(be, lengths.prompt_tokens, chunk_tokens, nb, ctx)
            t_dec = _decode_iter_s(be, nb, ctx)
            free = 1.0 - rate * float(lat.mean()) / (be.pp if cfg.pp_overlap else 1)
            if free <= 0:
                return math.inf, math.inf, lat, t_dec
            tpot = 1.0 / (rate * chunks + free / t_dec)
            new = rate * out_tokens * tpot
            if abs(new - batch) < 0.05:
                batch = new
                break
            batch = new
        return tpot, batch, lat, t_dec

    def ok(rate: float) -> bool:
        tpot, batch, lat, t_dec = state(rate)
        if tpot > tpot_cap or not kv_fits(lengths, batch, kv_tokens, max_num_seqs, cfg):
            return False
        occ = lat / be.pp if cfg.pp_overlap else lat
        return ttft_attainment(rate, occ, lat, slo.ttft_s, 0.5 * t_dec) >= target

    rate = _max_rate(ok, 1.0 / float(solo.mean()), iters=25)
    batch = state(rate)[1] if rate > 0 else 0.0
    return rate, int(math.ceil(batch)), float(solo.mean())


def mixed_latencies_s(be: LatencyBackend, prompt_tokens: np.ndarray, chunk_tokens: int,
                      num_decodes: int, ctx_tokens: float) -> np.ndarray:
    """Prefill latency of each prompt when ``num_decodes`` decodes ride in every chunk.

    Returns:
        (n,) float64 seconds (vLLM: running decodes take budget first, prompts fill the rest).
    """
    budget = max(chunk_tokens - num_decodes, 1)
    dctx = int(round(num_decodes * ctx_tokens))
    cache: dict[int, float] = {}
    out = np.empty(len(prompt_tokens))
    for i, p in enumerate(prompt_tokens.tolist()):
        t = cache.get(p)
        if t is None:
            t, done = 0.0, 0
            while done < p:
                c = min(budget, p - done)
                t += be.iteration_time_s(c, 1, done, c * done, c * c, num_decodes, dctx)
                done += c
            cache[p] = t
        out[i] = t
    return out


def _chunks_per_request(lengths: LengthStats, chunk_tokens: int) -> float:
    return float(np.mean(-(-lengths.prompt_tokens // chunk_tokens)))


def candidate(model: ModelSpec, gpu: GpuSpec, role: str, tp: int, pp: int, lengths: LengthStats,
              slo: SLO, cfg: CapacityConfig) -> Candidate | None:
    """Capacity of one (role, tp, pp), or None when the weights or the backend do not fit.

    Raises:
        ValueError: for an unknown role.
    """
    if role not in CANDIDATE_ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(CANDIDATE_ROLES)}")
    chunk_tokens, max_num_seqs = _limits(gpu)
    try:
        mem = plan_memory(model, gpu, tp, pp, load_engine_params(_engine_name(cfg)),
                          cfg.gpu_memory_utilization, cfg.block_size, chunk_tokens)
        be = make_backend(model, gpu, tp, pp, cfg)
    except CatalogError:
        return None
    kv = mem.num_kv_tokens
    if role == "prefill":
        rate, svc = prefill_capacity_per_s(be, lengths, slo, cfg, chunk_tokens)
        if kv < int(lengths.prompt_tokens.max()):
            rate, note = 0.0, "kv: the longest prompt does not fit"
        else:
            note = "ttft (M/G/1)"
        return Candidate(role, tp, pp, rate, kv, 0, svc, note)
    if role == "decode":
        rate, batch, t, note = decode_capacity_per_s(be, lengths, slo, cfg, kv, max_num_seqs)
        return Candidate(role, tp, pp, rate, kv, batch, t, f"decode batch bound: {note}")
    rate, batch, svc = colocated_capacity_per_s(be, lengths, slo, cfg, kv, max_num_seqs,
                                                chunk_tokens)
    return Candidate(role, tp, pp, rate, kv, batch, svc, "ttft + tpot (colocated)")


def build_candidates(model: ModelSpec, gpu: GpuSpec, lengths: LengthStats, slo: SLO,
                     cfg: CapacityConfig, roles: tuple[str, ...] = CANDIDATE_ROLES,
                     max_gpus: int | None = None) -> list[Candidate]:
    """Every candidate (role, tp, pp) whose weights fit and whose capacity is > 0.

    Args:
        model: model served.
        gpu: GPU type.
        lengths: workload length sample.
        slo: TTFT/TPOT SLOs and the attainment target.
        cfg: capacity options.
        roles: which roles to consider.
        max_gpus: cap on tp x pp (e.g. the cluster's GPUs); default ``cfg.max_gpus_per_instance``.

    Returns:
        Candidates sorted by role, GPUs, tp.
    """
    limit = min(cfg.max_gpus_per_instance, max_gpus or cfg.max_gpus_per_instance)
    out = []
    for tp, pp in parallel_shapes(model, limit):
        for role in roles:
            c = candidate(model, gpu, role, tp, pp, lengths, slo, cfg)
            if c is not None and c.capacity_per_s > 0:
                out.append(c)
    out.sort(key=lambda c: (CANDIDATE_ROLES.index(c.role), c.num_gpus, c.tp))
    return out
