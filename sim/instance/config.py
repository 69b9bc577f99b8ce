"""Configuration of one serving instance, named after the ``vllm serve`` flags it models."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ROLES = ("unified", "prefill", "decode")
"""Instance roles: unified serves whole requests (and tandem Lead/Follow), prefill and
decode are DistServe pools. Roles guide routers; the simulator executes any decision."""


@dataclass
class InstanceConfig:
    """A vLLM engine on ``tensor_parallel_size x pipeline_parallel_size`` GPUs of one node.

    With ``enable_expert_parallel`` and ``data_parallel_size`` = ep > 1 (an MoE model whose
    experts ep divides) the entry is ONE simulated instance standing for ep lock-stepped
    data-parallel ranks sharing the experts (``vllm serve --data-parallel-size ep
    --enable-expert-parallel``): it occupies ``tensor_parallel_size x ep`` GPUs, is timed by
    :class:`~sim.perf.analytic.ExpertParallelGroupBackend`, and schedules with the ranks'
    pooled slots, token budgets and KV blocks (the per-rank ``max_num_seqs``,
    ``max_num_batched_tokens`` and KV blocks x ep; see :meth:`ep_group`). One queue for all
    ranks approximates vLLM's DP load balancer.

    Defaults are vLLM V1's ``vllm serve`` defaults; 0 for ``max_num_seqs`` or
    ``max_num_batched_tokens`` means "what vLLM picks for this GPU" (:func:`vllm_default_limits`,
    resolved by :meth:`resolved`). ``async_scheduling`` None is resolved at construction to
    vLLM's default for the instance's pipeline parallelism (a ``dataclasses.replace`` that
    changes ``pipeline_parallel_size`` keeps the resolved value: pass it again as None).
    """

    role: str = "unified"
    """unified, prefill or decode."""
    tensor_parallel_size: int = 1
    """GPUs per pipeline stage (``--tensor-parallel-size``)."""
    pipeline_parallel_size: int = 1
    """Pipeline stages (``--pipeline-parallel-size``)."""
    max_num_seqs: int = 0
    """Sequences per iteration (``--max-num-seqs``); 0 = vLLM's default for the GPU."""
    max_num_batched_tokens: int = 0
    """Token budget per iteration (``--max-num-batched-tokens``); 0 = vLLM's default."""
    enable_chunked_prefill: bool = True
    """Split long prompts across iterations (``--enable-chunked-prefill``, V1 default on)."""
    enable_prefix_caching: bool = True
    """Reuse cached prompt blocks (``--enable-prefix-caching``, V1 default on)."""
    block_size: int = 16
    """Tokens per KV block (``--block-size``)."""
    gpu_memory_utilization: float = 0.9
    """Share of device memory the engine may use (``--gpu-memory-utilization``)."""
    scheduler_reserve_full_isl: bool = True
    """Admit a waiting request only if its whole sequence fits in free blocks, not just its
    first chunk (vLLM's ``--scheduler-reserve-full-isl``, default on since 0.11)."""
    async_scheduling: bool | None = None
    """Plan iteration N+1 while iteration N runs (vLLM's ``--async-scheduling`` /
    ``--no-async-scheduling``: the V1 EngineCore with a batch queue of depth 2; recorded as
    ``scheduler_config.async_scheduling`` in vLLM's resolved config). On a busy instance a
    request that arrives, a KV hand-in that lands or a request that becomes schedulable during
    iteration N is first scheduled into N+2: the plan of the iteration starting when N ends
    admits only what was ready when N started. Running requests continue as without it; an
    instance whose next iteration would be empty (idle) schedules what is ready at once.
    None (the default) resolves to vLLM's default since 0.14: on unless
    ``pipeline_parallel_size`` > 1 (``VllmConfig.__post_init__``); true/false force it."""
    long_prefill_token_threshold: int = 0
    """Cap on one request's prefill tokens per iteration, 0 = none."""
    max_model_len: int = 0
    """Longest prompt + output accepted, tokens; 0 = the model's max_position_embeddings."""
    num_gpu_blocks_override: int = 0
    """Use this many KV blocks instead of the memory model (``--num-gpu-blocks-override``)."""
    node: int = -1
    """Node index the instance sits on; -1 lets the cluster place it."""
    replicas: int = 1
    """Identical instances this entry stands for (placed one after another)."""
    data_parallel_size: int = 1
    """Data-parallel ranks (``--data-parallel-size``); > 1 only with ``enable_expert_parallel``
    (ranks without expert parallelism are independent engines: use ``replicas``)."""
    enable_expert_parallel: bool = False
    """Shard the experts of an MoE model over the ``data_parallel_size`` ranks, which then
    step in lock-step (``--enable-expert-parallel``); needs ``data_parallel_size`` >= 2."""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"instance role {self.role!r} is not one of {', '.join(ROLES)}")
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"instance field {name!r} must be an integer >= 0 (0 = vLLM "
                                 f"default), got {value!r}")
        for name in (
            "tensor_parallel_size",
            "pipeline_parallel_size",
            "block_size",
            "replicas",
            "data_parallel_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"instance field {name!r} must be a positive integer, got "
                                 f"{value!r}")
        for name in ("long_prefill_token_threshold", "max_model_len", "num_gpu_blocks_override"):
            if getattr(self, name) < 0:
                raise ValueError(f"instance field {name!r} must be >= 0, got "
                                 f"{getattr(self, name)}")
        if self.async_scheduling is None:  # vLLM >= 0.14: on unless pipeline parallel
            self.async_scheduling = self.pipeline_parallel_size == 1
        elif not isinstance(self.async_scheduling, bool):
            raise ValueError(f"instance field 'async_scheduling' must be true, false or null "
                             f"(vLLM's default: on unless pipeline_parallel_size > 1), got "
                             f"{self.async_scheduling!r}")
        if not isinstance(self.enable_expert_parallel, bool):
            raise ValueError(f"instance field 'enable_expert_parallel' must be true or false, "
                             f"got {self.enable_expert_parallel!r}")
        if self.data_parallel_size > 1 and not self.enable_expert_parallel:
            raise ValueError(
                f"instance field 'data_parallel_size'={self.data_parallel_size} without "
                "enable_expert_parallel: data-parallel ranks without expert parallelism are "
                f"independent engines; set replicas={self.data_parallel_size} (and "
                "data_parallel_size=1), or set enable_expert_parallel=true for an MoE model")
        if self.enable_expert_parallel and self.data_parallel_size < 2:
            raise ValueError(
                "instance field 'enable_expert_parallel' needs data_parallel_size >= 2: the "
                "simulator models expert parallelism across data-parallel ranks only (set "
                "data_parallel_size to the expert-parallel degree, or enable_expert_parallel="
                "false)")
        if self.enable_expert_parallel and self.pipeline_parallel_size > 1:
            raise ValueError(
                "instance field 'enable_expert_parallel' with pipeline_parallel_size="
                f"{self.pipeline_parallel_size}: the expert-parallel group is timed without "
                "pipeline parallelism; set pipeline_parallel_size=1")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )

    def resolved(self, gpu_memory_gib: float, gpu_name: str) -> InstanceConfig:
        """A copy with vLLM's GPU-dependent defaults filled in for zero limits."""
        tokens, seqs = vllm_default_limits(gpu_memory_gib, gpu_name)
        return dataclasses.replace(
            self,
            max_num_batched_tokens=self.max_num_batched_tokens or tokens,
            max_num_seqs=self.max_num_seqs or seqs,
        )

    def ep_group(self) -> InstanceConfig:
        """The config the simulated instance schedules with: ``self`` unless expert parallel.

        For an expert-parallel group (``expert_parallel_size`` = ep > 1) the per-rank
        ``max_num_seqs`` and ``max_num_batched_tokens`` (vLLM's defaults resolved per rank
        first: call on a :meth:`resolved` config) and ``num_gpu_blocks_override`` (per rank,
        as vLLM reports ``num_gpu_blocks``) are multiplied by ep.
        """
        ep = self.expert_parallel_size
        if ep == 1:
            return self
        if not (self.max_num_seqs and self.max_num_batched_tokens):
            raise ValueError("ep_group needs resolved limits: call resolved() first")
        return dataclasses.replace(
            self,
            max_num_seqs=self.max_num_seqs * ep,
            max_num_batched_tokens=self.max_num_batched_tokens * ep,
            num_gpu_blocks_override=self.num_gpu_blocks_override * ep,
        )

    @property
    def expert_parallel_size(self) -> int:
        """Ranks sharing the experts: ``data_parallel_size`` with expert parallelism, else 1."""
        return self.data_parallel_size if self.enable_expert_parallel else 1

    @property
    def num_gpus_per_rank(self) -> int:
        """GPUs of one data-parallel rank (``tensor_parallel_size x pipeline_parallel_size``)."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def num_gpus(self) -> int:
        """GPUs of the instance (all its data-parallel ranks)."""
        return self.num_gpus_per_rank * self.data_parallel_size


def vllm_default_limits(gpu_memory_gib: float, gpu_name: str) -> tuple[int, int]:
    """``(max_num_batched_tokens, max_num_seqs)`` that ``vllm serve`` picks for a GPU.

    vLLM V1 uses 8192 / 1024 on GPUs with >= 70 GiB that are not A100s (H100, H200, MI300X)
    and 2048 / 256 elsewhere (``EngineArgs.get_batch_defaults``, OpenAI API server context).
    """
    if gpu_memory_gib >= 70 and "a100" not in gpu_name.lower():
        return 8192, 1024
    return 2048, 256
