"""ILP allocation next to DistServe's placement search: plans, solve times, simulation checks.

``python -m experiments.ilp_distserve [--data-root ../shared/data] [--quick]`` prints:

1. OPT-13B on 1 x 4 A100-80GB with DistServe's coefficients, TTFT 0.2 s / TPOT 0.1 s,
   ShareGPT lengths: the chosen plan (DistServe: prefill TP2 + decode TP1, 1.6-1.9 req/s/GPU),
   capacity and solve time per solver, and the simulated attainment at the planned rate.
2. OPT-66B and OPT-175B on 4 x 8 A100 with 25 Gbps cross-node links (low node affinity) next
   to DistServe's ``e2e_placements.csv``.
3. Solve time against cluster size (1..64 nodes x 8 GPUs).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from sim.catalog import get_gpu, get_model
from sim.metrics import SLO
from solvers.allocate import AllocateConfig, allocate
from solvers.capacity import CapacityConfig, LengthStats, build_candidates
from solvers.ilp import SOLVERS, Problem, solve
from solvers.verify import simulate_plan, simulated_goodput

A100 = "A100-80GB-SXM"


def _plan_str(plan) -> str:
    groups: dict[str, int] = {}
    for i in plan.instances:
        key = f"{i.role[0].upper()}-tp{i.tensor_parallel_size}pp{i.pipeline_parallel_size}"
        groups[key] = groups.get(key, 0) + 1
    return " + ".join(f"{n}x {k}" for k, n in sorted(groups.items()))


def opt13b(data: Path, quick: bool) -> None:
    """Section 1: DistServe's OPT-13B setting."""
    d = data / "distserve"
    print("\n## OPT-13B, 1 x 4 A100-80GB, DistServe coefficients, TTFT 0.2 s / TPOT 0.1 s")
    rows = []
    for modes in (("disaggregated",), ("disaggregated", "colocated")):
        for solver in SOLVERS:
            cfg = AllocateConfig(model="OPT-13B", num_nodes=1, gpus_per_node=4, ttft_s=0.2,
                                 tpot_s=0.1, modes=modes, perf_backend="distserve",
                                 distserve_coeffs_path=str(d / "latency_coeffs_a100_80g.csv"),
                                 lengths_path=str(d / "sharegpt_lengths.csv"), solver=solver)
            t0 = time.perf_counter()
            res = allocate(cfg)
            total = time.perf_counter() - t0
            p = res.plan
            rows.append({"modes": "+".join(modes), "solver": solver, "plan": _plan_str(p),
                         "pred_goodput_per_gpu": round(p.predicted_goodput_per_gpu, 3),
                         "gpus": p.num_gpus, "status": p.status, "gap": p.gap_frac,
                         "ilp_s": round(res.allocation.solve_s, 3),
                         "total_s": round(total, 3)})
            if solver == "CP_SAT":
                _verify(p, cfg, d / "sharegpt_lengths.csv", quick)
    print(pd.DataFrame(rows).to_string(index=False))
    print("DistServe: prefill TP2 + decode TP1 (3 GPUs), 1.6-1.9 req/s/GPU; its search "
          "simulates each candidate (~a minute).")


def _verify(plan, cfg: AllocateConfig, lengths: Path, quick: bool) -> None:
    cap = cfg.capacity_config()
    n = 600 if quick else 2000
    rate = plan.predicted_goodput_per_s
    att = [simulate_plan(plan, rate, cap, str(lengths), n, seed)["slo_attainment"]
           for seed in range(1 if quick else 3)]
    print(f"[{'+'.join(cfg.modes)}] {_plan_str(plan)}: simulated attainment at the planned "
          f"{rate:.3f} req/s ({n} requests, seeds {len(att)}): "
          f"{', '.join(f'{a:.3f}' for a in att)} (target {cfg.attainment_target_frac})")
    if not quick:
        good, _ = simulated_goodput(plan, cap, str(lengths), n)
        print(f"  simulated goodput {good:.3f} req/s = {good / plan.num_gpus:.3f} req/s/GPU "
              f"(predicted {plan.predicted_goodput_per_gpu:.3f})")


