"""The fidelity replay reads real vLLM runs it has never seen: any folder, GPU, model, fields."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import fidelity_vllm_runs as fid
from sim.catalog import CatalogError, get_model


def _write_run(folder, meta, n=24, itls=False, seed=0):
    """A small run: n requests at ~8 req/s with plausible timings (engine clock)."""
    rng = np.random.default_rng(seed)
    (folder / "vllm").mkdir(parents=True)
    (folder / "vllm" / "meta.json").write_text(json.dumps(meta))
    rows, t = [], 100.0
    for i in range(n):
        t += float(rng.exponential(0.125))
        out = int(rng.integers(2, 40))
        first = t + 0.05 + 0.01 * i
        gaps = rng.uniform(0.01, 0.03, out - 1)
        row = {"request_id": f"r{i}", "input_toks": int(rng.integers(20, 400)),
               "output_toks": out, "arrival_time": 1e9 + t, "queued_ts": t,
               "scheduled_ts": t, "first_token_ts": first,
               "last_token_ts": first + float(gaps.sum())}
        if itls:
            row["itls"] = gaps.tolist()
        rows.append(row)
    (folder / "vllm" / "requests.jsonl").write_text("\n".join(map(json.dumps, rows)))
    return rows


META_A100 = {"model": "meta-llama/Llama-3.1-8B-Instruct",
             "engine_kwargs": {"tensor_parallel_size": 1, "max_num_seqs": 128,
                               "max_num_batched_tokens": 2048},
             "hardware": {"device_name": "NVIDIA A100-SXM4-80GB"}}


def test_finds_runs_at_any_depth_or_one_run_folder(tmp_path):
    _write_run(tmp_path / "a" / "H100" / "m1", META_A100)
    _write_run(tmp_path / "b" / "m2", META_A100)
    (tmp_path / "c" / "vllm").mkdir(parents=True)  # meta.json missing: not a run
    runs = fid.find_runs(tmp_path)
    assert [r.name for r in runs] == ["m1", "m2"]
    assert fid.find_runs(tmp_path / "b" / "m2") == [tmp_path / "b" / "m2"]
    with pytest.raises(FileNotFoundError, match="vllm/meta.json"):
        fid.find_runs(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="--runs"):
        fid.find_runs(tmp_path / "nowhere")


def test_instance_takes_the_recorded_settings_then_vllm_defaults():
    model = get_model("Llama-3.1-8B")
    meta = {"engine_kwargs": {"tensor_parallel_size": 2, "max_num_seqs": None,
                              "enable_prefix_caching": False},
            "resolved_config": {"scheduler_config": {"max_num_batched_tokens": 8192,
                                                     "chunked_prefill_enabled": False,
                                                     "async_scheduling": False},
                                "parallel_config": {"pipeline_parallel_size": 1}},
            "kv_cache": {"num_gpu_blocks": 5000, "block_size": 32,
                         "gpu_memory_utilization": 0.85}}
    inst = fid.instance_for_run(meta, model)
    assert (inst.tensor_parallel_size, inst.max_num_seqs, inst.max_num_batched_tokens) == (
        2, 0, 8192)  # max_num_seqs None: vLLM's default (0, resolved per GPU)
    assert not inst.enable_prefix_caching and not inst.enable_chunked_prefill
    assert (inst.block_size, inst.num_gpu_blocks_override) == (32, 5000)
    assert inst.gpu_memory_utilization == 0.85 and inst.async_scheduling is False
    bare = fid.instance_for_run({}, model)
    assert bare.enable_prefix_caching and bare.enable_chunked_prefill
    assert (bare.max_num_seqs, bare.max_num_batched_tokens, bare.block_size) == (0, 0, 16)


def test_pooled_itl_mean_is_the_mean_of_every_gap():
    rng = np.random.default_rng(3)
    gaps = [rng.uniform(0.01, 0.05, n - 1) for n in (2, 5, 30)]
    first = np.array([1.0, 2.0, 3.0])
    last = first + np.array([g.sum() for g in gaps])
    out = np.array([2, 5, 30])
    one = (np.array([4.0]), np.array([4.0]), np.array([1]))  # one output: no gap
    mean = fid.pooled_itl_mean(np.r_[first, one[0]], np.r_[last, one[1]], np.r_[out, one[2]])
    assert mean == pytest.approx(np.concatenate(gaps).mean(), rel=1e-12)
    assert np.isnan(fid.pooled_itl_mean(*one))


def test_compare_replays_an_unseen_gpu_and_instruct_model(tmp_path):
    rows = _write_run(tmp_path / "A100" / "Llama-3.1-8B-Instruct", META_A100, itls=True)
    table = fid.compare(tmp_path / "no-data", runs=tmp_path)
    assert set(table.run) == {"A100/Llama-3.1-8B-Instruct"}
    assert set(table.metric) == {"ttft_s", "tpot_s", "e2e_s", "itl_s"}
    itl = table[table.metric == "itl_s"].set_index("stat")
    assert set(itl.index) == {"mean", "p50", "p90", "p99"}  # every gap was recorded
    gaps = np.concatenate([r["itls"] for r in rows])
    assert itl.loc["mean", "measured_s"] == pytest.approx(gaps.mean(), rel=1e-9)
    assert itl.loc["p90", "measured_s"] == pytest.approx(np.percentile(gaps, 90))
    assert (table.simulated_s > 0).all() and np.isfinite(table.rel_error).all()
    assert "ttft_s" in fid.summarise(table)


def test_an_unknown_model_is_skipped_with_its_reason_or_raises(tmp_path):
    _write_run(tmp_path / "A100" / "good", META_A100)
    _write_run(tmp_path / "A100" / "odd", {**META_A100, "model": "acme/NoSuchModel-9B"})
    skipped = []
    table = fid.compare(tmp_path, runs=tmp_path, skipped=skipped)
    assert set(table.run) == {"A100/good"}
    assert len(skipped) == 1 and skipped[0].startswith("A100/odd: ")
    assert "NoSuchModel-9B" in skipped[0] and "conf/model" in skipped[0]
    with pytest.raises(CatalogError, match="run A100/odd: .*NoSuchModel"):
        fid.compare(tmp_path, runs=tmp_path)
    # an explicit model replays it anyway
    table = fid.compare(tmp_path, runs=tmp_path / "A100" / "odd", model="Llama-3.1-8B")
    assert table.run.nunique() == 1


def test_failed_requests_load_the_replay_but_are_not_compared(tmp_path):
    folder = tmp_path / "A100" / "run"
    rows = _write_run(folder, META_A100, n=30)
    for r in rows[::7]:  # failed in the real run: no token times
        r["first_token_ts"] = r["last_token_ts"] = None
    for r in rows:
        del r["arrival_time"]  # no client clock: the engine's queue time is the arrival
    (folder / "vllm" / "requests.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n\n")
    real, _ = fid.load_run(folder)
    assert len(real) == 30 and real.ttft_s.isna().sum() == 5
    table = fid.compare(tmp_path, runs=tmp_path)
    assert np.isfinite(table.measured_s).all() and np.isfinite(table.simulated_s).all()
    ok = [r for r in rows if r["first_token_ts"] is not None]
    e2e = table[(table.metric == "e2e_s") & (table.stat == "mean")].measured_s.item()
    assert e2e == pytest.approx(np.mean([r["last_token_ts"] - r["queued_ts"] for r in ok]))


def test_a_run_missing_fields_names_them(tmp_path):
    folder = tmp_path / "run"
    rows = _write_run(folder, META_A100, n=3)
    (folder / "vllm" / "requests.jsonl").write_text(
        "\n".join(json.dumps({k: v for k, v in r.items() if k != "queued_ts"}) for r in rows))
    with pytest.raises(ValueError, match=r"requests.jsonl: missing fields queued_ts"):
        fid.load_run(folder)


def test_default_root_finds_runs_of_any_bench_and_names_repeats_by_path(tmp_path):
    _write_run(tmp_path / "vllm_runs" / "benchA" / "A100" / "m", META_A100, n=8)
    _write_run(tmp_path / "vllm_runs" / "benchB" / "A100" / "m", META_A100, n=8, seed=1)
    table = fid.compare(tmp_path)  # data root: its vllm_runs/ at any depth
    assert set(table.run) == {"benchA/A100/m", "benchB/A100/m"}  # <GPU>/<model> repeats
