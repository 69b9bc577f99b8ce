"""GPU memory plan: weights, KV bytes per token and KV capacity arithmetic."""

from __future__ import annotations

import pytest

from sim.catalog import CatalogError, get_gpu, get_model
from sim.catalog.gpu import GIB
from sim.perf import load_engine_params, plan_memory
from sim.perf.memory import (
    activation_peak_bytes,
    kv_bytes_per_token_per_gpu,
    reserved_bytes_per_gpu,
    weight_bytes_per_gpu,
)
from tests.sim.perf.conftest import make_engine, make_gpu, make_model

V1 = load_engine_params("vllm_v1")
A100 = get_gpu("A100-80GB-SXM")


def test_llama2_7b_weights_and_kv_per_token():
    m = get_model("Llama-2-7B")
    assert m.dtype == "float16"
    assert m.weight_bytes == pytest.approx(13.48e9, rel=0.01)
    assert m.kv_bytes_per_token == 524288
    assert kv_bytes_per_token_per_gpu(m, 1, 1) == 524288
    assert kv_bytes_per_token_per_gpu(m, 4, 2) == 524288 / 8


def test_tiny_model_plan_by_hand():
    # 16 GiB round GPU at utilisation 0.5: 8 GiB usable. Weights 86848 x 2 B = 173696 B.
    # Reserve: 1 GiB fixed + 1000 B x 64 hidden + activation peak of 100 tokens:
    #   width = 256 (gate+up) + 128 (act out) + 2 x 64 (residuals) + 128 (QKV) = 640 elements
    #   -> 100 x 640 x 2 B = 128000 B.
    # Block of 16 tokens x 256 B = 4096 B.
    eng = make_engine(reserved_fixed_gib=1.0, reserved_per_hidden_bytes=1000.0)
    plan = plan_memory(make_model(), make_gpu(), 1, 1, eng, gpu_memory_utilization=0.5,
                       block_size=16, max_num_batched_tokens=100)
    usable = 8 * GIB
    reserved = GIB + 64000 + 128000
    assert plan.usable_bytes == usable
    assert plan.weight_bytes == 173696
    assert plan.reserved_bytes == reserved
    assert plan.block_bytes == 4096
    assert plan.num_blocks == (usable - 173696 - reserved) // 4096
    assert plan.kv_bytes == plan.num_blocks * 4096
    assert plan.num_kv_tokens == plan.num_blocks * 16


def test_kv_heads_replicate_when_tp_exceeds_them():
    m = make_model()  # 2 KV heads
    assert kv_bytes_per_token_per_gpu(m, 2, 1) == 2 * 2 * 1 * 16 * 2
    assert kv_bytes_per_token_per_gpu(m, 4, 1) == 2 * 2 * 1 * 16 * 2  # still one head a GPU


def test_activation_peak_and_reserve_scale():
    m = make_model()
    assert activation_peak_bytes(m, 1, 100) == 128000
    assert activation_peak_bytes(m, 2, 100) == 100 * (128 + 64 + 128 + 64) * 2
    eng = make_engine(reserved_fixed_gib=0.0, activation_scale=0.5)
    assert reserved_bytes_per_gpu(m, 1, eng, 100) == 64000


@pytest.mark.parametrize(("model", "gpu", "tp", "pp"), [
    ("Llama-2-7B", "A100-80GB-SXM", 1, 1),
    ("Llama-2-70B", "A100-80GB-SXM", 4, 1),
    ("Llama-2-70B", "H100-SXM-80GB", 2, 2),
    ("Mixtral-8x7B", "A100-80GB-SXM", 2, 1),
    ("Llama-3.1-8B", "A10G", 1, 1),
])
def test_plan_fills_usable_memory_with_whole_blocks(model, gpu, tp, pp):
    plan = plan_memory(get_model(model), get_gpu(gpu), tp, pp, V1)
    used = plan.num_blocks * plan.block_bytes + plan.weight_bytes + plan.reserved_bytes
    assert used <= plan.usable_bytes
    assert used + plan.block_bytes > plan.usable_bytes  # one more block would not fit
    assert plan.usable_bytes == int(get_gpu(gpu).memory_bytes * 0.9)
    assert plan.num_blocks >= 1


