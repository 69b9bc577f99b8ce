"""A hand-over cycle found by the property tests (``test_fast_forward_is_exact``, dynaserve).

Three small unified instances under tandem splits: instances 1 and 2 fill their KV with
finished shares waiting for each other to pull them, and instance 0 waits for instance 1.
Nothing is left in flight, so no block is ever freed; the engine used to stop with requests
still awaiting transfer. When the event heap empties, an idle instance that holds KV for
another Follow and cannot pull its own hand-ins is now started, so it keeps one share
(``handover_cancelled``) and the cycle unwinds.
"""

from __future__ import annotations

import numpy as np
import pytest

from sim.engine import ClusterConfig, SimConfig, Simulator
from sim.instance import InstanceConfig, RequestStatus
from sim.metrics import records
from sim.routers import make_router
from sim.workload import Workload
from tests.sim.engine.conftest import GPU, MODEL, check_request_invariants

ARRIVAL_S = [
    0.06009184, 0.07514828, 0.08193113, 0.08715021, 0.11624234, 0.11659292, 0.12140966,
    0.12290551, 0.17329121, 0.20998725, 0.2179187, 0.24680529, 0.27407172, 0.28879815,
    0.33702451, 0.35979888, 0.5034263, 0.52192218, 0.55225513, 0.59237756, 0.63396211,
    0.66421553, 0.76029139, 0.760846, 0.79989078, 0.81559155, 0.84836636, 0.88463311,
    0.89355732, 0.89405103, 1.06057361, 1.18640439, 1.19611926, 1.20600071, 1.21707757,
    1.24004524,
]
PROMPT = [28, 117, 387, 227, 78, 239, 373, 96, 256, 315, 217, 153, 67, 368, 80, 88, 208, 203,
          226, 90, 271, 151, 317, 67, 139, 259, 100, 133, 168, 168, 385, 226, 89, 377, 114, 22]
OUTPUT = [79, 43, 49, 22, 6, 45, 94, 37, 47, 6, 41, 32, 27, 47, 19, 13, 57, 34, 91, 42, 4, 72,
          68, 64, 49, 28, 36, 46, 88, 76, 39, 25, 21, 44, 17, 49]


def run(fast_forward: bool):
    insts = [
        InstanceConfig(max_num_seqs=1, max_num_batched_tokens=32, enable_prefix_caching=False,
                       scheduler_reserve_full_isl=False, num_gpu_blocks_override=40),
        InstanceConfig(max_num_seqs=4, max_num_batched_tokens=112,
                       scheduler_reserve_full_isl=True, long_prefill_token_threshold=48,
                       num_gpu_blocks_override=46),
        InstanceConfig(tensor_parallel_size=2, max_num_seqs=4, max_num_batched_tokens=49,
                       scheduler_reserve_full_isl=False, num_gpu_blocks_override=64),
    ]
    w = Workload(np.array(ARRIVAL_S), np.array(PROMPT), np.array(OUTPUT))
    sim = Simulator(MODEL, GPU, ClusterConfig(num_nodes=4, gpus_per_node=8, instances=insts),
                    SimConfig(fast_forward=fast_forward, check_invariants=True), w,
                    make_router("dynaserve"))
    return sim.run()


@pytest.mark.parametrize("fast_forward", [True, False])
def test_hand_over_cycle_is_broken_and_every_request_completes(fast_forward):
    reqs = run(fast_forward)
    check_request_invariants(reqs, len(ARRIVAL_S))
    assert all(r.status == RequestStatus.COMPLETED for r in reqs)
    assert any(r.handover_cancelled for r in reqs)


def test_hand_over_cycle_fast_forward_equals_per_iteration():
    fast, slow = records(run(True)), records(run(False))
    for col in ("first_token_s", "lead_done_s", "transfer_start_s", "transfer_end_s",
                "finish_s"):
        np.testing.assert_allclose(fast[col].fillna(-1), slow[col].fillna(-1), rtol=1e-9)
