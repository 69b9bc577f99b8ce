r"""ILP allocation next to DistServe's placement search: plans, solve times, simulation checks.

``python -m experiments.ilp_distserve [--data-root ../shared/data] [--quick]`` prints:

1. OPT-13B on 1 x 4 A100-80GB with DistServe's coefficients, TTFT 0.2 s / TPOT 0.1 s,
   ShareGPT lengths: the chosen plan (DistServe: prefill TP2 + decode TP1, 1.6-1.9 req/s/GPU),
   capacity and solve time per solver, and the simulated attainment at the planned rate.
2. OPT-66B and OPT-175B on 4 x 8 A100 with 25 Gbps cross-node links (low node affinity) next
   to DistServe's ``e2e_placements.csv``.
3. Solve time against cluster size (1..64 nodes x 8 GPUs), for instances that fit one node
   (OPT-13B) and that span nodes (OPT-66B), per solver and formulation, e.g.::

       python -m experiments.ilp_distserve --sections scaling --scale-sets opt13b opt66b \
           opt66b-ds --scale-nodes 1 8 16 64 --scale-solvers CP_SAT SCIP \
           --formulations nodes patterns
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
from solvers.ilp import FORMULATIONS, SOLVERS, Problem, solve
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


def _opt_lengths() -> LengthStats:
    """ShareGPT-like lengths that fit OPT's 2048-token context (1000 rows, seed 0)."""
    rng = np.random.default_rng(0)
    prompt = np.clip(rng.lognormal(np.log(600), 0.6, 1000), 8, 1600).astype(np.int64)
    output = np.clip(rng.lognormal(np.log(120), 0.8, 1000), 2, 2048 - prompt).astype(np.int64)
    return LengthStats(prompt, output)


SCALE_SETS = ("opt13b", "opt66b", "opt66b-ds", "opt66b-ds-overlap")
"""Candidate sets of the scaling section: OPT-13B (all modes, every instance fits one node)
and OPT-66B disaggregated (instances span nodes): analytic, or DistServe's coefficients
without / with pipeline micro-batch overlap."""


def _scale_candidates(name: str, data: Path) -> tuple[str, list]:
    gpu, lengths = get_gpu(A100), _opt_lengths()
    if name == "opt13b":
        cands = build_candidates(get_model("OPT-13B"), gpu, lengths, SLO(0.25, 0.1, 0.9),
                                 CapacityConfig(), max_gpus=8)
        return "OPT-13B analytic, TTFT 0.25 s / TPOT 0.1 s, all modes, <= 8 GPUs", cands
    if name == "opt66b":
        cands = build_candidates(get_model("OPT-66B"), gpu, lengths, SLO(2.5, 0.15, 0.9),
                                 CapacityConfig(), ("prefill", "decode"), max_gpus=32)
        return "OPT-66B analytic, TTFT 2.5 s / TPOT 0.15 s, disaggregated, <= 32 GPUs", cands
    d = data / "distserve"
    overlap = name.endswith("overlap")
    cfg = AllocateConfig(model="OPT-66B", num_nodes=8, gpus_per_node=8, ttft_s=2.5,
                         tpot_s=0.15, modes=("disaggregated",), network="ethernet_25g",
                         perf_backend="distserve",
                         distserve_coeffs_path=str(d / "latency_coeffs_a100_80g.csv"),
                         lengths_path=str(d / "sharegpt_lengths.csv"), pp_overlap=overlap,
                         engine="vllm_v1")
    cands = build_candidates(get_model("OPT-66B"), gpu,
                             LengthStats.from_table(cfg.lengths_path), cfg.slo(),
                             cfg.capacity_config(), cfg.roles(), max_gpus=64)
    return (f"OPT-66B DistServe coefficients, ShareGPT, TTFT 2.5 s / TPOT 0.15 s, "
            f"disaggregated, pp_overlap={overlap}, <= 64 GPUs"), cands


def scaling(quick: bool, data: Path = Path("../shared/data"), sets=("opt13b",),
            sizes=None, solvers=("CP_SAT", "SCIP", "HIGHS"), formulations=("auto",),
            time_limit_s: float = 60.0) -> pd.DataFrame:
    """Section 3: solve time against cluster size, per candidate set, solver, formulation.

    ``formulations`` ``nodes`` (one variable per item and node, the earlier model) next to
    ``patterns`` (node counts per pattern) gives before / after in one run.
    """
    sizes = sizes or ((1, 2, 4, 8, 16) if quick else (1, 2, 4, 8, 16, 32, 64))
    rows = []
    for name in sets:
        t0 = time.perf_counter()
        title, cands = _scale_candidates(name, data)
        print(f"\n## Solve time vs cluster size: {title}; {len(cands)} candidates "
              f"({time.perf_counter() - t0:.2f} s)", flush=True)
        for nodes in sizes:
            usable = tuple(c for c in cands if c.num_gpus <= nodes * 8)
            for aff in ("high", "low"):
                for solver in solvers:
                    if solver == "HIGHS" and nodes > 16:
                        continue
                    for form in formulations:
                        a = solve(Problem(usable, nodes, 8, aff), solver,
                                  time_limit_s=time_limit_s, formulation=form)
                        row = {"set": name, "nodes x 8": nodes, "affinity": aff,
                               "solver": solver, "formulation": a.formulation or form,
                               "solve_s": round(a.solve_s, 3), "status": a.status,
                               "gap": f"{a.gap_frac:.1e}", "programs": a.num_solves,
                               "goodput/GPU": round(a.goodput_per_gpu, 5),
                               "gpus": a.num_gpus}
                        print("  " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
                        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        print(table.to_string(index=False))
    return table


def main() -> None:
    """Run every section."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-root", default="../shared/data", type=Path)
    ap.add_argument("--quick", action="store_true", help="fewer simulations and sizes")
    ap.add_argument("--sections", nargs="+", default=["opt13b", "big", "scaling"])
    ap.add_argument("--scale-sets", nargs="+", default=["opt13b"], choices=SCALE_SETS,
                    help="scaling: candidate sets (opt66b* have node-spanning instances)")
    ap.add_argument("--scale-nodes", nargs="+", type=int, default=None,
                    help="scaling: node counts (8 GPUs each)")
    ap.add_argument("--scale-solvers", nargs="+", default=["CP_SAT", "SCIP", "HIGHS"],
                    choices=SOLVERS)
    ap.add_argument("--formulations", nargs="+", default=["auto"], choices=FORMULATIONS,
                    help="scaling: integer programs to time (nodes = per-node variables, "
                         "patterns = node counts per pattern)")
    ap.add_argument("--time-limit", type=float, default=60.0, help="scaling: seconds per solve")
    ap.add_argument("--csv", type=Path, default=None, help="scaling: write the table here")
    args = ap.parse_args()
    if "opt13b" in args.sections:
        opt13b(args.data_root, args.quick)
    if "big" in args.sections:
        big_models(args.data_root)
    if "scaling" in args.sections:
        table = scaling(args.quick, args.data_root, args.scale_sets, args.scale_nodes,
                        args.scale_solvers, args.formulations, args.time_limit)
        if args.csv:
            table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
