"""Analytic backend: composition from the kernels, TP scaling, monotonicity, scalar = vector."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import perf
from sim.catalog import CatalogError
from sim.perf import BatchArrays, BatchShape, kernels
from sim.perf.analytic import AnalyticBackend, dense_layer_time_s
from tests.sim.perf.conftest import (
    cached_backend,
    make_backend,
    make_engine,
    make_gpu,
    make_kernel_params,
    make_model,
    random_shapes,
)


def tiny_backend(**kw) -> perf.AnalyticBackend:
    """The tiny model on the round GPU with round kernel params and no host overheads."""
    kw.setdefault("engine", make_engine())
    return perf.AnalyticBackend(make_model(), make_gpu(), kernel_params=make_kernel_params(),
                                **kw)


# ---- closed forms ------------------------------------------------------------------------
def test_dense_layer_elementwise_bytes_by_hand():
    # per token: 2 norms x 2*64*2 B + 2 residual adds x 3*64*2 B + SiLU-and-mul (256 in,
    # 128 out) x 2 B + RoPE on Q and K (64 + 32) read+write x 2 B = 512 + 768 + 768 + 384
    parts = tiny_backend().breakdown_s(1000)
    assert parts["elementwise"] == pytest.approx(1000 * 2432 / 1e12, rel=1e-12)
    assert parts["moe"] == 0.0 and parts["allreduce"] == 0.0


def test_qk_norm_adds_one_read_and_write_of_queries_and_keys():
    # Qwen3's per-head q/k RMSNorm: Q and K (64 + 32 wide) read and written once more, 2 B each
    plain = tiny_backend().breakdown_s(1000)
    normed = perf.AnalyticBackend(make_model(qk_norm=True), make_gpu(),
                                  kernel_params=make_kernel_params(),
                                  engine=make_engine()).breakdown_s(1000)
    assert normed["elementwise"] - plain["elementwise"] == pytest.approx(1000 * 384 / 1e12,
                                                                         rel=1e-9)
    assert normed["gemm"] == plain["gemm"]


def test_qwen3_models_declare_their_qk_norm():
    from sim.catalog import get_model
    assert all(get_model(n).qk_norm for n in ("Qwen3-14B", "Qwen3-32B", "Qwen3-30B-A3B"))
    assert not get_model("Llama-3.1-8B").qk_norm


@pytest.mark.parametrize("tp", [1, 2])
def test_dense_layer_gemm_shapes(tp):
    gpu, kp, m = make_gpu(), make_kernel_params(), np.array([1.0, 77.0, 3000.0])
    parts = dense_layer_time_s(make_model(), gpu, kp, tp, m)
    want = (kernels.gemm_time_s(m, 128 / tp, 64, gpu, kp)  # QKV: 64 + 2 * 32 columns
            + kernels.gemm_time_s(m, 64, 64 / tp, gpu, kp)  # output projection
            + kernels.gemm_time_s(m, 256 / tp, 64, gpu, kp)  # gate + up
            + kernels.gemm_time_s(m, 64, 128 / tp, gpu, kp))  # down
    np.testing.assert_allclose(parts["gemm"], want, rtol=1e-12)
    # two all-reduces of the m x 64 bf16 activations over NVLink (1e11 B/s)
    ar = 2 * kernels.allreduce_time_s(m * 128, tp, 1e11, kp)
    np.testing.assert_allclose(parts["allreduce"], ar, rtol=1e-12)
    assert (parts["allreduce"] > 0).all() == (tp > 1)


def test_iteration_is_the_documented_sum_of_kernels():
    eng = make_engine(fixed_s=1e-3, per_seq_s=1e-5, per_prefill_sq_token_s=1e-9)
    be = tiny_backend(engine=eng)
    gpu, kp = make_gpu(), make_kernel_params()
    shape = BatchShape.from_requests([300, 40], [0, 500], [90, 1000, 7])
    m, s = shape.num_tokens, shape.num_seqs
    heads = {"num_q_heads": 4, "num_kv_heads": 2, "head_dim": 16}
    layer = (sum(be.breakdown_s(m).values())
             + kernels.attn_prefill_time_s(340, 500, 40 * 500, 300**2 + 40**2, gpu=gpu, kp=kp,
                                           **heads)
             + kernels.attn_decode_time_s(3, 1097, gpu=gpu, kp=kp, **heads))
    embed = kernels.elementwise_time_s(m * 64 * 2 * 2, gpu, kp)
    head = kernels.gemm_time_s(s, 100, 64, gpu, kp)
    host = 1e-3 + 1e-5 * s + 1e-9 * (300**2 + 40**2)
    assert be.time(shape) == pytest.approx(2 * layer + embed + head + host, rel=1e-12)


def test_empty_iteration_costs_only_the_fixed_host_time():
    be = tiny_backend(engine=make_engine(fixed_s=2e-3))
    assert be.time(BatchShape()) == pytest.approx(2e-3, rel=1e-12)


def test_launch_floor_without_cuda_graphs():
    # a host that needs 1 s to launch a layer sets the pace of both layers
    be = tiny_backend(engine=make_engine(per_layer_s=1.0))
    t = be.decode_time_s(4, 100)
    gpu, kp = make_gpu(), make_kernel_params()
    extra = (kernels.elementwise_time_s(4 * 64 * 2 * 2, gpu, kp)
             + kernels.gemm_time_s(4, 100, 64, gpu, kp))
    assert t == pytest.approx(2 * 1.0 + extra, rel=1e-12)


def test_tp_rank_overhead_and_logit_gather():
    gpu, kp = make_gpu(), make_kernel_params()
    one = tiny_backend(engine=make_engine(per_tp_rank_s=1e-3))
    two = tiny_backend(tp=2, engine=make_engine(per_tp_rank_s=1e-3))
    assert one.time(BatchShape()) == 0.0
    assert two.time(BatchShape()) == pytest.approx(1e-3, rel=1e-12)
    # one decode: head GEMM on a 50-column shard plus an all-reduce of 1 x 100 / 2 fp32 logits
    t1 = two.decode_time_s(1, 10)
    layer = (sum(two.breakdown_s(1).values())
             + kernels.attn_decode_time_s(1, 10, 2, 1, 16, gpu, kp))
    head = (kernels.gemm_time_s(1, 50, 64, gpu, kp)
            + kernels.allreduce_time_s(100 * 4 / 2, 2, 1e11, kp))
    embed = kernels.elementwise_time_s(256, gpu, kp)
    assert t1 == pytest.approx(2 * layer + head + embed + 1e-3, rel=1e-12)


def test_pipeline_stages_add_activation_transfers():
    gpu, kp = make_gpu(), make_kernel_params(p2p_latency_s=1e-5, p2p_inter_eff=0.5)
    shape = BatchShape.from_requests([200], decode_ctx_tokens=[50] * 3)
    base = perf.AnalyticBackend(make_model(), gpu, kernel_params=kp, engine=make_engine())
    pp2 = perf.AnalyticBackend(make_model(), gpu, pp=2, kernel_params=kp, engine=make_engine())
    far = perf.AnalyticBackend(make_model(), gpu, pp=2, pp_inter_node=True, kernel_params=kp,
                               engine=make_engine())
    act = 203 * 64 * 2
    assert pp2.time(shape) - base.time(shape) == pytest.approx(
        float(kernels.p2p_time_s(act, 1e11, kp)), rel=1e-9)
    assert far.time(shape) - base.time(shape) == pytest.approx(
        float(kernels.p2p_time_s(act, 1e9, kp, inter_node=True)), rel=1e-9)


def test_inter_node_pipeline_does_not_slow_the_tp_logit_gather():
    gpu, kp = make_gpu(), make_kernel_params(p2p_inter_eff=0.5)
    kw = {"tp": 2, "pp": 2, "kernel_params": kp, "engine": make_engine()}
    near = perf.AnalyticBackend(make_model(), gpu, **kw)
    far = perf.AnalyticBackend(make_model(), gpu, pp_inter_node=True, **kw)
    shape = BatchShape.from_requests([200])
    act = 200 * 64 * 2
    want = (kernels.p2p_time_s(act, 1e9, kp, inter_node=True) - kernels.p2p_time_s(act, 1e11, kp))
    assert far.time(shape) - near.time(shape) == pytest.approx(float(want), rel=1e-9)


def test_decode_line_reproduces_iterations():
    backends = [cached_backend("Llama-2-7B", "A100-80GB-SXM", 1, "vllm_v1"),
                cached_backend("Llama-2-7B", "A100-80GB-SXM", 1, "vllm_splitwise_2023"),
                tiny_backend(engine=make_engine(per_layer_s=2e-8, fixed_s=1e-3))]
    for be in backends:
        for b, ctx in ((1, 10), (8, 2000), (64, 64 * 900)):
            a, slope, floor, const = be.decode_line(b, ctx)
            for j in (0, 1, 5, 40, 3000):
                t = be.iteration_time_s(0, 0, 0, 0, 0, b, ctx + j * b)
                assert max(floor, a + slope * j) + const == pytest.approx(t, rel=1e-12)


def test_decode_line_floor_binds_for_a_small_batch_on_a_launch_bound_engine():
    be = tiny_backend(engine=make_engine(per_layer_s=1e-3))
    a, slope, floor, const = be.decode_line(1, 10)
    assert floor == pytest.approx(2e-3) and floor > a  # launching 2 layers outlasts the GPU
    assert slope > 0
    assert be.decode_time_s(1, 10) == pytest.approx(floor + const, rel=1e-12)


# ---- TP scaling --------------------------------------------------------------------------
def test_tp_scaling_of_a_large_prefill_on_llama2_70b():
    t = {tp: make_backend("Llama-2-70B", "A100-80GB-SXM", tp).prefill_time_s(4096)
         for tp in (2, 4, 8)}
    assert t[4] < t[2]
    assert t[8] < t[4]
    assert t[4] / t[8] <= 2.0  # communication keeps TP8 from the ideal 2x over TP4
    assert t[2] / t[4] > 1.5  # but a 4096-token prefill is compute bound and scales well


def test_decode_at_tp8_pays_all_reduce():
    be8 = make_backend("Llama-2-70B", "A100-80GB-SXM", 8)
    be1 = make_backend("Llama-2-70B", "A100-80GB-SXM", 1)
    assert be8.breakdown_s(32)["allreduce"] > 0
    assert be1.breakdown_s(32)["allreduce"] == 0
    # GEMM work per GPU shrinks with TP
    assert be8.breakdown_s(4096)["gemm"] < be1.breakdown_s(4096)["gemm"] / 6


def test_tp_across_nodes_is_slower_than_inside_one():
    one = make_backend("Llama-2-70B", "A100-80GB-SXM", 8)
    two = make_backend("Llama-2-70B", "A100-80GB-SXM", 8, tp_gpus_per_node=4)
    assert two.prefill_time_s(512) > one.prefill_time_s(512)
    assert two.decode_time_s(16, 1000) > one.decode_time_s(16, 1000)


def test_breakdown_reports_cross_node_all_reduce():
    one = make_backend("Llama-2-70B", "A100-80GB-SXM", 8)
    two = make_backend("Llama-2-70B", "A100-80GB-SXM", 8, tp_gpus_per_node=4)
    assert two.breakdown_s(512)["allreduce"] > 2 * one.breakdown_s(512)["allreduce"]


def test_moe_model_times_experts_separately():
    parts = make_backend("Mixtral-8x7B", "A100-80GB-SXM", 2).breakdown_s(256)
    assert parts["moe"] > parts["gemm"] > 0  # the experts dominate the attention projections


# ---- bad input ---------------------------------------------------------------------------
def test_tp_not_dividing_heads_names_tensor_parallel_size():
    with pytest.raises(CatalogError, match="tensor_parallel_size=3"):
        make_backend("Llama-2-7B", "A100-80GB-SXM", 3)


def test_unknown_names():
    with pytest.raises(CatalogError, match="Llama-2-7B"):
        make_backend("Llama-2-8B")
    with pytest.raises(CatalogError, match="A100-80GB-SXM"):
        make_backend(gpu="A101")
    with pytest.raises(CatalogError, match="vllm_v1"):
        make_backend(engine="vllm_v9")


def test_unknown_backend_name_lists_the_valid_ones():
    with pytest.raises(CatalogError, match="analytic, profile_table, distserve"):
        perf.make_backend("roofline", model="Llama-2-7B", gpu="A100-80GB-SXM")
    assert isinstance(perf.make_backend("analytic", model="Llama-2-7B", gpu="A100-80GB-SXM"),
                      perf.AnalyticBackend)


# ---- monotonicity ------------------------------------------------------------------------
COMBOS = [
    ("Llama-2-7B", "A100-80GB-SXM", 1, "vllm_v1"),
    ("Llama-2-70B", "A100-80GB-SXM", 4, "vllm_v1"),
    ("Llama-3.1-8B", "H100-SXM-80GB", 2, "vllm_splitwise_2023"),
    ("Mixtral-8x7B", "A100-80GB-SXM", 2, "vllm_v1"),
    ("OPT-13B", "A40", 1, "vllm_v1"),
]

chunks = st.lists(st.tuples(st.integers(1, 4096), st.integers(0, 8192)), max_size=6)
decodes = st.lists(st.integers(1, 16384), max_size=96)
combos = st.sampled_from(COMBOS)


def _time(be, prefill, decode) -> float:
    c = [p[0] for p in prefill]
    x = [p[1] for p in prefill]
    return be.time(BatchShape.from_requests(c, x, decode))


@settings(max_examples=150, deadline=None)
@given(combo=combos, prefill=chunks, decode=decodes, extra=st.integers(1, 3000),
       which=st.integers(0, 5))
def test_more_prefill_tokens_never_take_less_time(combo, prefill, decode, extra, which):
    be = cached_backend(*combo)
    t0 = _time(be, prefill, decode)
    if prefill:  # grow one chunk
        i = which % len(prefill)
        grown = [*prefill[:i], (prefill[i][0] + extra, prefill[i][1]), *prefill[i + 1:]]
        assert _time(be, grown, decode) >= t0
    assert _time(be, [*prefill, (extra, 0)], decode) >= t0  # add a prefill


@settings(max_examples=150, deadline=None)
@given(combo=combos, prefill=chunks, decode=decodes, ctx=st.integers(1, 16384),
       num_new=st.integers(1, 64))
def test_more_decode_sequences_never_take_less_time(combo, prefill, decode, ctx, num_new):
    be = cached_backend(*combo)
    t0 = _time(be, prefill, decode)
    assert _time(be, prefill, decode + [ctx] * num_new) >= t0


@settings(max_examples=150, deadline=None)
@given(combo=combos, prefill=chunks, decode=decodes, extra=st.integers(1, 8192),
       which=st.integers(0, 100))
def test_longer_context_never_takes_less_time(combo, prefill, decode, extra, which):
    be = cached_backend(*combo)
    t0 = _time(be, prefill, decode)
    if decode:
        j = which % len(decode)
        longer = [*decode[:j], decode[j] + extra, *decode[j + 1:]]
        assert _time(be, prefill, longer) >= t0
    if prefill:
        i = which % len(prefill)
        cached = [*prefill[:i], (prefill[i][0], prefill[i][1] + extra), *prefill[i + 1:]]
        assert _time(be, cached, decode) >= t0


def test_times_grow_past_the_tabulated_range():
    be = make_backend(max_table_tokens=512, max_table_seqs=16)
    t = [be.time(BatchShape.from_requests([n])) for n in (400, 512, 513, 800, 2000)]
    assert all(b > a for a, b in zip(t, t[1:], strict=False))
    d = [be.decode_time_s(b, 100) for b in (8, 16, 17, 40, 600)]
    assert all(b > a for a, b in zip(d, d[1:], strict=False))


# ---- scalar vs vectorised ----------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"model": "Llama-2-70B", "tp": 8},
        {"model": "Mixtral-8x7B", "tp": 2, "engine": "vllm_splitwise_2023"},
        {"model": "Llama-3.1-8B", "gpu": "H100-SXM-80GB", "pp": 2, "pp_inter_node": True},
        {"max_table_tokens": 256, "max_table_seqs": 16},  # extrapolation branches
        {"engine": "vllm_splitwise_2023", "tp": 4, "tp_gpus_per_node": 2},
    ],
)
def test_scalar_and_vectorised_agree(kwargs):
    be = make_backend(**kwargs)
    shapes = random_shapes(seed=len(str(kwargs)), n=300)
    vec = be.iteration_times_s(BatchArrays.from_shapes(shapes))
    scalar = np.array([be.iteration_time_s(*s.as_args()) for s in shapes])
    assert vec.shape == (300,) and vec.dtype == np.float64
    np.testing.assert_allclose(vec, scalar, rtol=1e-9, atol=0)


def test_vectorised_path_is_deterministic_and_leaves_inputs_alone():
    be = cached_backend()
    arr = BatchArrays.from_shapes(random_shapes(seed=3, n=50))
    before = [a.copy() for a in arr]
    first = be.iteration_times_s(arr)
    second = be.iteration_times_s(arr)
    np.testing.assert_array_equal(first, second)
    for a, b in zip(arr, before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_extrapolation_past_the_table_follows_the_average_growth():
    small = AnalyticBackend("Llama-3.1-8B", "H100-SXM-80GB", max_table_tokens=16384)
    big = AnalyticBackend("Llama-3.1-8B", "H100-SXM-80GB", max_table_tokens=65536)
    for n in (32768, 65536):
        assert small.prefill_time_s(n) == pytest.approx(big.prefill_time_s(n), rel=0.05)


def test_prefill_chunk_on_a_long_cache_costs_about_a_decode():
    be = AnalyticBackend("Llama-3.1-8B", "H100-SXM-80GB")
    assert be.prefill_time_s(1, 100_000) == pytest.approx(be.decode_time_s(1, 100_001), rel=0.25)


# ---- vLLM V1 specifics --------------------------------------------------------------------
def test_mixed_batch_pays_one_attention_launch():
    kp = make_kernel_params(attn_prefill_overhead_s=2e-6, attn_decode_overhead_s=5e-6)
    be = perf.AnalyticBackend(make_model(), make_gpu(), kernel_params=kp, engine=make_engine())
    pre = BatchShape.from_requests([300])
    dec = BatchShape.from_requests(decode_ctx_tokens=[100, 50])
    mix = BatchShape.from_requests([300], decode_ctx_tokens=[100, 50])
    dense = be.breakdown_s
    layers = 2
    # decode-only and prefill-only pay their own fixed time; together the larger one
    sep = (be.time(pre) - layers * sum(dense(300).values())
           + be.time(dec) - layers * sum(dense(2).values()))
    together = be.time(mix) - layers * sum(dense(302).values())
    gpu = make_gpu()
    extra_embed = (kernels.elementwise_time_s(302 * 256, gpu, kp)
                   - kernels.elementwise_time_s(300 * 256, gpu, kp)
                   - kernels.elementwise_time_s(2 * 256, gpu, kp))
    extra_head = (kernels.gemm_time_s(3, 100, 64, gpu, kp)
                  - kernels.gemm_time_s(1, 100, 64, gpu, kp)
                  - kernels.gemm_time_s(2, 100, 64, gpu, kp))
    assert together - sep == pytest.approx(layers * -2e-6 + extra_embed + extra_head, rel=1e-9)
    batch = BatchArrays.from_shapes([pre, dec, mix])
    np.testing.assert_allclose(be.iteration_times_s(batch),
                               [be.time(pre), be.time(dec), be.time(mix)], rtol=1e-12)


def test_graph_captured_all_reduce_uses_the_engine_latency():
    kp = make_kernel_params(allreduce_latency_s=4e-5)
    eager = perf.AnalyticBackend(make_model(), make_gpu(), tp=2, kernel_params=kp,
                                 engine=make_engine())
    graph = perf.AnalyticBackend(make_model(), make_gpu(), tp=2, kernel_params=kp,
                                 engine=make_engine(graph_allreduce_latency_s=1e-5))
    # two all-reduces per layer, two layers, plus the logits gather: 5 x 30 us less
    diff = eager.decode_time_s(4, 400) - graph.decode_time_s(4, 400)
    assert diff == pytest.approx(5 * 3e-5, rel=1e-9)
    one = perf.AnalyticBackend(make_model(), make_gpu(), kernel_params=kp,
                               engine=make_engine(graph_allreduce_latency_s=1e-5))
    assert one.breakdown_s(64)["allreduce"] == 0.0


def test_moe_experts_run_as_one_grouped_launch():
    moe = make_model(num_experts=8, num_experts_per_tok=2)
    gpu, kp = make_gpu(), make_kernel_params()
    parts = perf.AnalyticBackend(moe, gpu, kernel_params=kp,
                                 engine=make_engine()).breakdown_s(16)
    active = 8 * (1 - (1 - 2 / 8) ** 16)
    want = (kernels.grouped_gemm_time_s(32, active, 256, 64, gpu, kp)
            + kernels.grouped_gemm_time_s(32, active, 64, 128, gpu, kp)
            + kernels.gemm_time_s(16, 8, 64, gpu, kp))
    assert parts["moe"] == pytest.approx(float(want), rel=1e-12)


def test_expert_parallel_rank_holds_fewer_experts_and_sees_every_ranks_tokens():
    moe = make_model(num_experts=8, num_experts_per_tok=2)
    gpu, kp = make_gpu(), make_kernel_params()
    be = perf.AnalyticBackend(moe, gpu, kernel_params=kp, engine=make_engine(), ep=2)
    active = 4 * (1 - (1 - 2 / 8) ** 32)  # 4 local experts, 2 x 16 tokens routed
    want = (kernels.grouped_gemm_time_s(32, active, 256, 64, gpu, kp)
            + kernels.grouped_gemm_time_s(32, active, 64, 128, gpu, kp)
            + kernels.gemm_time_s(16, 8, 64, gpu, kp)
            # all-gather of both ranks' hidden states and router logits, reduce-scatter back
            + kernels.allgather_time_s(32 * (64 + 8) * 2, 2, 1e11, kp)
            + kernels.allgather_time_s(32 * 64 * 2, 2, 1e11, kp))
    assert be.breakdown_s(16)["moe"] == pytest.approx(float(want), rel=1e-12)
    # at decode, a rank streams half the experts: faster than one GPU holding all of them
    big = "Qwen3-30B-A3B"
    assert (make_backend(big, "H100-SXM-80GB", ep=2).decode_time_s(64, 64000)
            < make_backend(big, "H100-SXM-80GB").decode_time_s(64, 64000))
    with pytest.raises(CatalogError, match="ep=3"):
        perf.AnalyticBackend(moe, gpu, kernel_params=kp, ep=3)
    with pytest.raises(CatalogError, match="ep=2"):
        perf.AnalyticBackend(make_model(), gpu, kernel_params=kp, ep=2)


def test_fused_add_norm_moves_fewer_bytes_in_fewer_kernels():
    kp = make_kernel_params(elementwise_overhead_s=1e-6)
    plain = perf.AnalyticBackend(make_model(), make_gpu(), kernel_params=kp,
                                 engine=make_engine())
    fused = perf.AnalyticBackend(make_model(), make_gpu(), kernel_params=kp,
                                 engine=make_engine(fused_add_norm=True))
    # per token: norms + adds 2*(2+3)*64*2 B = 1280 B in 4 kernels -> 2*4*64*2 = 1024 B in 2
    diff = plain.breakdown_s(1000)["elementwise"] - fused.breakdown_s(1000)["elementwise"]
    assert diff == pytest.approx(1000 * 256 / 1e12 + 2e-6, rel=1e-9)


def test_expert_parallel_group_is_its_busiest_rank():
    from sim.perf.analytic import ExpertParallelGroupBackend

    moe = make_model(num_experts=8, num_experts_per_tok=2)
    gpu, kp, eng = make_gpu(), make_kernel_params(), make_engine()
    group = ExpertParallelGroupBackend(moe, gpu, ep=2, max_num_batched_tokens=100,
                                       kernel_params=kp, engine=eng)
    rank = perf.AnalyticBackend(moe, gpu, kernel_params=kp, engine=eng, ep=2)
    # decodes split evenly (the odd one on the busiest rank), context with them
    assert group.iteration_time_s(0, 0, 0, 0, 0, 9, 900) == pytest.approx(
        rank.iteration_time_s(0, 0, 0, 0, 0, 5, 500), rel=1e-12)
    # a prefill fills one rank's budget (100 - 5 decodes) before spilling to the next
    t = group.iteration_time_s(150, 1, 0, 0, 150**2, 10, 1000)
    f = 95 / 150
    a = rank.iteration_time_s(95, 1, 0, 0, int(150**2 * f), 5, 500)
    b = rank.iteration_time_s(55, 1, 0, 0, int(150**2 * (1 - f)), 5, 500)
    assert t == pytest.approx(max(a, b), rel=1e-12)
    assert t > group.iteration_time_s(0, 0, 0, 0, 0, 10, 1000)  # the prefill slows every rank
    with pytest.raises(CatalogError, match="ep >= 2"):
        ExpertParallelGroupBackend(moe, gpu, ep=1)


def test_gpus_without_nvlink_use_the_pcie_collective_efficiency():
    kp = make_kernel_params(allreduce_intra_eff=0.6, allreduce_pcie_eff=0.3)
    eng = make_engine()
    pcie = make_gpu(nvlink_bandwidth_gb_per_s=0)
    nvl = make_gpu(nvlink_bandwidth_gb_per_s=pcie.pcie_bandwidth_gb_per_s)
    m = np.array([64.0])
    # same link rate, same latency: only the efficiency differs, so the bandwidth terms are 2:1
    size = 64 * make_model().hidden_size * make_model().dtype_bytes
    lat = 2 * (kp.allreduce_latency_s + kp.allreduce_latency_per_rank_s)
    t_pcie = dense_layer_time_s(make_model(), pcie, kp, 2, m, engine=eng)["allreduce"][0] - lat
    t_nvl = dense_layer_time_s(make_model(), nvl, kp, 2, m, engine=eng)["allreduce"][0] - lat
    assert t_pcie == pytest.approx(2 * t_nvl, rel=1e-12)
    assert t_nvl == pytest.approx(2 * size / (pcie.intra_node_bytes_per_s * 0.6), rel=1e-12)
    # 0 keeps the NVLink-fitted efficiency; an explicit link overrides the GPU's
    same = make_kernel_params(allreduce_intra_eff=0.6)
    t0 = dense_layer_time_s(make_model(), pcie, same, 2, m, engine=eng)["allreduce"][0] - lat
    assert t0 == pytest.approx(t_nvl, rel=1e-12)
    given = dense_layer_time_s(make_model(), pcie, kp, 2, m, engine=eng,
                               intra_node_bytes_per_s=pcie.intra_node_bytes_per_s)
    assert given["allreduce"][0] - lat == pytest.approx(t_nvl, rel=1e-12)


def test_rtx_pro_6000_pair_all_reduce_matches_its_measured_profile():
    """The calibrated TP=2 all-reduce of an RTX PRO 6000 pair against the graphed PCIe profile
    the calibration was fitted to (sim.perf.measurements), per layer of Qwen3-32B (5120 wide):
    within 15% from 10 KiB to 20 MiB, the fit's robust median within 5%."""
    from sim.perf.measurements import PCIE_ALLREDUCE_RTXPRO6000_2GPU as samples

    be = cached_backend("Qwen3-32B", "RTX-PRO-6000", tp=2)
    errs = []
    for size, us in samples:
        tokens = size / (5120 * 2)
        if tokens != int(tokens):
            continue
        per_ar = be.breakdown_s(int(tokens))["allreduce"] / 2
        errs.append(per_ar / (us * 1e-6) - 1)
    assert len(errs) >= 5
    assert max(abs(e) for e in errs) < 0.15
    assert abs(float(np.median(errs))) < 0.05
