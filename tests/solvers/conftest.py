"""Builders for the solver tests."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def opt_lengths(tmp_path_factory) -> str:
    """A ShareGPT-like length table that fits OPT's 2048-token context (300 rows)."""
    rng = np.random.default_rng(0)
    prompt = np.clip(rng.lognormal(np.log(600), 0.6, 300), 8, 1600).astype(int)
    output = np.clip(rng.lognormal(np.log(120), 0.8, 300), 2, 2048 - prompt).astype(int)
    path = tmp_path_factory.mktemp("lengths") / "opt_lengths.csv"
    rows = "\n".join(f"{p},{o}" for p, o in zip(prompt, output, strict=True))
    path.write_text("prompt_tokens,output_tokens\n" + rows + "\n")
    return str(path)
