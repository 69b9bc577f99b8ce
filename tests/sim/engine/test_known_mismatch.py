"""A recorded case where fast-forward and one-event-per-iteration simulation disagreed.

Found by the property tests: the distserve router on two small unified instances with prefix
caching on and ``scheduler_reserve_full_isl`` off. A decode run was planned while a member's
next prompt hash was cached by another request (nothing to register); a KV hand-in pulled
during the run evicted that entry, and one-by-one iterations register the member's prompt
blocks at the end of the iteration in flight, while the run's end did not register at all, so
the next admission found a shorter prefix hit. A run's end now registers like its last
iteration (``Instance.finish_decode_run``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sim.catalog import get_gpu, get_model
from sim.engine import ClusterConfig, SimConfig, Simulator
from sim.instance import InstanceConfig
from sim.metrics import records
from sim.routers import make_router
from sim.workload import Workload

CASE = Path(__file__).parent / "fixtures" / "ff_mismatch_prefix_no_full_isl.json"


def test_fast_forward_equals_per_iteration_on_the_recorded_case():
    d = json.loads(CASE.read_text())
    w = Workload(np.array(d["arrival_s"]), np.array(d["prompt_tokens"]),
                 np.array(d["output_tokens"]), np.array(d["hash_offsets"]),
                 np.array(d["hash_ids"]), d["hash_block_tokens"])
    insts = [InstanceConfig(max_num_seqs=8, scheduler_reserve_full_isl=False, **i)
             for i in d["instances"]]
    out = []
    for ff in (True, False):
        sim = Simulator(get_model("llama31_8b"), get_gpu("a100_80gb_sxm"),
                        ClusterConfig(num_nodes=4, gpus_per_node=8, instances=insts),
                        SimConfig(fast_forward=ff), w, make_router("distserve"))
        out.append(records(sim.run()))
    for col in ("first_token_s", "finish_s"):
        np.testing.assert_allclose(out[0][col].fillna(-1), out[1][col].fillna(-1), rtol=1e-9)
