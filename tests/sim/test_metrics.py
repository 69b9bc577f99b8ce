"""Per-request records, run summaries, SLO attainment and the goodput search."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.instance import Reason, Request, RequestStatus
from sim.metrics import SLO, goodput_search, records, slo_met, summarize


def done(rid, arrival, scheduled, first, finish, output, prompt=100, **kw) -> Request:
    r = Request(rid, arrival, prompt, output)
    r.status, r.first_scheduled_s, r.first_token_s, r.finish_s = (
        RequestStatus.COMPLETED, scheduled, first, finish)
    r.lead = r.follow = 0
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def rejected(rid, arrival, reason=Reason.PROMPT_EXCEEDS_KV_CAPACITY) -> Request:
    r = Request(rid, arrival, 100, 10)
    r.status, r.reason, r.finish_s = RequestStatus.REJECTED, reason, arrival
    return r


@pytest.fixture
def tiny():
    """Colocated (TTFT 1, TPOT 1), one-token output, disaggregated, rejected, failed."""
    failed = Request(4, 4.0, 50, 10)
    failed.status, failed.reason, failed.finish_s = (RequestStatus.FAILED,
                                                     Reason.SIMULATION_ENDED, 9.0)
    failed.first_scheduled_s = 4.5
    return [
        done(0, 1.0, 1.5, 2.0, 5.0, output=4),
        done(1, 2.0, 2.0, 2.1, 2.1, output=1),
        done(2, 3.0, 3.0, 3.2, 4.2, output=6, follow=1, split_tokens=1, lead_done_s=3.2,
             transfer_start_s=3.25, transfer_end_s=3.4),
        rejected(3, 3.5),
        failed,
    ]


def test_records_derived_columns(tiny):
    df = records(tiny).set_index("rid")
    assert list(df.outcome) == ["completed"] * 3 + ["rejected", "failed"]
    assert df.loc[0, ["ttft_s", "tpot_s", "e2e_s", "queue_s", "prefill_s"]].tolist() == \
        pytest.approx([1.0, 1.0, 4.0, 0.5, 0.5])
    assert df.loc[0, "transfer_s"] == 0.0 and df.loc[0, "decode_s"] == pytest.approx(3.0)
    assert df.loc[1, "tpot_s"] == 0.0 and df.loc[1, "ttft_s"] == pytest.approx(0.1)
    assert df.loc[1, "e2e_s"] == pytest.approx(0.1)
    assert df.loc[2, "tpot_s"] == pytest.approx(1.0 / 5)
    assert df.loc[2, "transfer_s"] == pytest.approx(0.2)  # hand-over requested -> KV arrived
    assert df.loc[2, "decode_s"] == pytest.approx(1.0 - 0.2)
    for rid in (3, 4):
        assert df.loc[rid, ["ttft_s", "tpot_s", "e2e_s", "transfer_s"]].isna().all()
    assert math.isnan(df.loc[3, "first_token_s"]) and math.isnan(df.loc[3, "queue_s"])
    assert df.loc[4, "queue_s"] == pytest.approx(0.5)
    assert df.loc[3, "reason_text"] == "prompt+output tokens exceed the instance's KV capacity"
    assert df.loc[0, "reason_text"] == ""


def test_records_of_nothing():
    df = records([])
    assert len(df) == 0 and "ttft_s" in df.columns


def test_summary_counts_and_attainment(tiny):
    df = records(tiny)
    slo = SLO(ttft_s=0.5, tpot_s=0.5)
    s = summarize(df, slo, num_gpus=3, num_not_entered=2)
    assert (s["num_requests"], s["num_completed"], s["num_rejected"], s["num_failed"]) == \
        (5, 3, 1, 1)
    assert s["num_not_entered"] == 2 and s["num_gpus"] == 3
    assert s["reasons"] == {"prompt_exceeds_kv_capacity": 1, "simulation_ended": 1}
    # rid 1 (TTFT 0.1, TPOT 0) and rid 2 (TTFT 0.2, TPOT 0.2) meet both; rid 0 misses both
    assert s["slo_attainment"] == pytest.approx(2 / 5)  # rejected and failed count as misses
    assert s["ttft_attainment"] == pytest.approx(2 / 5)
    assert s["tpot_attainment"] == pytest.approx(2 / 5)
    assert list(slo_met(df, slo)) == [False, True, True, False, False]
    assert s["duration_s"] == pytest.approx(9.0 - 1.0)
    assert s["throughput_req_per_s"] == pytest.approx(3 / 8.0)
    assert s["output_tokens_per_s"] == pytest.approx(11 / 8.0)
    assert s["ttft_mean_s"] == pytest.approx((1.0 + 0.1 + 0.2) / 3)
    assert s["e2e_p50_s"] == pytest.approx(1.2)


def test_attainment_joint_not_separate():
    """A request meeting TTFT only and another meeting TPOT only: joint attainment 0."""
    reqs = [done(0, 0.0, 0.0, 0.1, 10.1, output=11), done(1, 0.5, 0.5, 5.5, 6.0, output=11)]
    s = summarize(records(reqs), SLO(ttft_s=1.0, tpot_s=0.1), num_gpus=1)
    assert s["ttft_attainment"] == 0.5 and s["tpot_attainment"] == 0.5
    assert s["slo_attainment"] == 0.0


def test_summary_asserts_on_non_terminal_requests():
    df = records([Request(0, 0.0, 10, 10)])
    with pytest.raises(AssertionError, match="non-terminal"):
        summarize(df, SLO(), 1)


@pytest.mark.parametrize("threshold", [0.3, 3.7, 11.0, 40.0])
def test_goodput_search_finds_a_step_threshold(threshold):
    def attainment(rate):
        return 0.95 if rate <= threshold else 0.5

    rate, curve = goodput_search(attainment, 0.9, lo_rate=0.25, hi_rate=1.0, rel_tol=0.01)
    assert rate <= threshold < rate * (1 + 0.01) + 1e-12
    assert attainment(rate) >= 0.9
    assert curve[0] == (0.25, 0.95) and all(a == attainment(r) for r, a in curve)


def test_goodput_search_on_a_smooth_curve():
    def attainment(rate):  # logistic, falls through 0.9 at rate 5
        return 1.0 / (1.0 + np.exp(2.0 * (rate - 5.0)) / 9.0)

    rate, _ = goodput_search(attainment, 0.9, 0.5, 1.0, rel_tol=0.001)
    assert rate == pytest.approx(5.0, rel=0.002) and attainment(rate) >= 0.9


def test_goodput_search_edges():
    rate, curve = goodput_search(lambda r: 0.0, 0.9, 1.0, 2.0)
    assert rate == 0.0 and curve == [(1.0, 0.0)]
    rate, curve = goodput_search(lambda r: 1.0, 0.9, 1.0, 2.0, max_iters=3)
    assert rate == 8.0 and [r for r, _ in curve] == [1.0, 2.0, 4.0, 8.0]
    with pytest.raises(ValueError, match="lo_rate < hi_rate"):
        goodput_search(lambda r: 1.0, 0.9, 2.0, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [({"ttft_s": 0.0}, "ttft_s=0.0"), ({"tpot_s": -1.0}, "tpot_s=-1.0"),
     ({"attainment_target_frac": 0.0}, "attainment_target_frac"),
     ({"attainment_target_frac": 1.5}, "attainment_target_frac")],
)
def test_slo_validation(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        SLO(**kwargs)
