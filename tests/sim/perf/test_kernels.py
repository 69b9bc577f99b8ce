"""Roofline kernel times against hand arithmetic on a round-number GPU."""

from __future__ import annotations

import numpy as np
import pytest

from sim.catalog import get_gpu
from sim.perf import kernels, load_kernel_params
from tests.sim.perf.conftest import make_gpu, make_kernel_params

# Round GPU: 1e14 FLOP/s over 10 SMs (1e13 each), 1e12 B/s HBM.
HEADS = {"num_q_heads": 4, "num_kv_heads": 2, "head_dim": 16}


# ---- GEMM --------------------------------------------------------------------------------
def test_gemm_sum_of_compute_and_memory_by_hand():
    # m = n = 256, k = 1024, blend power 1 (plain sum), no overhead.
    # 64x64 tiles: 4 x 4 = 16 tiles -> 2 waves of 10 SMs, each 2*64*64*1024 FLOPs at
    #   1e13 * 0.5 FLOP/s -> 2 * 1.6777216e-6 = 3.3554432e-6 s   <- fastest
    # 128x128: 4 tiles, 1 wave, 2*128*128*1024 / (1e13 * 0.8) = 4.194304e-6 s
    # 256x128: 2 tiles, 1 wave, 2*256*128*1024 / 1e13 = 6.7108864e-6 s
    # memory: (256*1024 + 1024*256 + 256*256) * 2 bytes / 1e12 = 1.179648e-6 s
    t = kernels.gemm_time_s(256, 256, 1024, make_gpu(), make_kernel_params())
    assert float(t) == pytest.approx(3.3554432e-6 + 1.179648e-6, rel=1e-12)


def test_gemm_compute_bound_tends_to_the_compute_roofline():
    # m = n = k = 4096. 256x128 tiles: 16 * 32 = 512 tiles -> 52 waves of
    # 2*256*128*4096 / 1e13 = 2.68435456e-5 s = 1.3958643712e-3 s (128x128: 103 waves of
    # 1.6777216e-5 = 1.728e-3; 64x64: 410 waves of 6.7108864e-6 = 2.75e-3).
    # Memory 3 * 4096^2 * 2 / 1e12 = 1.0066e-4 s is 7% of it; power 8 makes its share ~1e-10.
    kp = make_kernel_params(gemm_blend_power=8.0)
    t = kernels.gemm_time_s(4096, 4096, 4096, make_gpu(), kp)
    assert float(t) == pytest.approx(52 * 2.68435456e-5, rel=1e-8)


def test_gemm_memory_bound_tends_to_the_memory_roofline():
    # m = 1, n = k = 8192 on a 10 GB/s GPU: memory (8192 + 8192^2 + 8192) * 2 / 1e10
    # = 1.34250496e-2 s; compute (64x64: 128 tiles, 13 waves of 1.34217728e-5) = 1.74e-4 s.
    kp = make_kernel_params(gemm_blend_power=8.0)
    t = kernels.gemm_time_s(1, 8192, 8192, make_gpu(hbm_bandwidth_gb_per_s=10), kp)
    assert float(t) == pytest.approx(1.34250496e-2, rel=1e-8)


def test_gemm_overhead_dtype_and_empty():
    gpu = make_gpu()
    base = float(kernels.gemm_time_s(256, 256, 1024, gpu, make_kernel_params()))
    with_ovh = kernels.gemm_time_s(256, 256, 1024, gpu, make_kernel_params(gemm_overhead_s=1e-6))
    assert float(with_ovh) == pytest.approx(base + 1e-6, rel=1e-12)
    fp32 = kernels.gemm_time_s(256, 256, 1024, gpu, make_kernel_params(), dtype_bytes=4)
    assert float(fp32) == pytest.approx(3.3554432e-6 + 2 * 1.179648e-6, rel=1e-12)
    zero = kernels.gemm_time_s(0, 256, 1024, gpu, make_kernel_params(gemm_overhead_s=1e-6))
    assert float(zero) == 0.0


def test_gemm_broadcasts():
    m = np.array([[0, 1], [256, 4096]])
    t = kernels.gemm_time_s(m, 256, 1024, make_gpu(), make_kernel_params())
    assert t.shape == (2, 2)
    assert t[0, 0] == 0.0 and t[1, 0] == pytest.approx(4.5350912e-6, rel=1e-12)


