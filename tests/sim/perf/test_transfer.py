"""KV-cache transfer time: latency plus bytes over effective bandwidth."""

from __future__ import annotations

import numpy as np
import pytest

from sim.catalog import CatalogError, get_model
from sim.perf import LINKS, LinkSpec, get_link, kv_transfer_time_s
from sim.perf.transfer import kv_bytes
from tests.sim.perf.conftest import make_model


def test_llama2_7b_over_nvlink_by_hand():
    # 1000 tokens x 524288 B = 5.24288e8 B at 300e9 x 0.8 = 2.4e11 B/s, plus 10 us
    t = kv_transfer_time_s(get_model("Llama-2-7B"), 1000, get_link("nvlink_a100"))
    assert float(t) == pytest.approx(10e-6 + 5.24288e8 / 2.4e11, rel=1e-12)


def test_parallel_links_split_the_cache():
    link = LinkSpec("test", 1e9, 1e-3, 0.5)
    m = make_model()  # 256 B per token
    t = kv_transfer_time_s(m, np.array([0, 1000, 4000]), link, num_parallel_links=4)
    np.testing.assert_allclose(t, 1e-3 + np.array([0, 256e3, 1024e3]) / 4 / 5e8, rtol=1e-12)
    assert kv_bytes(m, 10) == 2560


def test_faster_links_are_faster():
    m = get_model("Llama-3.1-8B")
    order = ["ethernet_25g", "ethernet_100g", "infiniband_hdr_200g", "pcie_gen4",
             "infiniband_ndr_400g", "pcie_gen5", "nvlink_a100", "nvlink_h100"]
    times = [float(kv_transfer_time_s(m, 8000, get_link(n))) for n in order]
    assert times == sorted(times, reverse=True)
    assert set(order) == set(LINKS)


def test_unknown_link_lists_presets():
    with pytest.raises(CatalogError, match="nvlink_a100"):
        get_link("carrier_pigeon")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"bandwidth_bytes_per_s": 0.0}, "bandwidth_bytes_per_s"),
    ({"latency_s": -1e-6}, "latency_s"),
    ({"efficiency_frac": 0.0}, "efficiency_frac"),
    ({"efficiency_frac": 1.5}, "efficiency_frac"),
])
def test_bad_link_names_the_field(kwargs, field):
    base = {"name": "x", "bandwidth_bytes_per_s": 1e9, "latency_s": 0.0}
    with pytest.raises(CatalogError, match=field):
        LinkSpec(**{**base, **kwargs})


def test_parallel_links_must_be_positive():
    with pytest.raises(CatalogError, match="num_parallel_links"):
        kv_transfer_time_s(make_model(), 10, get_link("pcie_gen4"), num_parallel_links=0)