def test_weights_per_gpu_halve_with_tp():
    m = get_model("Llama-2-70B")
    w = {tp: plan_memory(m, A100, tp, 1, V1).weight_bytes for tp in (2, 4, 8)}
    assert w[4] == pytest.approx(w[2] / 2, abs=1)
    assert w[8] == pytest.approx(w[4] / 2, abs=1)
    assert weight_bytes_per_gpu(m, 2, 2, V1) == pytest.approx(w[4], abs=1)
    cap = {tp: plan_memory(m, A100, tp, 1, V1).num_kv_tokens for tp in (2, 4, 8)}
    assert cap[2] < cap[4] < cap[8]


def test_weight_scale_multiplies_weights():
    m = make_model()
    assert weight_bytes_per_gpu(m, 1, 1, make_engine(weight_scale=0.5)) == 86848


def test_more_utilisation_gives_more_blocks():
    m = get_model("Llama-2-7B")
    lo = plan_memory(m, A100, 1, 1, V1, gpu_memory_utilization=0.8).num_blocks
    hi = plan_memory(m, A100, 1, 1, V1, gpu_memory_utilization=0.95).num_blocks
    big = plan_memory(m, A100, 1, 1, V1, block_size=32).num_blocks
    assert hi > lo
    assert big == plan_memory(m, A100, 1, 1, V1).num_blocks // 2


def test_model_that_does_not_fit_names_the_numbers():
    m = get_model("Llama-2-70B")
    gpu = get_gpu("A10G")
    with pytest.raises(CatalogError) as exc:
        plan_memory(m, gpu, 1, 1, V1)
    msg = str(exc.value)
    weights_gib = m.weight_bytes / GIB
    assert f"{weights_gib:.1f} GiB of weights" in msg
    assert f"{gpu.memory_bytes * 0.9 / GIB:.1f} GiB usable" in msg
    assert "tp=1" in msg and "Llama-2-70B" in msg and "A10G" in msg


def test_bad_plan_arguments_are_named():
    m = get_model("Llama-2-7B")
    with pytest.raises(CatalogError, match="tensor_parallel_size=3"):
        plan_memory(m, A100, 3, 1, V1)
    with pytest.raises(CatalogError, match="pipeline_parallel_size"):
        plan_memory(m, A100, 1, 0, V1)
    for util in (0.0, 1.2):
        with pytest.raises(CatalogError, match="gpu_memory_utilization"):
            plan_memory(m, A100, 1, 1, V1, gpu_memory_utilization=util)
    for bs in (0, 16.0):
        with pytest.raises(CatalogError, match="block_size"):
            plan_memory(m, A100, 1, 1, V1, block_size=bs)


@pytest.mark.shared
def test_kv_capacity_matches_distserve(shared_data):
    from sim.perf.measurements import load_distserve_kv_capacity

    caps = load_distserve_kv_capacity(shared_data)
    eng = load_engine_params("distserve")
    assert len(caps) >= 70
    for r in caps.itertuples():
        plan = plan_memory(get_model(r.model), A100, int(r.tp), int(r.pp), eng,
                           gpu_memory_utilization=0.95, block_size=16)
        assert plan.num_kv_tokens == pytest.approx(r.max_num_tokens, rel=0.03), r


@pytest.mark.shared
def test_vllm_v1_kv_capacity_matches_a_real_run(shared_data):
    """vLLM 0.19 on an RTX 4090 reported 2588 KV blocks for Llama-3.1-8B at 0.9 utilisation."""
    import json

    from sim.catalog import get_gpu, get_model
    from sim.perf import load_engine_params, plan_memory

    meta = json.loads((shared_data / "vllm_runs/llmservingsim/RTX4090/Llama-3.1-8B/vllm/"
                       "meta.json").read_text())
    real = meta["kv_cache"]["num_gpu_blocks"]
    plan = plan_memory(get_model("Llama-3.1-8B"), get_gpu("RTX-4090"), 1, 1,
                       load_engine_params("vllm_v1"),
                       gpu_memory_utilization=meta["kv_cache"]["gpu_memory_utilization"],
                       block_size=meta["kv_cache"]["block_size"],
                       max_num_batched_tokens=meta["engine_kwargs"]["max_num_batched_tokens"])
    assert plan.num_blocks == pytest.approx(real, rel=0.03)
