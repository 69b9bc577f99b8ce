"""Trace loaders (Azure LLM 2023 CSV, Mooncake JSONL, Baton's generic CSV) and the CSV writer.

The generic CSV has one request per row, sorted by arrival::

    arrival_s,prompt_tokens,output_tokens[,prefix_group,prefix_tokens]
    0.25,812,64,chat,512
    0.31,97,12,,0

``prefix_group`` names a set of requests whose prompts start with the same text (empty = no
group); ``prefix_tokens`` is how many leading prompt tokens this request shares with its group.
It is turned into 16-token block hashes: the first ``prefix_tokens // 16`` blocks get ids unique
per (group, block index), every further full block a fresh id (see
:func:`prefix_groups_to_hashes`).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from sim.workload._columns import CsvTable
from sim.workload.workload import Workload

GENERIC_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")
"""Required columns of the generic CSV."""
PREFIX_COLUMNS = ("prefix_group", "prefix_tokens")
"""Optional prefix columns of the generic CSV (both or neither)."""
GENERIC_BLOCK_TOKENS = 16
"""Tokens per hash block of generic-CSV prefixes (vLLM's default ``--block-size``)."""
MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per hash block of the Mooncake traces."""


# ---------------------------------------------------------------------------- Azure
def load_azure_csv(path: str | Path, name: str | None = None) -> Workload:
    """Load an Azure LLM inference 2023 trace (``AzureLLMInferenceTrace_{code,conv}.csv``).

    ``TIMESTAMP`` has 7 decimal digits (e.g. ``2023-11-16 18:17:03.9799600``); the 7th
    (100 ns) is cut. Arrivals are re-based to the first request. There is no prefix information.

    Args:
        path: the CSV (columns TIMESTAMP, ContextTokens, GeneratedTokens).
        name: workload name; default the file stem.

    Returns:
        The workload (prompt = ContextTokens, output = GeneratedTokens).
    """
    table = CsvTable(path)
    table.require(("TIMESTAMP", "ContextTokens", "GeneratedTokens"))
    stamps = [s[:26] for s in table.strings("TIMESTAMP")]
    try:
        times_us = np.array(stamps, dtype="datetime64[us]")
    except ValueError:
        times_us = None
    if times_us is None or np.any(np.isnat(times_us)):
        for i, stamp in enumerate(stamps):
            try:
                if np.isnat(np.datetime64(stamp, "us")):
                    raise ValueError(stamp)
            except ValueError:
                raise ValueError(f"{table.where(i, 'TIMESTAMP')}: {stamp!r} is not a "
                                 "'YYYY-MM-DD HH:MM:SS.fffffff' time") from None
    arrival_s = (times_us - times_us[0]).astype(np.int64) / 1e6
    table.check_sorted(arrival_s, "TIMESTAMP")
    return Workload(arrival_s, table.numbers("ContextTokens", True, 1),
                    table.numbers("GeneratedTokens", True, 1),
                    name=Path(path).stem if name is None else name)


# ---------------------------------------------------------------------------- Mooncake
def _read_jsonl(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[int]]]:
    """Columns of a Mooncake JSONL: timestamp_ms, input_length, output_length, hash_ids."""
    stamps, prompts, outputs, hashes = [], [], [], []
    keys = ("timestamp", "input_length", "output_length", "hash_ids")
    with path.open() as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {line_number} is not JSON ({err.msg})") from None
            missing = [k for k in keys if k not in record]
            if missing:
                raise ValueError(f"{path}: line {line_number}: missing key {missing[0]!r}")
            for key in ("input_length", "output_length"):
                value = record[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{path}: line {line_number}, key {key!r}: "
                                     f"{value!r} is not an integer >= 1")
            stamps.append(record["timestamp"])
            prompts.append(record["input_length"])
            outputs.append(record["output_length"])
            hashes.append(record["hash_ids"])
    if not stamps:
        raise ValueError(f"{path}: no requests; a trace needs at least one line")
    return (np.asarray(stamps, dtype=np.float64), np.asarray(prompts, dtype=np.int64),
            np.asarray(outputs, dtype=np.int64), hashes)


def spread_buckets_s(instants_s: np.ndarray, rng: np.random.Generator,
                     bucket_s: float) -> np.ndarray:
    """Spread requests that share an instant uniformly over their bucket, keeping their order.

    A bucket starts at its instant ``t`` and is ``min(bucket_s, next instant - t)`` wide, so the
    result stays sorted and every request stays in ``[t, t + bucket_s)``. Offsets are sorted
    uniform draws, so requests keep their file order within a bucket.

    Args:
        instants_s: (n,) float64 non-decreasing bucketed arrival times, seconds.
        rng: the only source of randomness.
        bucket_s: bucket width, seconds.

    Returns:
        (n,) float64 spread arrival times, seconds.
    """
    uniq_s, bucket = np.unique(instants_s, return_inverse=True)
    width_s = np.minimum(np.diff(uniq_s, append=np.inf), bucket_s)
    offsets_s = rng.random(instants_s.size) * width_s[bucket]
    # Requests of a bucket are contiguous (sorted input): sort offsets within each bucket.
    offsets_s = offsets_s[np.lexsort((offsets_s, bucket))]
    return instants_s + offsets_s


def load_mooncake_jsonl(path: str | Path, spread_buckets: bool = True,
                        rng: np.random.Generator | None = None, bucket_s: float = 3.0,
                        name: str | None = None) -> Workload:
    """Load a Mooncake FAST'25 trace (``conversation_trace.jsonl``, ``synthetic_trace.jsonl``).

    ``timestamp`` is in ms (re-based to the first request); ``hash_ids`` are 512-token blocks.
    The conversation trace puts requests on instants 3 s apart; with ``spread_buckets`` each
    request of such a *bucketed* trace (at most half as many distinct instants as requests) is
    moved uniformly into its bucket (:func:`spread_buckets_s`). Traces that are not bucketed,
    like the synthetic one, are left as they are.

    Args:
        path: the JSONL file.
        spread_buckets: spread bucketed instants over ``bucket_s``.
        rng: randomness for the spread; required when a bucketed trace is spread.
        bucket_s: bucket width, seconds.
        name: workload name; default the file stem.

    Returns:
        The workload with ``hash_block_tokens = 512``.
    """
    path = Path(path)
    stamps_ms, prompts, outputs, hashes = _read_jsonl(path)
    back = np.diff(stamps_ms) < 0
    if np.any(back):
        i = int(np.argmax(back)) + 1
        raise ValueError(f"{path}: line {i + 1}, key 'timestamp': {stamps_ms[i]:.0f} ms is "
                         f"earlier than the previous line's {stamps_ms[i - 1]:.0f} ms")
    arrival_s = (stamps_ms - stamps_ms[0]) / 1000.0
    if spread_buckets and np.unique(arrival_s).size * 2 <= arrival_s.size:
        if rng is None:
            raise ValueError(f"{path} is bucketed and spread_buckets=True: pass rng (a "
                             "np.random.Generator) or set spread_buckets=False")
        arrival_s = spread_buckets_s(arrival_s, rng, bucket_s)
    for row, h in enumerate(hashes, start=1):
        if any(isinstance(x, bool) or not isinstance(x, int) for x in h):
            raise ValueError(f"{path}: line {row}: hash_ids must be integers, got {h[:5]!r}")
    num_blocks = np.fromiter((len(h) for h in hashes), dtype=np.int64, count=len(hashes))
    offsets = np.concatenate(([0], np.cumsum(num_blocks)))
    ids = np.fromiter((x for h in hashes for x in h), dtype=np.int64, count=int(offsets[-1]))
    return Workload(arrival_s, prompts, outputs, offsets, ids, MOONCAKE_BLOCK_TOKENS,
                    path.stem if name is None else name)


# ---------------------------------------------------------------------------- prefix hashes
def canonical_hash_ids(hash_ids: np.ndarray) -> np.ndarray:
    """Relabel ids 0, 1, 2, ... in order of first appearance (same sharing, canonical values).

    Args:
        hash_ids: (m,) int64.

    Returns:
        (m,) int64 relabelled ids.
    """
    if hash_ids.size == 0:
        return hash_ids.astype(np.int64)
    _, first, inverse = np.unique(hash_ids, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[inverse]


def prefix_groups_to_hashes(prompt_tokens: np.ndarray, group: np.ndarray,
                            prefix_tokens: np.ndarray,
                            block_tokens: int = GENERIC_BLOCK_TOKENS
                            ) -> tuple[np.ndarray, np.ndarray]:
    """CSR block hashes from flat prefix groups.

    Request i has ``prompt_tokens[i] // block_tokens`` full blocks. Its first
    ``prefix_tokens[i] // block_tokens`` blocks (0 when ``group[i] < 0``) get the id of
    (group, block index), shared by every request of the group that reaches that block; every
    other block gets a fresh id. Ids are then relabelled by :func:`canonical_hash_ids`.

    Args:
        prompt_tokens: (n,) int64 prompt lengths, tokens.
        group: (n,) int64 group index, -1 for none.
        prefix_tokens: (n,) int64 shared prefix lengths, tokens, <= prompt_tokens.
        block_tokens: tokens per block.

    Returns:
        ``(hash_offsets (n + 1,) int64, hash_ids (m,) int64)``.
    """
    num_blocks = prompt_tokens // block_tokens
    num_prefix = np.where(group >= 0, np.minimum(prefix_tokens // block_tokens, num_blocks), 0)
    offsets = np.concatenate(([0], np.cumsum(num_blocks))).astype(np.int64)
    owner = np.repeat(np.arange(prompt_tokens.size), num_blocks)
    block = np.arange(owner.size) - offsets[owner]
    shared = block < num_prefix[owner]
    num_groups = int(group.max()) + 1 if group.size else 0
    group_blocks = np.zeros(max(num_groups, 1), dtype=np.int64)
    in_group = group >= 0
    np.maximum.at(group_blocks, group[in_group], num_prefix[in_group])
    group_base = np.concatenate(([0], np.cumsum(group_blocks)[:-1]))
    ids = np.empty(owner.size, dtype=np.int64)
    ids[shared] = group_base[group[owner[shared]]] + block[shared]
    ids[~shared] = group_blocks.sum() + np.arange(int((~shared).sum()))
    return offsets, canonical_hash_ids(ids)


# ---------------------------------------------------------------------------- generic CSV
def load_generic_csv(path: str | Path, name: str | None = None) -> Workload:
    """Load Baton's generic CSV (see the module docstring).

    Args:
        path: the CSV.
        name: workload name; default the file stem.

    Returns:
        The workload; with the prefix columns it carries 16-token block hashes.

    Raises:
        ValueError: empty file, missing column, malformed or unsorted row; the message names
            the file, the 1-based data row and the column.
    """
    table = CsvTable(path)
    table.require(GENERIC_COLUMNS)
    arrival_s = table.numbers("arrival_s", integer=False, minimum=0.0)
    table.check_sorted(arrival_s, "arrival_s")
    prompts = table.numbers("prompt_tokens", integer=True, minimum=1)
    outputs = table.numbers("output_tokens", integer=True, minimum=1)
    name = Path(path).stem if name is None else name
    has_prefix = [c in table.header for c in PREFIX_COLUMNS]
    if not any(has_prefix):
        return Workload(arrival_s, prompts, outputs, name=name)
    table.require(GENERIC_COLUMNS + PREFIX_COLUMNS)
    prefix = table.numbers("prefix_tokens", integer=True, minimum=0)
    labels = table.strings("prefix_group")
    too_long = prefix > prompts
    if np.any(too_long):
        i = int(np.argmax(too_long))
        raise ValueError(f"{table.where(i, 'prefix_tokens')}: {prefix[i]} exceeds the "
                         f"prompt's {prompts[i]} tokens")
    orphan = (prefix > 0) & np.array([not g for g in labels])
    if np.any(orphan):
        i = int(np.argmax(orphan))
        raise ValueError(f"{table.where(i, 'prefix_group')}: empty, but prefix_tokens = "
                         f"{prefix[i]}; name the group or set prefix_tokens to 0")
    index: dict[str, int] = {}
    group = np.array([index.setdefault(g, len(index)) if g else -1 for g in labels],
                     dtype=np.int64)
    offsets, ids = prefix_groups_to_hashes(prompts, group, prefix)
    return Workload(arrival_s, prompts, outputs, offsets, ids, GENERIC_BLOCK_TOKENS, name)


def hashes_to_prefix_groups(workload: Workload) -> tuple[np.ndarray, np.ndarray]:
    """Flat (group, prefix_tokens) that best describe a workload's block hashes.

    Requests whose first block ids agree form a group; a request's prefix is its longest
    common leading run with any other request of the group. This is exact for workloads whose
    sharing is flat groups (every generic CSV) and approximates tree-shaped sharing.

    Returns:
        ``(group (n,) int64 with -1 for none, prefix_tokens (n,) int64)``.
    """
    n = len(workload)
    seqs = [tuple(workload.prompt_hashes(i).tolist()) for i in range(n)]
    order = sorted(range(n), key=seqs.__getitem__)
    shared_blocks = np.zeros(n, dtype=np.int64)
    for a, b in zip(order, order[1:], strict=False):
        run = len(os.path.commonprefix([seqs[a], seqs[b]]))
        shared_blocks[a] = max(shared_blocks[a], run)
        shared_blocks[b] = max(shared_blocks[b], run)
    index: dict[int, int] = {}
    group = np.full(n, -1, dtype=np.int64)
    for i in np.flatnonzero(shared_blocks > 0):
        group[i] = index.setdefault(seqs[i][0], len(index))
    prefix = np.minimum(shared_blocks * workload.hash_block_tokens, workload.prompt_tokens)
    return group, prefix


def write_generic_csv(workload: Workload, path: str | Path) -> None:
    """Write a workload as a generic CSV (prefix columns only when it has hashes).

    Arrival times are written with Python's shortest round-trip repr, so they reload exactly.
    Warns when the hashes cannot be reproduced exactly by 16-token flat prefix groups (e.g.
    Mooncake's 512-token blocks or tree-shaped sharing).

    Args:
        workload: the requests.
        path: output file (overwritten).
    """
    columns = list(GENERIC_COLUMNS)
    cells = [[repr(float(t)) for t in workload.arrival_s.tolist()],
             [str(x) for x in workload.prompt_tokens.tolist()],
             [str(x) for x in workload.output_tokens.tolist()]]
    if workload.hash_offsets is not None:
        group, prefix = hashes_to_prefix_groups(workload)
        _warn_if_inexact(workload, group, prefix)
        columns += PREFIX_COLUMNS
        cells += [[str(g) if g >= 0 else "" for g in group.tolist()],
                  [str(p) for p in prefix.tolist()]]
    with Path(path).open("w", newline="") as f:
        f.write(",".join(columns) + "\n")
        for row in zip(*cells, strict=True):
            f.write(",".join(row) + "\n")


def _warn_if_inexact(workload: Workload, group: np.ndarray, prefix: np.ndarray) -> None:
    offsets, ids = prefix_groups_to_hashes(workload.prompt_tokens, group, prefix)
    exact = (workload.hash_block_tokens == GENERIC_BLOCK_TOKENS
             and np.array_equal(offsets, workload.hash_offsets)
             and np.array_equal(ids, canonical_hash_ids(workload.hash_ids)))
    if not exact:
        warnings.warn(f"workload {workload.name!r}: its prefix hashes ({workload.hash_block_tokens}"
                      "-token blocks) are re-expressed as flat prefix groups of 16-token blocks; "
                      "reloading the CSV gives approximately, not exactly, the same sharing",
                      stacklevel=2)
