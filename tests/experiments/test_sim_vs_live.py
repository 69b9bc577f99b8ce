"""Sim-to-live agreement smoke test: simulator vs router + emulators on loopback."""

from __future__ import annotations

import pytest

from experiments import sim_vs_live


@pytest.mark.slow
def test_quick_comparison_agrees_roughly():
    out = sim_vs_live.compare(40, 6.0, "round_robin")
    assert out["live"]["completed"] == 40 and out["live"]["failed"] == 0
    assert out["sim"]["completed"] == 40
    # both sides follow vLLM's default: async scheduling on for these PP=1 instances
    assert out["async_scheduling"] is True and out["live"]["async_scheduling"] == [True, True]
    # loose bounds for a loaded CI machine; the experiment reports the real numbers
    assert abs(out["rel_diff"]["tpot_ms"]) < 0.25
    assert abs(out["rel_diff"]["e2e_ms"]) < 0.25
    assert 0 < out["live"]["ttft_ms"] < 3 * out["sim"]["ttft_ms"] + 50
