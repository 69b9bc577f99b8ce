"""The compiled hot path (``python -m sim.accelerate``) gives the pure-Python engine's records.

The equivalence test runs only when the compiled build is present (CI builds it in a second
stage); it replays a set of clusters in a subprocess that imports a pure-Python copy of ``sim``
and in one that imports the checkout (compiled), and compares hashes of every record.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sim import accelerate

SCRIPT = r'''
import hashlib, json, sys
import numpy as np
import pandas as pd
import sim.engine.simulator as engine
from sim.catalog import get_gpu, get_model
from sim.engine import ClusterConfig, SimConfig, Simulator
from sim.instance import InstanceConfig
from sim.metrics import records
from sim.routers import make_router
from sim.workload import Workload

MODEL, GPU = get_model("Llama-3.1-8B"), get_gpu("A100-80GB-SXM")
ROUTERS = ["round_robin", "join_shortest_queue", "least_outstanding_tokens", "distserve",
           "dynaserve", "random"]

def case(seed):
    rng = np.random.default_rng(seed)
    insts = []
    for _ in range(int(rng.integers(1, 5))):
        chunked = bool(rng.random() < 0.7)
        budget = int(rng.integers(32, 513))
        insts.append(InstanceConfig(
            role=str(rng.choice(["unified", "prefill", "decode"])),
            tensor_parallel_size=int(rng.integers(1, 3)),
            pipeline_parallel_size=int(rng.choice([1, 1, 2])),
            scheduler_reserve_full_isl=bool(rng.random() < 0.5),
            num_gpu_blocks_override=int(rng.integers(40, 200)),
            max_num_batched_tokens=budget, max_num_seqs=int(rng.integers(1, 17)),
            enable_chunked_prefill=chunked, enable_prefix_caching=bool(rng.random() < 0.7),
            long_prefill_token_threshold=int(rng.choice([0, 0, 48])),
            max_model_len=0 if chunked else budget,
            async_scheduling=bool(rng.random() < 0.5)))
    n = int(rng.integers(5, 80))
    arr = np.sort(rng.exponential(0.05, n).cumsum())
    prompt, out = rng.integers(1, 300, n), rng.integers(1, 80, n)
    kw = {}
    if rng.random() < 0.6:  # prefix groups as block hashes
        groups = rng.integers(0, 3, n)
        offs, ids = [0], []
        for i in range(n):
            nb = int(prompt[i] // 16)
            shared = int(rng.integers(0, nb + 1))
            ids += [1000 * int(groups[i]) + b for b in range(shared)]
            ids += [10**6 + 1000 * i + b for b in range(nb - shared)]
            offs.append(len(ids))
        kw = dict(hash_offsets=np.array(offs), hash_ids=np.array(ids, dtype=np.int64),
                  hash_block_tokens=16)
    wl = Workload(arrival_s=arr, prompt_tokens=prompt, output_tokens=out, **kw)
    router = str(rng.choice(ROUTERS))
    sim = Simulator(MODEL, GPU, ClusterConfig(num_nodes=2, instances=insts),
                    SimConfig(fast_forward=bool(rng.random() < 0.8), record_itl=True),
                    wl, make_router(router, **({"seed": seed} if router == "random" else {})))
    sim.run()
    df = records(sim.entered_requests())
    v, w = sim.itl_gaps()
    h = hashlib.sha256(pd.util.hash_pandas_object(df, index=True).values.tobytes())
    h.update(np.asarray(v, np.float64).tobytes() + np.asarray(w, np.int64).tobytes())
    return [h.hexdigest()[:16], sim.num_events, sim.num_iterations]

out = {"compiled": engine.__file__.endswith(".so")}
for seed in range(int(sys.argv[1])):
    try:
        out[seed] = case(seed)
    except Exception as exc:  # the same error in both builds is a match too
        out[seed] = ["error", type(exc).__name__, str(exc)[:200]]
print(json.dumps(out))
'''


def _run(script: Path, path: Path, n: int) -> dict:
    proc = subprocess.run([sys.executable, str(script), str(n)], cwd=path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(path), "PATH": "/usr/bin:/bin"},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.skipif(not accelerate.is_compiled(),
                    reason="the compiled build is absent (python -m sim.accelerate builds it)")
def test_compiled_build_gives_the_pure_python_records(tmp_path):
    pure = tmp_path / "pure"
    shutil.copytree(accelerate.ROOT / "sim", pure / "sim",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copytree(accelerate.ROOT / "conf", pure / "conf")
    script = tmp_path / "cases.py"
    script.write_text(SCRIPT)
    n = 120
    compiled, python = _run(script, accelerate.ROOT, n), _run(script, pure, n)
    assert compiled.pop("compiled") is True and python.pop("compiled") is False
    assert sum(v[0] != "error" for v in python.values()) > n * 0.9
    assert compiled == python


def test_status_names_every_hot_module_and_its_build():
    states = accelerate.status()
    assert set(states) == set(accelerate.HOT_MODULES)
    assert set(states.values()) <= {"compiled", "stale", "python"}
    assert (states["sim/engine/simulator.py"] == "compiled") == accelerate.is_compiled()


def test_build_without_mypyc_names_the_fix(monkeypatch):
    real = accelerate.importlib.util.find_spec
    monkeypatch.setattr(accelerate.importlib.util, "find_spec",
                        lambda name, *a: None if name == "mypyc" else real(name, *a))
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[fast\]'"):
        accelerate.build()
