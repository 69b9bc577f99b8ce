"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run (reproducible CI); set
# HYPOTHESIS_PROFILE=explore for fresh random examples (and BATON_PROPERTY_EXAMPLES for more).
settings.register_profile("reproducible", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "reproducible"))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""Real measurements beside the repository (``../shared/data``); absent on a user's machine."""


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; skips the test when it is absent (mark such tests ``shared``)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA
