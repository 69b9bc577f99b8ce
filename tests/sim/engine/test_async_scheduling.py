"""Async scheduling (``InstanceConfig.async_scheduling``, vLLM's ``--async-scheduling``).

The plan of the iteration that starts when iteration N ends was made while N ran: it admits
only requests (and KV hand-ins) that were ready when N started. A busy instance therefore
first schedules a request arriving during N into N+2; an idle one schedules it at once.
Unset, the option follows vLLM's default (on from 0.14 unless pipeline parallel).
"""

from __future__ import annotations

import numpy as np
import pytest

from sim.instance import InstanceConfig
from sim.metrics import records
from sim.routing import Decision
from tests.sim.engine.conftest import (
    TIMESTAMPS,
    ScriptedRouter,
    make_instance_cfg,
    make_sim,
    make_workload,
    record_batches,
)
from tests.sim.engine.test_simulator import backend, prefill_s

REL = 1e-9
PROMPT_A, OUTPUT_A, PROMPT_B = 100, 50, 64


def decode_ends(be, n: int) -> list[float]:
    """End times of iterations 0..n of request A alone (prefill at 0, then decodes)."""
    ends = [prefill_s(be, PROMPT_A)]
    for i in range(1, n + 1):
        ends.append(ends[-1] + be.iteration_time_s(0, 0, 0, 0, 0, 1, PROMPT_A + i))
    return ends


def mixed_s(be, a_ctx: int) -> float:
    """B's whole prompt prefilled next to A's decode step over ``a_ctx`` tokens."""
    return be.iteration_time_s(PROMPT_B, 1, 0, 0, PROMPT_B * PROMPT_B, 1, a_ctx)


@pytest.mark.parametrize("fast_forward", [True, False])
def test_arrival_on_a_busy_instance_is_scheduled_one_iteration_later(fast_forward):
    be = backend()
    ends = decode_ends(be, 10)
    t_b = 0.5 * (ends[4] + ends[5])  # B arrives during A's decode iteration 5
    w = make_workload([0.0, t_b], [PROMPT_A, PROMPT_B], [OUTPUT_A, 3])
    out = {}
    for flag in (False, True):
        sim = make_sim(w, make_instance_cfg(async_scheduling=flag), fast_forward=fast_forward)
        out[flag] = sim.run()[1]
    sync, asyn = out[False], out[True]
    # without: planned when iteration 5 ends; with: iteration 6 was planned during 5
    assert sync.first_scheduled_s == pytest.approx(ends[5], rel=REL)
    assert asyn.first_scheduled_s == pytest.approx(ends[6], rel=REL)
    assert sync.first_token_s == pytest.approx(ends[5] + mixed_s(be, PROMPT_A + 6), rel=REL)
    assert asyn.first_token_s == pytest.approx(ends[6] + mixed_s(be, PROMPT_A + 7), rel=REL)
    assert asyn.first_token_s > sync.first_token_s


@pytest.mark.parametrize("fast_forward", [True, False])
def test_idle_instance_admits_at_once(fast_forward):
    w = make_workload([3.5, 9.0], [200, 40], [5, 4])  # the second arrives long after the first
    for flag in (False, True):
        sim = make_sim(w, make_instance_cfg(async_scheduling=flag), fast_forward=fast_forward)
        a, b = sim.run()
        assert a.first_scheduled_s == 3.5 and b.first_scheduled_s == 9.0
        assert a.first_token_s - 3.5 == pytest.approx(prefill_s(backend(), 200), rel=REL)


@pytest.mark.parametrize("fast_forward", [True, False])
def test_an_empty_next_iteration_means_idle(fast_forward):
    """A's only iteration (prefill, 1 output) ends with nothing else running: B, which arrived
    during it, is scheduled when it ends, with or without async scheduling."""
    be = backend()
    t_b = 0.5 * prefill_s(be, PROMPT_A)
    w = make_workload([0.0, t_b], [PROMPT_A, PROMPT_B], [1, 2])
    for flag in (False, True):
        sim = make_sim(w, make_instance_cfg(async_scheduling=flag), fast_forward=fast_forward)
        _, b = sim.run()
        assert b.first_scheduled_s == pytest.approx(prefill_s(be, PROMPT_A), rel=REL)


def test_arrival_at_the_start_of_the_iteration_counts_as_ready():
    """Requests arriving together on an idle instance are all in its first iteration."""
    w = make_workload([1.0, 1.0, 1.0], [30, 40, 50], [4, 4, 4])
    sim = make_sim(w, make_instance_cfg(async_scheduling=True))
    assert [r.first_scheduled_s for r in sim.run()] == [1.0, 1.0, 1.0]


def hand_in_batches(flag: bool, fast_forward: bool) -> tuple[list, list]:
    """A decodes on instance 1; B is prefilled on instance 0 and handed in to 1."""
    w = make_workload([0.0, 0.05], [PROMPT_A, 300], [400, 6])
    dec = make_instance_cfg(async_scheduling=flag)
    sim = make_sim(w, make_instance_cfg(), dec, fast_forward=fast_forward,
                   router=ScriptedRouter([Decision(1, 1, 400), Decision(0, 1, 1)]))
    logs = record_batches(sim)
    return sim.run(), logs[1]


def test_hand_in_joins_one_iteration_later():
    (_, b_sync), log_sync = hand_in_batches(False, False)
    (_, b_async), log_async = hand_in_batches(True, False)
    assert b_sync.transfer_end_s == b_async.transfer_end_s  # the Lead is not async
    alone = [next(i for i, (seqs, _) in enumerate(log) if seqs == 2)
             for log in (log_sync, log_async)]
    assert alone[1] == alone[0] + 1  # one more iteration of A alone before B joins
    assert b_async.finish_s > b_sync.finish_s


@pytest.mark.parametrize("flag", [False, True])
def test_hand_in_fast_forward_is_exact(flag):
    (fast, _), (slow, _) = (hand_in_batches(flag, True), hand_in_batches(flag, False))
    for a, b in zip(fast, slow, strict=True):
        for col in TIMESTAMPS:
            assert getattr(a, col) == pytest.approx(getattr(b, col), rel=REL)


def test_fast_forward_is_exact_with_arrivals_during_runs():
    """Many arrivals cutting decode runs on a KV-tight async instance: same records."""
    rng = np.random.default_rng(3)
    n = 80
    w = make_workload(np.cumsum(rng.exponential(0.05, n)), rng.integers(16, 300, n),
                      rng.integers(1, 150, n))
    out = []
    for ff in (True, False):
        sim = make_sim(w, make_instance_cfg(async_scheduling=True, num_gpu_blocks_override=80),
                       fast_forward=ff)
        out.append((records(sim.run()), sim))
    (fast, sim_fast), (slow, sim_slow) = out
    assert (fast.num_preemptions == slow.num_preemptions).all()
    assert fast.num_preemptions.sum() > 0
    for col in TIMESTAMPS:
        np.testing.assert_allclose(fast[col].fillna(-1), slow[col].fillna(-1), rtol=REL, atol=0)
    assert sim_fast.num_iterations == sim_slow.num_iterations
    assert sim_fast.num_runs > 0


def test_option_is_validated():
    with pytest.raises(ValueError, match="async_scheduling"):
        InstanceConfig(async_scheduling="yes")
    with pytest.raises(ValueError, match="async_scheduling"):
        InstanceConfig(async_scheduling=1)


def test_default_is_vllms_on_unless_pipeline_parallel():
    """vLLM >= 0.14 (``VllmConfig.__post_init__``): async scheduling is on unless PP > 1."""
    assert InstanceConfig().async_scheduling is True
    assert InstanceConfig(async_scheduling=None).async_scheduling is True
    assert InstanceConfig(tensor_parallel_size=4).async_scheduling is True
    assert InstanceConfig(pipeline_parallel_size=2).async_scheduling is False
    # an explicit value wins either way
    assert InstanceConfig(async_scheduling=False).async_scheduling is False
    assert InstanceConfig(pipeline_parallel_size=2, async_scheduling=True).async_scheduling


def test_hydra_cluster_override_reaches_the_instance():
    """``cluster.instances.N.async_scheduling`` composes through the typed schema."""
    from hydra.errors import ConfigCompositionException

    from tests.hydra_entry import compose, import_entry

    import_entry("simulate.py")
    cfg = compose("simulate", "cluster=single", "cluster.instances.0.async_scheduling=false")
    assert cfg.cluster.instances[0].async_scheduling is False
    assert compose("simulate", "cluster=single").cluster.instances[0].async_scheduling is True
    cfg = compose("simulate", "cluster=single", "cluster.instances.0.pipeline_parallel_size=2")
    assert cfg.cluster.instances[0].async_scheduling is False
    cfg = compose("simulate", "cluster=single", "cluster.instances.0.pipeline_parallel_size=2",
                  "cluster.instances.0.async_scheduling=true")
    assert cfg.cluster.instances[0].async_scheduling is True
    cfg = compose("simulate", "cluster=single", "cluster.instances.0.async_scheduling=null")
    assert cfg.cluster.instances[0].async_scheduling is True
    with pytest.raises(ConfigCompositionException):
        compose("simulate", "cluster=single", "cluster.instances.0.async_scheduling=maybe")