def big_models(data: Path) -> None:
    """Section 2: OPT-66B / OPT-175B on DistServe's 4 x 8 A100 testbed, 25 Gbps."""
    d = data / "distserve"
    print("\n## OPT-66B / OPT-175B, 4 x 8 A100-80GB, 25 Gbps cross-node (ethernet_25g)")
    placements = pd.read_csv(d / "e2e_placements.csv")
    rows = []
    setups = [("OPT-66B", 2.5, 0.15, "distserve"), ("OPT-175B", 4.0, 0.2, "analytic")]
    for model, ttft, tpot, backend in setups:
        for overlap in (True, False):
            cfg = AllocateConfig(model=model, num_nodes=4, gpus_per_node=8, ttft_s=ttft,
                                 tpot_s=tpot, modes=("disaggregated",), network="ethernet_25g",
                                 perf_backend=backend,
                                 distserve_coeffs_path=str(d / "latency_coeffs_a100_80g.csv")
                                 if backend == "distserve" else "",
                                 lengths_path=str(d / "sharegpt_lengths.csv"),
                                 pp_overlap=overlap, engine="vllm_v1")
            t0 = time.perf_counter()
            res = allocate(cfg)
            total = time.perf_counter() - t0
            ref = placements[(placements.model == model) & (placements.dataset == "ShareGPT")]
            r = ref.iloc[0]
            p = res.plan
            rows.append({
                "model": model, "backend": backend, "pp_overlap": overlap,
                "affinity": res.node_affinity,
                "ilp_plan": _plan_str(p) if p else res.message,
                "pred_goodput_per_gpu": round(p.predicted_goodput_per_gpu, 3) if p else 0,
                "gpus": p.num_gpus if p else 0,
                "distserve": f"P-tp{r.prefill_tp}pp{r.prefill_pp} + D-tp{r.decode_tp}"
                             f"pp{r.decode_pp} ({r.distserve_gpus_per_pair} GPUs/pair)",
                "ilp_s": round(res.allocation.solve_s, 3), "total_s": round(total, 2)})
            best = sorted(res.candidates, key=lambda c: -c.capacity_per_s / c.num_gpus)
            for role in ("prefill", "decode"):
                top = [c for c in best if c.role == role][:3]
                print(f"{model} overlap={overlap} best {role} per GPU: " + ", ".join(
                    f"{c.key} {c.capacity_per_s / c.num_gpus:.3f}" for c in top))
    print(pd.DataFrame(rows).to_string(index=False))


def scaling(quick: bool) -> None:
    """Section 3: solve time against cluster size (OPT-13B analytic candidates)."""
    print("\n## Solve time vs cluster size (OPT-13B, analytic, ShareGPT-like lengths that fit "
          "OPT's context, TTFT 0.25 s / TPOT 0.1 s, all modes)")
    rng = np.random.default_rng(0)
    prompt = np.clip(rng.lognormal(np.log(600), 0.6, 1000), 8, 1600).astype(np.int64)
    output = np.clip(rng.lognormal(np.log(120), 0.8, 1000), 2, 2048 - prompt).astype(np.int64)
    lengths = LengthStats(prompt, output)
    t0 = time.perf_counter()
    cands = build_candidates(get_model("OPT-13B"), get_gpu(A100), lengths, SLO(0.25, 0.1, 0.9),
                             CapacityConfig(), max_gpus=8)
    print(f"{len(cands)} candidates in {time.perf_counter() - t0:.2f} s")
    rows = []
    sizes = (1, 2, 4, 8, 16) if quick else (1, 2, 4, 8, 16, 32, 64)
    for nodes in sizes:
        for aff in ("high", "low"):
            row = {"nodes x 8": nodes, "affinity": aff}
            for solver in ("CP_SAT", "SCIP", "HIGHS"):
                if solver == "HIGHS" and nodes > 16:
                    row[solver] = "-"
                    continue
                a = solve(Problem(tuple(cands), nodes, 8, aff), solver, time_limit_s=60)
                row[solver] = f"{a.solve_s:.2f} s {a.status[:3]} gap {a.gap_frac:.0e}"
                row["goodput/GPU"] = round(a.goodput_per_gpu, 3)
            rows.append(row)
    print(pd.DataFrame(rows).to_string(index=False))


def main() -> None:
    """Run every section."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-root", default="../shared/data", type=Path)
    ap.add_argument("--quick", action="store_true", help="fewer simulations and sizes")
    ap.add_argument("--sections", nargs="+", default=["opt13b", "big", "scaling"])
    args = ap.parse_args()
    if "opt13b" in args.sections:
        opt13b(args.data_root, args.quick)
    if "big" in args.sections:
        big_models(args.data_root)
    if "scaling" in args.sections:
        scaling(args.quick)


if __name__ == "__main__":
    main()
