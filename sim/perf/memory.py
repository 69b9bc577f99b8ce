"""GPU memory of a serving instance: weights, KV cache per token, and KV capacity in blocks.

Layout per GPU of an instance with TP x PP GPUs (as vLLM sizes it)::

    memory_bytes * gpu_memory_utilization
    = weights / (tp * pp)              # each GPU holds its shard of its stage's layers
    + reserved                         # engine: CUDA context, NCCL, graphs, activation peak
    + num_blocks * block_bytes         # KV cache: block_size tokens x this GPU's layers/heads

``block_bytes = block_size * kv_bytes_per_token / (tp * pp)``, so the instance holds
``num_blocks * block_size`` tokens of KV cache (every GPU holds the same token slots for its
own layers and heads).
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.catalog import CatalogError, GpuSpec, ModelSpec
from sim.catalog.gpu import GIB
from sim.perf.params import EngineParams


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """How one GPU of an instance spends its memory, bytes (and the resulting KV capacity)."""

    usable_bytes: int
    """``memory_bytes * gpu_memory_utilization``."""
    weight_bytes: int
    """This GPU's weight shard."""
    reserved_bytes: int
    """Engine reserve (context, communication buffers, activation peak)."""
    kv_bytes: int
    """Left for the KV cache (rounded down to whole blocks)."""
    block_bytes: int
    """Bytes one KV block occupies on this GPU."""
    num_blocks: int
    """KV blocks the instance has (each GPU holds the same number)."""
    block_size: int
    """Tokens per block."""

    @property
    def num_kv_tokens(self) -> int:
        """KV-cache capacity of the instance, tokens."""
        return self.num_blocks * self.block_size


def weight_bytes_per_gpu(model: ModelSpec, tp: int, pp: int, engine: EngineParams) -> int:
    """Weight bytes one GPU holds: the model split evenly over ``tp * pp`` GPUs."""
    return int(model.weight_bytes * engine.weight_scale / (tp * pp))


def kv_bytes_per_token_per_gpu(model: ModelSpec, tp: int, pp: int) -> float:
    """KV-cache bytes one token occupies on one GPU (its layers, its KV heads)."""
    # KV heads replicate when tp > num_kv_heads (vLLM keeps at least one head per rank).
    heads_per_gpu = max(model.num_kv_heads / tp, 1.0)
    layers_per_gpu = model.num_layers / pp
    return 2.0 * layers_per_gpu * heads_per_gpu * model.head_dim * model.dtype_bytes


def activation_peak_bytes(model: ModelSpec, tp: int, max_num_batched_tokens: int) -> int:
    """Peak activation memory of a forward pass over ``max_num_batched_tokens`` tokens, bytes.

    The largest live tensors are the MLP's up-projection output and its activation, plus the
    residual stream and the QKV output.
    """
    width = model.mlp_up_width / tp * model.num_experts_per_tok
    width += model.intermediate_size / tp + 2 * model.hidden_size
    width += (model.q_size + 2 * model.kv_size) / tp
    return int(max_num_batched_tokens * width * model.dtype_bytes)


def reserved_bytes_per_gpu(
    model: ModelSpec, tp: int, engine: EngineParams, max_num_batched_tokens: int
) -> int:
    """Memory the engine keeps besides weights and KV cache on one GPU, bytes."""
    return int(
        engine.reserved_fixed_gib * GIB
        + engine.reserved_per_hidden_bytes * model.hidden_size
        + engine.activation_scale * activation_peak_bytes(model, tp, max_num_batched_tokens)
    )


def plan_memory(
    model: ModelSpec,
    gpu: GpuSpec,
    tp: int,
    pp: int,
    engine: EngineParams,
    gpu_memory_utilization: float = 0.9,
    block_size: int = 16,
    max_num_batched_tokens: int = 8192,
) -> MemoryPlan:
    """Size the KV cache of an instance like vLLM does at start-up.

    Args:
        model: the model served.
        gpu: the GPU type (all GPUs of the instance are the same).
        tp: tensor parallel degree.
        pp: pipeline parallel degree.
        engine: the engine's reserve parameters.
        gpu_memory_utilization: fraction of device memory the engine may use (vLLM's flag).
        block_size: tokens per KV block (vLLM's ``--block-size``).
        max_num_batched_tokens: tokens of the profiling forward pass (activation peak).

    Returns:
        The memory plan, with ``num_blocks`` >= 1.

    Raises:
        CatalogError: if the weights (plus reserve) do not fit, with the numbers and a fix.
    """
    model.check_tp(tp)
    model.check_pp(pp)
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise CatalogError(
            f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
        )
    if not isinstance(block_size, int) or block_size < 1:
        raise CatalogError(f"block_size must be a positive integer, got {block_size!r}")
    usable = int(gpu.memory_bytes * gpu_memory_utilization)
    weights = weight_bytes_per_gpu(model, tp, pp, engine)
    reserved = reserved_bytes_per_gpu(model, tp, engine, max_num_batched_tokens)
    block_bytes = int(round(block_size * kv_bytes_per_token_per_gpu(model, tp, pp)))
    free = usable - weights - reserved
    num_blocks = free // block_bytes if free > 0 else 0
    if num_blocks < 1:
        raise CatalogError(
            f"{model.name} does not fit on {tp * pp} x {gpu.name} (tp={tp}, pp={pp}): each GPU "
            f"needs {weights / GIB:.1f} GiB of weights + {reserved / GIB:.1f} GiB reserve + "
            f"{block_bytes / GIB:.4f} GiB per KV block, but has {usable / GIB:.1f} GiB usable "
            f"({gpu.memory_gib:g} GiB x gpu_memory_utilization {gpu_memory_utilization}). "
            f"Use more GPUs (tp x pp), a larger GPU, or a higher gpu_memory_utilization."
        )
    return MemoryPlan(
        usable_bytes=usable,
        weight_bytes=weights,
        reserved_bytes=reserved,
        kv_bytes=num_blocks * block_bytes,
        block_bytes=block_bytes,
        num_blocks=int(num_blocks),
        block_size=block_size,
    )
