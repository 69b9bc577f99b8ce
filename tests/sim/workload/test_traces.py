"""Trace loaders: generic CSV round trip and errors, Azure and Mooncake on the real files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from sim.workload import (
    REPO_ROOT,
    Workload,
    canonical_hash_ids,
    load_azure_csv,
    load_generic_csv,
    load_mooncake_jsonl,
    prefix_groups_to_hashes,
    spread_buckets_s,
    write_generic_csv,
)
from tests.sim.workload.conftest import TRACES, make_workload, needs_shared

TINY = REPO_ROOT / "sim/workload/fixtures/tiny_trace.csv"
HEADER = "arrival_s,prompt_tokens,output_tokens,prefix_group,prefix_tokens\n"


def _write(tmp_path, text, name="t.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_prefix_groups_to_hashes_oracle():
    prompt = np.array([40, 64, 20, 50])
    group = np.array([0, 0, -1, 0])
    prefix = np.array([32, 48, 0, 20])
    offsets, ids = prefix_groups_to_hashes(prompt, group, prefix)
    assert offsets.tolist() == [0, 2, 6, 7, 10]
    blocks = [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(4)]
    # Request 0: group blocks (0, 0), (0, 1); request 1 shares them and adds (0, 2), then one
    # fresh block; request 2 is one fresh block; request 3 shares (0, 0) then 2 fresh blocks.
    assert blocks[0] == [0, 1]
    assert blocks[1][:2] == [0, 1] and len(set(blocks[1])) == 4
    assert blocks[3][0] == 0 and not set(blocks[3][1:]) & set(sum(blocks[:3], []))
    assert len(set(blocks[2]) & set(sum(blocks[:2] + blocks[3:], []))) == 0


def test_tiny_fixture_loads_with_groups():
    w = load_generic_csv(TINY)
    assert len(w) == 200 and w.hash_block_tokens == 16 and w.name == "tiny_trace"
    firsts = [w.prompt_hashes(i)[0] for i in range(len(w)) if w.prompt_hashes(i).size]
    _, counts = np.unique(firsts, return_counts=True)
    assert sorted(counts)[-2:] >= [30, 50]  # two prefix groups (20 % and 30 % of requests)


def test_generic_round_trip(tmp_path):
    w = load_generic_csv(TINY)
    out = tmp_path / "copy.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a flat-group workload round-trips exactly
        write_generic_csv(w, out)
    back = load_generic_csv(out)
    for field in ("arrival_s", "prompt_tokens", "output_tokens", "hash_offsets", "hash_ids"):
        np.testing.assert_array_equal(getattr(back, field), getattr(w, field))


def test_round_trip_without_hashes_and_with_tree_sharing(tmp_path):
    w = make_workload(5, gap_s=0.1)
    write_generic_csv(w, tmp_path / "a.csv")
    back = load_generic_csv(tmp_path / "a.csv")
    assert back.hash_offsets is None
    np.testing.assert_array_equal(back.arrival_s, w.arrival_s)
    # Tree-shaped sharing: all share block 0; (A, B) and (C, D) then share different blocks.
    ids = np.array([0, 1, 2, 0, 1, 5, 0, 3, 4, 0, 3, 6])
    tree = Workload(np.arange(4.0), np.full(4, 48), np.ones(4, np.int64), np.arange(0, 13, 3), ids)
    with pytest.warns(UserWarning, match="approximately"):
        write_generic_csv(tree, tmp_path / "b.csv")
    big = Workload([0.0], [1000], [1], np.array([0, 2]), np.array([7, 8]), hash_block_tokens=512)
    with pytest.warns(UserWarning, match="512-token"):
        write_generic_csv(big, tmp_path / "c.csv")


def test_canonical_hash_ids():
    assert canonical_hash_ids(np.array([7, 3, 7, 9, 3])).tolist() == [0, 1, 0, 2, 1]


def test_no_prefix_columns_means_no_hashes(tmp_path):
    text = "arrival_s,prompt_tokens,output_tokens\n0,5,6\n1.5,7,8\n"
    w = load_generic_csv(_write(tmp_path, text))
    assert w.hash_offsets is None and w.arrival_s.tolist() == [0.0, 1.5]


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        ("0,5,6,,0\n2,5,6,,0\n1,5,6,,0\n", r"row 3 \(line 4\), column 'arrival_s'.*sort"),
        ("0,5,6,,0\n1,-5,6,,0\n", r"row 2 \(line 3\), column 'prompt_tokens'"),
        ("0,5,6,,0\n1,5,0,,0\n", r"row 2 \(line 3\), column 'output_tokens'"),
        ("0,5,6,,0\nabc,5,6,,0\n", r"row 2 \(line 3\), column 'arrival_s'"),
        ("0,5,6,,0\n1,5,6\n", r"row 2 \(line 3\).*cells"),
        ("0,5,6,g,9\n", r"row 1 \(line 2\), column 'prefix_tokens'.*exceeds"),
        ("0,50,6,,20\n", r"row 1 \(line 2\), column 'prefix_group'"),
        ("", "no data rows"),
    ],
)
def test_malformed_csv_names_file_row_column(tmp_path, body, pattern):
    path = _write(tmp_path, HEADER + body, "bad.csv")
    with pytest.raises(ValueError, match=r"bad\.csv") as err:
        load_generic_csv(path)
    assert err.match(pattern)


def test_missing_column_and_empty_file(tmp_path):
    with pytest.raises(ValueError, match="missing column 'output_tokens'"):
        load_generic_csv(_write(tmp_path, "arrival_s,prompt_tokens\n0,5\n"))
    with pytest.raises(ValueError, match="empty"):
        load_generic_csv(_write(tmp_path, "", "empty.csv"))


def test_spread_buckets_keeps_order_and_bucket():
    instants_s = np.repeat([0.0, 3.0, 5.999, 9.0], [5, 1, 4, 3])
    spread = spread_buckets_s(instants_s, np.random.default_rng(0), 3.0)
    assert np.all(np.diff(spread) >= 0)
    assert np.all(spread >= instants_s) and np.all(spread < instants_s + 3.0)
    assert np.all(spread[6:10] < 9.0)  # bucket narrowed to the next instant


def test_mooncake_small_file(tmp_path):
    lines = [
        '{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]}',
        '{"timestamp": 0, "input_length": 700, "output_length": 6, "hash_ids": [0, 2]}',
        '{"timestamp": 3000, "input_length": 10, "output_length": 7, "hash_ids": [3]}',
        '{"timestamp": 3000, "input_length": 10, "output_length": 7, "hash_ids": [4]}',
    ]
    path = _write(tmp_path, "\n".join(lines) + "\n", "m.jsonl")
    raw = load_mooncake_jsonl(path, spread_buckets=False)
    assert raw.arrival_s.tolist() == [0.0, 0.0, 3.0, 3.0] and raw.hash_block_tokens == 512
    assert raw.prompt_hashes(1).tolist() == [0, 2]
    spread = load_mooncake_jsonl(path, spread_buckets=True, rng=np.random.default_rng(0))
    assert np.all(spread.arrival_s >= raw.arrival_s)
    assert np.all(spread.arrival_s < raw.arrival_s + 3.0)
    with pytest.raises(ValueError, match="rng"):
        load_mooncake_jsonl(path, spread_buckets=True)
    with pytest.raises(ValueError, match="no requests"):
        load_mooncake_jsonl(_write(tmp_path, "\n", "e.jsonl"), spread_buckets=False)
    with pytest.raises(ValueError, match=r"line 1.*'output_length'"):
        load_mooncake_jsonl(_write(tmp_path, lines[0].replace('"output_length": 5',
                                                              '"output_length": 0'), "z.jsonl"))


def test_azure_small_file(tmp_path):
    path = _write(tmp_path, "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                  "2023-11-16 18:17:03.9799600,4808,10\n2023-11-16 18:17:05.0319600,3180,8\n")
    w = load_azure_csv(path)
    assert w.arrival_s[0] == 0.0 and w.arrival_s[1] == pytest.approx(1.052)
    assert w.prompt_tokens.tolist() == [4808, 3180] and w.output_tokens.tolist() == [10, 8]
    bad = _write(tmp_path, "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,1\n", "b.csv")
    with pytest.raises(ValueError, match=r"row 1 \(line 2\), column 'TIMESTAMP'"):
        load_azure_csv(bad)


# ---------------------------------------------------------------------------- real data
AZURE = TRACES / "azure_llm_2023"
MOONCAKE = TRACES / "mooncake"


@pytest.mark.shared
@needs_shared
@pytest.mark.parametrize(
    ("file", "count", "prompt_mean", "output_mean", "duration_s", "cv"),
    [
        ("AzureLLMInferenceTrace_code.csv", 8_819, 2_048, 27.9, 3_436, 13.15),
        ("AzureLLMInferenceTrace_conv.csv", 19_366, 1_155, 211, 3_502, 1.09),
    ],
)
def test_azure_real(file, count, prompt_mean, output_mean, duration_s, cv):
    w = load_azure_csv(AZURE / file)
    s = w.summary()
    assert len(w) == count and w.arrival_s[0] == 0.0
    assert s["prompt_tokens_mean"] == pytest.approx(prompt_mean, rel=0.005)
    assert s["output_tokens_mean"] == pytest.approx(output_mean, rel=0.005)
    assert s["duration_s"] == pytest.approx(duration_s, abs=1.0)
    assert s["interarrival_cv"] == pytest.approx(cv, abs=0.01)


@pytest.mark.shared
@needs_shared
def test_mooncake_conversation_real():
    raw = load_mooncake_jsonl(MOONCAKE / "conversation_trace.jsonl", spread_buckets=False)
    assert len(raw) == 12_031 and raw.hash_block_tokens == 512
    assert raw.prompt_tokens.mean() == pytest.approx(12_035, abs=1)
    assert raw.output_tokens.mean() == pytest.approx(343, abs=1)
    assert np.unique(raw.arrival_s).size == 1_180
    spread = load_mooncake_jsonl(MOONCAKE / "conversation_trace.jsonl", spread_buckets=True,
                                 rng=np.random.default_rng(0))
    assert np.all(spread.arrival_s >= raw.arrival_s)
    assert np.all(spread.arrival_s < raw.arrival_s + 3.0)
    assert spread.summary()["interarrival_cv"] < 1.5  # the bucketing artefact (CV 3) is gone
    np.testing.assert_array_equal(spread.hash_ids, raw.hash_ids)


@pytest.mark.shared
@needs_shared
def test_mooncake_synthetic_real_is_not_spread():
    a = load_mooncake_jsonl(MOONCAKE / "synthetic_trace.jsonl", spread_buckets=True,
                            rng=np.random.default_rng(0))
    assert len(a) == 3_993 and a.prompt_tokens.mean() == pytest.approx(15_325, abs=1)
    b = load_mooncake_jsonl(MOONCAKE / "synthetic_trace.jsonl", spread_buckets=False)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)


def test_mooncake_rejects_non_integer_hashes_and_boolean_lengths(tmp_path):
    import json

    from sim.workload import load_mooncake_jsonl

    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"timestamp": 0, "input_length": 600, "output_length": 5,
                             "hash_ids": [1.7, 2.2]}) + "\n")
    with pytest.raises(ValueError, match="hash_ids must be integers"):
        load_mooncake_jsonl(p, spread_buckets=False)
    p.write_text(json.dumps({"timestamp": 0, "input_length": True, "output_length": 5,
                             "hash_ids": [1]}) + "\n")
    with pytest.raises(ValueError, match="input_length"):
        load_mooncake_jsonl(p, spread_buckets=False)