def test_gemm_wave_quantisation_is_a_step():
    # 10 SMs: 640 rows in 64-row tiles x 1 column tile = 10 tiles = 1 wave; 641 rows = 2 waves.
    kp = make_kernel_params(gemm_eff_tile_128=0.01, gemm_eff_tile_256=0.01,
                            gemm_blend_power=20.0)
    gpu = make_gpu(hbm_bandwidth_gb_per_s=1e9)  # memory negligible
    one = float(kernels.gemm_time_s(640, 64, 1024, gpu, kp))
    two = float(kernels.gemm_time_s(641, 64, 1024, gpu, kp))
    assert one == pytest.approx(2 * 64 * 64 * 1024 / (1e13 * 0.5), rel=1e-9)
    assert two == pytest.approx(2 * one, rel=1e-9)


@pytest.mark.parametrize("calibration", ["a100", "h100", "a40"])
def test_gemm_never_faster_with_more_work(calibration):
    gpu = get_gpu({"a100": "A100-80GB-SXM", "h100": "H100-SXM-80GB", "a40": "A40"}[calibration])
    kp = load_kernel_params(calibration)
    m = np.arange(0, 9000, dtype=float)
    for n, k in ((4096, 4096), (1536, 8192), (28672, 8192)):
        t = kernels.gemm_time_s(m, n, k, gpu, kp)
        assert (np.diff(t) >= 0).all()
        assert (kernels.gemm_time_s(1000, n + 128, k, gpu, kp)
                >= kernels.gemm_time_s(1000, n, k, gpu, kp))
        assert (kernels.gemm_time_s(1000, n, k + 128, gpu, kp)
                >= kernels.gemm_time_s(1000, n, k, gpu, kp))


def test_gemm_large_blend_power_tends_to_max_without_underflow():
    # same shape as the hand-computed sum test: compute 3.3554432e-6 s, memory 1.179648e-6 s
    kp = make_kernel_params(gemm_blend_power=100.0)
    t = kernels.gemm_time_s(256, 256, 1024, make_gpu(), kp)
    assert float(t) == pytest.approx(3.3554432e-6, rel=1e-6)


# ---- elementwise -------------------------------------------------------------------------
def test_elementwise_by_hand():
    kp = make_kernel_params(elementwise_memory_eff=0.5, elementwise_overhead_s=2e-6)
    t = kernels.elementwise_time_s(np.array([0.0, 1e6]), make_gpu(), kp)
    # 1e6 bytes / (1e12 * 0.5) + 2e-6
    np.testing.assert_allclose(t, [0.0, 4e-6], rtol=1e-12)


# ---- attention ---------------------------------------------------------------------------
def test_attention_prefill_by_hand():
    # c = 100 new tokens on x = 50 cached, one sequence, causal_frac 0.5:
    # FLOPs = 4 * 4 heads * 16 * (100*50 + 0.5 * 100^2) = 2.56e6 -> 2.56e-8 s at 1e14
    # bytes = (2*100*4*16 + 2*150*2*16) elements * 2 = 44800 -> 4.48e-8 s at 1e12
    t = kernels.attn_prefill_time_s(100, 50, 5000, 10000, gpu=make_gpu(),
                                    kp=make_kernel_params(), **HEADS)
    assert float(t) == pytest.approx(2.56e-8 + 4.48e-8, rel=1e-12)


def test_attention_prefill_efficiencies_and_causal_fraction():
    kp = make_kernel_params(attn_prefill_compute_eff=0.5, attn_prefill_memory_eff=0.25,
                            attn_causal_frac=1.0, attn_prefill_overhead_s=1e-6)
    t = kernels.attn_prefill_time_s(100, 50, 5000, 10000, gpu=make_gpu(), kp=kp, **HEADS)
    # FLOPs 4*4*16*(5000 + 10000) = 3.84e6 at 5e13; bytes 44800 at 2.5e11
    assert float(t) == pytest.approx(3.84e6 / 5e13 + 44800 / 2.5e11 + 1e-6, rel=1e-12)
    empty = kernels.attn_prefill_time_s(0, 0, 0, 0, gpu=make_gpu(), kp=kp, **HEADS)
    assert float(empty) == 0.0


def test_attention_decode_by_hand():
    kp = make_kernel_params(attn_decode_per_seq_s=1e-7, attn_decode_overhead_s=2e-6)
    # 3 sequences attending 300 tokens in total:
    # bytes = (300 * 2 * 2 * 16 + 3 * 2 * 4 * 16) elements * 2 = 39168 -> 3.9168e-8 s
    t = kernels.attn_decode_time_s(np.array([0, 3]), np.array([0, 300]), gpu=make_gpu(), kp=kp,
                                   **HEADS)
    np.testing.assert_allclose(t, [0.0, 3.9168e-8 + 3e-7 + 2e-6], rtol=1e-12)


