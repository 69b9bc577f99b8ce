"""Validation against the real measurements in ../shared/data: the acceptance targets."""

from __future__ import annotations

import pandas as pd
import pytest

from sim.perf import validate


@pytest.fixture(scope="module")
def validation(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("perf_validation")
    summaries = validate.run(shared_data, out)
    return out, summaries, validate.check_targets(summaries)


def test_targets_are_the_agreed_ones():
    assert validate.TARGETS == {"gemm": 0.08, "allreduce": 0.15, "attention": 0.15,
                                "iteration": 0.10, "iteration_group": 0.20, "kv_capacity": 0.03}


@pytest.mark.shared
def test_every_target_is_met(validation):
    _, _, targets = validation
    assert len(targets) >= 18
    missed = targets[~targets.met]
    assert missed.empty, missed.to_string()


@pytest.mark.shared
def test_gemm_median_error_per_device_including_held_out(validation):
    _, s, _ = validation
    gd = s["gemm_by_device"]
    assert set(zip(gd.device, gd.held_out, strict=True)) == {
        (d, h) for d in ("a100", "h100", "a40") for h in (False, True)}
    assert (gd.n > 50).all()
    assert (gd.median_ape <= 0.08).all(), gd.to_string()


@pytest.mark.shared
def test_intra_node_all_reduce_error(validation):
    _, s, _ = validation
    net = s["network"]
    ar = net[(net.collective == "all_reduce") & (net.scope == "intra-node")]
    assert set(ar.gpu) == {"A100-80GB-SXM", "H100-SXM-80GB"}
    assert (ar.median_ape <= 0.15).all(), ar.to_string()


@pytest.mark.shared
def test_attention_error(validation):
    _, s, _ = validation
    attn = s["attention"]
    assert set(attn.op) == {"attn_prefill", "attn_decode"}
    assert (attn.median_ape <= 0.15).all(), attn.to_string()


@pytest.mark.shared
def test_whole_iteration_error(validation):
    _, s, _ = validation
    it = s["iterations"]
    assert set(zip(it.phase, it.held_out, strict=True)) == {
        (p, h) for p in ("prefill", "decode") for h in (False, True)}
    assert (it.median_ape <= 0.10).all(), it.to_string()
    groups = s["iteration_groups"]
    normal = groups[~groups.hardware.str.endswith("pcap")]
    assert len(normal) >= 8
    assert normal.median_ape.max() <= 0.20, normal.to_string()


@pytest.mark.shared
def test_kv_capacity_error(validation):
    _, s, _ = validation
    kv = s["kv_capacity"]
    assert set(kv.model) == {"opt-13b", "opt-66b", "opt-175b"}
    assert kv.max_ape.max() <= 0.03, kv.to_string()


@pytest.mark.shared
def test_report_csvs_and_plots_are_written(validation):
    out, _, _ = validation
    for name in ("operators", "attention", "network", "iterations", "distserve_agreement",
                 "kv_capacity"):
        df = pd.read_csv(out / f"{name}.csv")
        assert len(df) > 0 and {"ape"} <= set(df.columns), name
    for name in ("gemm", "attention", "network", "iterations"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    report = (out / "report.md").read_text()
    assert report.startswith("# Performance-model validation")
    for section in ("## gemm_by_device", "## attention", "## kv_capacity", "## Targets"):
        assert section in report
    assert "False" not in report.split("## Targets")[1]  # every target row reads met = True


def test_check_targets_flags_a_miss():
    s = {
        "gemm_by_device": pd.DataFrame({"device": ["a100"], "held_out": [True],
                                        "median_ape": [0.09]}),
        "network": pd.DataFrame({"collective": ["all_reduce"], "gpu": ["A100-80GB-SXM"],
                                 "scope": ["intra-node"], "median_ape": [0.01]}),
        "network_all": pd.DataFrame({"collective": ["all_reduce"], "gpu": ["A100-80GB-SXM"],
                                     "median_ape": [0.01]}),
        "attention": pd.DataFrame({"op": ["attn_decode"], "median_ape": [0.01]}),
        "iterations": pd.DataFrame({"phase": ["decode"], "held_out": [False],
                                    "median_ape": [0.01]}),
        "iteration_groups": pd.DataFrame({"hardware": ["a100-80gb", "h100-80gb-pcap"],
                                          "median_ape": [0.05, 0.9]}),
        "kv_capacity": pd.DataFrame({"max_ape": [0.031]}),
    }
    t = validate.check_targets(s).set_index("check")
    assert not t.loc["GEMM median APE, a100, held-out", "met"]
    assert t.loc["worst device/TP/phase group median APE (not power-capped)", "value"] == 0.05
    assert not t.loc["KV capacity max APE vs DistServe", "met"]
    assert t.met.sum() == len(t) - 2


@pytest.mark.shared
def test_vllm_v1_decode_iterations_are_reported(validation):
    out, summaries, _ = validation
    s = summaries["vllm_v1_decode"]
    assert (out / "vllm_v1_decode.csv").exists()
    assert set(s.run) == {"RTX4090/Llama-3.1-8B", "RTXPRO6000/Llama-3.1-8B",
                          "RTXPRO6000/Qwen3-32B"}
    assert (s.median_ape < 0.25).all()
