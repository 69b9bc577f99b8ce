"""KV-transfer links: processor sharing of bandwidth, set-up latency."""

from __future__ import annotations

import pytest

from sim.engine.links import Link

BW = 1e9
"""Link bandwidth, bytes/s."""
LAT = 1e-3
"""Set-up latency, seconds."""


def drain(link: Link) -> dict[object, float]:
    """Run the link to idle the way the simulator does; returns key -> finish time."""
    done = {}
    while (nd := link.next_done()) is not None:
        t, key = nd
        link.pop(key, t)
        done[key] = t
    return done


def test_single_transfer_takes_latency_plus_bytes_over_bandwidth():
    link = Link(0, BW, LAT)
    link.add("a", 5e6, now_s=2.0)
    t, key = link.next_done()
    assert key == "a" and t == pytest.approx(2.0 + LAT + 5e6 / BW)


def test_two_equal_transfers_started_together_take_twice_as_long():
    single = LAT + 5e6 / BW
    link = Link(0, BW, LAT)
    link.add("a", 5e6, 0.0)
    link.add("b", 5e6, 0.0)
    done = drain(link)
    assert done["a"] == pytest.approx(2 * single) and done["b"] == pytest.approx(2 * single)


def test_staggered_start_closed_form():
    b1, b2, t2 = 8e6, 6e6, 0.004
    link = Link(0, BW, LAT)
    link.add("a", b1, 0.0)
    link.add("b", b2, t2)
    done = drain(link)
    r1 = b1 + LAT * BW - BW * t2  # a's bytes left when b starts
    r2 = b2 + LAT * BW
    assert r1 < r2
    t_a = t2 + 2 * r1 / BW  # both at half bandwidth until a finishes
    t_b = t_a + (r2 - r1) / BW  # then b alone
    assert done["a"] == pytest.approx(t_a) and done["b"] == pytest.approx(t_b)


def test_a_late_small_transfer_overtakes():
    link = Link(0, BW, 0.0)
    link.add("big", 1e7, 0.0)
    link.add("small", 1e6, 0.001)
    done = drain(link)
    assert done["small"] == pytest.approx(0.001 + 2e6 / BW)
    assert done["big"] == pytest.approx(1e7 / BW + 1e6 / BW)  # total work conserved


def test_version_bumps_on_changes():
    link = Link(0, BW, LAT)
    v0 = link.version
    link.add("a", 1.0, 0.0)
    assert link.version == v0 + 1
    link.pop("a", link.next_done()[0])
    assert link.version == v0 + 2 and link.next_done() is None