# ---- collectives -------------------------------------------------------------------------
def test_allreduce_by_hand():
    kp = make_kernel_params(allreduce_latency_s=1e-5, allreduce_latency_per_rank_s=1e-6,
                            allreduce_intra_eff=0.5, allreduce_inter_eff=0.25)
    # 1e6 bytes over 4 ranks: bus bytes 2 * 3/4 * 1e6 = 1.5e6 at 1e11 * eff
    intra = kernels.allreduce_time_s(1e6, 4, 1e11, kp)
    inter = kernels.allreduce_time_s(1e6, 4, 1e11, kp, inter_node=True)
    assert float(intra) == pytest.approx(1e-5 + 3e-6 + 1.5e6 / 5e10, rel=1e-12)
    assert float(inter) == pytest.approx(1e-5 + 3e-6 + 1.5e6 / 2.5e10, rel=1e-12)
    assert float(kernels.allreduce_time_s(1e6, 1, 1e11, kp)) == 0.0
    np.testing.assert_array_equal(kernels.allreduce_time_s(np.zeros(3), 8, 1e11, kp), 0.0)


def test_allgather_moves_half_an_allreduce_with_one_latency():
    kp = make_kernel_params(allreduce_latency_s=1e-5, allreduce_latency_per_rank_s=1e-6,
                            allreduce_intra_eff=0.5)
    # gathered 1e6 bytes over 4 ranks: each receives 3/4 of it at 1e11 * 0.5
    assert float(kernels.allgather_time_s(1e6, 4, 1e11, kp)) == pytest.approx(
        1e-5 + 3e-6 + 0.75e6 / 5e10, rel=1e-12)
    # all-gather + reduce-scatter = all-reduce bandwidth, one latency more
    ag_rs = 2 * kernels.allgather_time_s(1e6, 4, 1e11, kp)
    ar = kernels.allreduce_time_s(1e6, 4, 1e11, kp)
    assert float(ag_rs - ar) == pytest.approx(1e-5 + 3e-6, rel=1e-9)
    assert float(kernels.allgather_time_s(1e6, 1, 1e11, kp)) == 0.0


def test_p2p_by_hand():
    kp = make_kernel_params(p2p_latency_s=2e-5, p2p_intra_eff=0.5, p2p_inter_eff=0.1)
    assert float(kernels.p2p_time_s(1e6, 1e11, kp)) == pytest.approx(2e-5 + 2e-5, rel=1e-12)
    assert float(kernels.p2p_time_s(1e6, 1e11, kp, inter_node=True)) == pytest.approx(
        2e-5 + 1e-4, rel=1e-12)
    assert float(kernels.p2p_time_s(0, 1e11, kp)) == 0.0


def test_grouped_gemm_of_one_group_is_a_gemm():
    gpu, kp = make_gpu(), make_kernel_params(gemm_blend_power=2.0, gemm_overhead_s=1e-6)
    for m in (1, 7, 64, 300):
        assert float(kernels.grouped_gemm_time_s(m, 1, 256, 1024, gpu, kp)) == pytest.approx(
            float(kernels.gemm_time_s(m, 256, 1024, gpu, kp)), rel=1e-12)


def test_grouped_gemm_shares_waves_across_groups_by_hand():
    # 8 groups of 8 rows, n = 64, k = 1024: 8 tiles of 64x64 in one wave of 10 SMs,
    # 2*64*64*1024 / (1e13 * 0.5) = 1.6777216e-6 s (other tile shapes are slower);
    # memory: (64*1024 + 8*1024*64 + 64*64) * 2 B / 1e12 = 1.18784e-6 s; sum (power 1)
    gpu, kp = make_gpu(), make_kernel_params()
    t = float(kernels.grouped_gemm_time_s(64, 8, 64, 1024, gpu, kp))
    assert t == pytest.approx(1.6777216e-6 + 1.18784e-6, rel=1e-12)
    # eight separate launches would each pay the one-wave compute time
    separate = 8 * float(kernels.gemm_time_s(8, 64, 1024, gpu, kp))
    assert t < separate


def test_grouped_gemm_empty_is_free():
    gpu, kp = make_gpu(), make_kernel_params(gemm_overhead_s=1e-6)
    assert float(kernels.grouped_gemm_time_s(0, 0, 64, 64, gpu, kp)) == 0.0
