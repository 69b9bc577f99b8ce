"""Builders and paths shared by the workload tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sim.workload import Workload

SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
"""Real data beside the repository (../shared/data); tests that need it are marked ``shared``."""
TRACES = SHARED_DATA / "traces"

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(),
                                  reason=f"{SHARED_DATA} is absent")


def make_workload(num_requests: int = 10, gap_s: float = 1.0, with_hashes: bool = False,
                  **kwargs) -> Workload:
    """Requests every ``gap_s`` from 0, prompt 32 + 16 i tokens, output i + 1 tokens.

    With hashes every request starts with the shared block 0, then its own blocks.
    """
    arrival_s = np.arange(num_requests, dtype=np.float64) * gap_s
    prompt = 32 + 16 * np.arange(num_requests, dtype=np.int64)
    output = np.arange(1, num_requests + 1, dtype=np.int64)
    offsets = ids = None
    if with_hashes:
        blocks = prompt // 16
        offsets = np.concatenate(([0], np.cumsum(blocks)))
        ids = np.arange(offsets[-1], dtype=np.int64) + 1
        ids[offsets[:-1]] = 0
    return Workload(arrival_s, prompt, output, offsets, ids, **kwargs)
