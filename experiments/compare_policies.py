"""The comparison table of a paper: heuristics, a trained policy and the ILP plan vs the bound.

``python -m experiments.compare_policies [--workload bursty mmpp] [--policy policy.onnx]
[--quick] [--out results/compare]`` writes, per workload and policy:

* goodput per GPU (highest rate per GPU with >= target attainment on a rate grid, 95% CI
  over seeds) and SLO attainment at the reference rate -- :mod:`policies.evaluate`;
* on short traces (``--bound-requests`` requests at ``--bound-rate-scale`` x the reference
  rate): the requests each
  policy serves within both SLOs, the offline bound (:mod:`solvers.offline_bound`, clairvoyant,
  an upper bound for any online policy on that trace) and the gap ``1 - met / bound``.

Policies: every heuristic of :data:`policies.heuristics.HEURISTICS`; the ONNX policy given with
``--policy`` (through the shared encoder, as the live router runs it); and ``ilp_plan``, the
cluster :mod:`solvers.allocate` plans on the same GPUs for the workload's lengths and the SLOs,
routed as the plan says (its goodput per GPU divides by the GPUs the plan uses, and its gap is
to the bound of its own cluster). Outputs in ``--out``: ``compare.md``, ``compare.csv``,
``compare.tex``, ``compare_<workload>.png`` and the raw ``runs.csv``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from policies.evaluate import (
    EvalConfig,
    Scenario,
    evaluate,
    goodput_table,
    run_policy,
    summary_table,
)
from policies.heuristics import HEURISTICS, make_heuristic
from sim.catalog import get_gpu, get_model
from sim.engine import ClusterConfig, SimConfig
from sim.metrics import SLO
from sim.workload import Workload, WorkloadConfig, build_workload
from solvers.offline_bound import BoundConfig, offline_bound

CONF = Path(__file__).resolve().parents[1] / "conf"
ILP = "ilp_plan"


@dataclass
class CompareConfig:
    """What to compare (the command-line flags)."""

    model: str = "Llama-3.1-8B"
    """Model (catalog name)."""
    gpu: str = "A100-80GB-SXM"
    """GPU type (catalog name)."""
    cluster: str = "tandem8"
    """``conf/cluster`` name or a cluster YAML path."""
    workloads: list[str] = field(default_factory=lambda: ["bursty", "mmpp"])
    """``conf/workload`` names or YAML paths (rates per instance, multiplied by the instances)."""
    slo: str = "chat_long"
    """``conf/slo`` name or YAML path."""
    policy: str = ""
    """Exported ``policy.onnx`` of a trained policy ('' = none)."""
    seeds: list[int] = field(default_factory=lambda: [101, 102, 103])
    """Workload seeds of the goodput evaluation."""
    num_requests: int = 600
    """Requests per evaluation workload."""
    rate_scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0, 3.0, 4.0,
                                                              6.0])
    """Rate multipliers of the goodput grid (must include 1.0)."""
    bound_requests: int = 150
    """Requests of each short trace the offline bound is computed on."""
    bound_seeds: list[int] = field(default_factory=lambda: [201, 202])
    """Seeds of the short traces."""
    bound_rate_scale: float = 2.0
    """Rate multiplier of the short traces (where policies start to differ)."""
    bound_time_limit_s: float = 60.0
    """Solver limit of each bound (the proven bound is used on expiry)."""
    ilp: bool = True
    """Include the ILP allocation's plan."""
    ilp_time_limit_s: float = 30.0
    """Solver limit of the allocation program."""
    out: str = "results/compare"
    """Output folder."""

    @classmethod
    def quick(cls, **kw) -> CompareConfig:
        """A run under a minute on 2 cores (smoke test; numbers are indicative only)."""
        base = dict(workloads=["bursty"], seeds=[101, 102], num_requests=100,
                    rate_scales=[1.0, 2.0, 4.0], bound_requests=60, bound_seeds=[201],
                    bound_time_limit_s=10.0, ilp_time_limit_s=10.0)
        base.update(kw)
        return cls(**base)


def _yaml(group: str, name: str, schema):
    path = Path(name) if name.endswith((".yaml", ".yml")) else CONF / group / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in (CONF / group).glob("*.yaml")))
        raise ValueError(f"{group} {name!r} not found; use a path or one of: {known}")
    cfg = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(path))
    return OmegaConf.to_object(cfg)


def _workload_cfg(name: str, num_instances: int) -> WorkloadConfig:
    w = _yaml("workload", name, WorkloadConfig)
    if w.kind == "synthetic":  # confs give per-instance rates (as train.py uses them)
        arrival = replace(w.arrival, rate_per_s=w.arrival.rate_per_s * num_instances,
                          rate_off_per_s=w.arrival.rate_off_per_s * num_instances)
        return replace(w, arrival=arrival)
    return replace(w, rate_scale=w.rate_scale * num_instances)


def _lengths_csv(wcfg: WorkloadConfig, folder: Path) -> str:
    wl = build_workload(replace(wcfg, num_requests=1000) if wcfg.kind == "synthetic" else wcfg,
                        np.random.default_rng(0))
    path = folder / f"lengths_{wcfg.name}.csv"
    pd.DataFrame({"prompt_tokens": wl.prompt_tokens, "output_tokens": wl.output_tokens}) \
        .to_csv(path, index=False)
    return str(path)


def ilp_scenario(cfg: CompareConfig, scn: Scenario, wcfg: WorkloadConfig, folder: Path):
    """``(Scenario of the planned cluster, router factory, plan)`` or None if no plan."""
    from solvers.allocate import AllocateConfig, allocate
    from solvers.verify import PlanRouter

    c = scn.cluster
    alloc = AllocateConfig(model=cfg.model, gpu=cfg.gpu, num_nodes=c.num_nodes,
                           gpus_per_node=c.gpus_per_node, network=c.network,
                           ttft_s=scn.slo.ttft_s, tpot_s=scn.slo.tpot_s,
                           attainment_target_frac=scn.slo.attainment_target_frac,
                           modes=("disaggregated", "colocated"),
                           lengths_path=_lengths_csv(wcfg, folder),
                           perf_backend="analytic", engine=scn.sim.engine,
                           max_gpus_per_instance=c.gpus_per_node,
                           time_limit_s=cfg.ilp_time_limit_s)
    res = allocate(alloc)
    if res.plan is None:
        return None
    plan = res.plan

    def factory():
        return PlanRouter(plan) if plan.router == "plan" else make_heuristic(plan.router)

    return replace(scn, cluster=plan.cluster_config()), factory, plan


def _short_trace(wcfg: WorkloadConfig, n: int, seed: int) -> Workload:
    from policies.evaluate import _with_requests

    return build_workload(_with_requests(wcfg, n), np.random.default_rng(seed))


def bound_rows(cfg: CompareConfig, wname: str, wcfg: WorkloadConfig,
               setups: list[tuple[Scenario, dict]]) -> list[dict]:
    """Met counts of every policy and the bound of its cluster on each short trace."""
    rows = []
    for seed in cfg.bound_seeds:
        wl = _short_trace(wcfg, cfg.bound_requests, seed).scale_rate(cfg.bound_rate_scale)
        for scn, policies in setups:
            m = len(scn.cluster.expanded())
            relax = cfg.bound_requests * m * m > 20_000
            b = offline_bound(scn.model, scn.hardware, scn.cluster, scn.sim, wl, scn.slo,
                              BoundConfig(relax=relax, time_limit_s=cfg.bound_time_limit_s))
            for pname, factory in policies.items():
                s = run_policy(scn, wl, factory(), seed)
                met = int(round(s["slo_attainment"] * s["num_requests"]))
                rows.append({"workload": wname, "policy": pname, "bound_seed": seed,
                             "met": met, "bound_met": b.upper_bound_met,
                             "bound_status": b.status, "bound_s": b.solve_s})
    return rows


def run(cfg: CompareConfig) -> pd.DataFrame:
    """Evaluate everything and write the outputs; returns the comparison table."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cluster = _yaml("cluster", cfg.cluster, ClusterConfig)
    scn = Scenario(get_model(cfg.model), get_gpu(cfg.gpu), cluster, SimConfig(),
                   _yaml("slo", cfg.slo, SLO))
    n_inst = len(cluster.expanded())
    workloads = {}
    for name in cfg.workloads:
        w = _workload_cfg(name, n_inst)
        workloads[w.name if w.name not in workloads else name] = w
    policies = {h: (lambda h=h: make_heuristic(h, seed=0)) for h in HEURISTICS}
    learned = None
    if cfg.policy:
        from policies.run import _onnx_policy_factory

        learned = "learned"
        policies = {learned: _onnx_policy_factory(Path(cfg.policy)), **policies}
    ecfg = EvalConfig(seeds=cfg.seeds, num_requests=cfg.num_requests,
                      rate_scales=cfg.rate_scales, heuristics=list(HEURISTICS))
    t0 = time.perf_counter()
    runs = evaluate(scn, workloads, policies, ecfg)
    good = goodput_table(runs, scn.slo.attainment_target_frac, cluster.num_gpus_used())
    brows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for wname, wcfg in workloads.items():
            setups = [(scn, policies)]
            ilp = ilp_scenario(cfg, scn, wcfg, Path(tmp)) if cfg.ilp else None
            if ilp is not None:
                iscn, factory, plan = ilp
                r = evaluate(iscn, {wname: wcfg}, {ILP: factory}, ecfg)
                runs = pd.concat([runs, r], ignore_index=True)
                good = pd.concat([good, goodput_table(r, scn.slo.attainment_target_frac,
                                                      iscn.cluster.num_gpus_used())])
                setups.append((iscn, {ILP: factory}))
                notes.append(f"{wname}: ILP plan {_plan_str(plan)} ({plan.num_gpus} GPUs, "
                             f"router {plan.router}, predicted {plan.predicted_goodput_per_gpu:.3f}"
                             f" req/s/GPU, {plan.status}, {plan.solve_s:.2f} s)")
            elif cfg.ilp:
                notes.append(f"{wname}: the ILP found no plan meeting the SLOs on this cluster")
            brows += bound_rows(cfg, wname, wcfg, setups)
    table = summary_table(runs, good, learned, list(HEURISTICS))
    bounds = pd.DataFrame(brows).groupby(["workload", "policy"], as_index=False).agg(
        short_met=("met", "sum"), bound_met=("bound_met", "sum"),
        bound_status=("bound_status", lambda s: "/".join(sorted(set(s)))),
        bound_s=("bound_s", "sum"))
    table = table.merge(bounds, on=["workload", "policy"], how="left")
    total = cfg.bound_requests * len(cfg.bound_seeds)
    table["short_attainment"] = table.short_met / total
    table["bound_attainment"] = table.bound_met / total
    table["gap_to_bound"] = 1 - table.short_met / table.bound_met.where(table.bound_met > 0)
    table["wall_s"] = time.perf_counter() - t0
    write_outputs(table, runs, out, cfg, notes)
    return table


def _plan_str(plan) -> str:
    groups: dict[str, int] = {}
    for i in plan.instances:
        key = f"{i.role}-tp{i.tensor_parallel_size}pp{i.pipeline_parallel_size}"
        groups[key] = groups.get(key, 0) + 1
    return " + ".join(f"{n}x {k}" for k, n in sorted(groups.items()))


COLUMNS = {
    "policy": "policy",
    "goodput_per_gpu": "goodput/GPU (req/s)",
    "goodput_per_gpu_ci_lo": "CI lo",
    "goodput_per_gpu_ci_hi": "CI hi",
    "attainment_at_ref": "attainment @ref",
    "short_attainment": "attainment (short traces)",
    "bound_attainment": "offline bound",
    "gap_to_bound": "gap to bound",
    "censored_seeds": "censored seeds",
}
"""Columns of the paper table and their headers."""


def _paper(table: pd.DataFrame, w: str) -> pd.DataFrame:
    return table[table.workload == w][list(COLUMNS)].rename(columns=COLUMNS)


def write_outputs(table: pd.DataFrame, runs: pd.DataFrame, out: Path, cfg: CompareConfig,
                  notes: list[str]) -> None:
    """compare.csv, runs.csv, compare.md, compare.tex and one plot per workload."""
    table.to_csv(out / "compare.csv", index=False)
    runs.to_csv(out / "runs.csv", index=False)
    md = ["# Policy comparison", "",
          f"Model {cfg.model} on {cfg.gpu}, cluster `{cfg.cluster}`, SLO `{cfg.slo}`; goodput "
          f"over seeds {cfg.seeds} ({cfg.num_requests} requests, rate multipliers "
          f"{cfg.rate_scales}); offline bound on {len(cfg.bound_seeds)} short traces of "
          f"{cfg.bound_requests} requests at {cfg.bound_rate_scale} x the reference rate (an "
          "upper bound for any online policy; gap = 1 - met / bound). Censored seeds: the rate "
          "grid did not bracket the goodput (0 below the grid, its top above it).", ""]
    md += [f"- {n}" for n in notes]
    tex = []
    for w in table.workload.unique():
        paper = _paper(table, w)
        md += ["", f"## {w}", "", _markdown(paper), "", f"![{w}](compare_{w}.png)"]
        esc = paper.map(lambda v: v.replace("_", r"\_") if isinstance(v, str) else v)
        esc.columns = [c.replace("%", r"\%") for c in esc.columns]
        tex.append(esc.to_latex(index=False, float_format="%.3f", na_rep="--",
                                  caption=f"Policies on workload {w}", label=f"tab:{w}"))
        _plot(table[table.workload == w], out / f"compare_{w}.png", w)
    (out / "compare.md").write_text("\n".join(md) + "\n")
    (out / "compare.tex").write_text("\n".join(tex))


def _markdown(df: pd.DataFrame) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return "--" if np.isnan(v) else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(False)]
    return "\n".join(lines)


def _plot(t: pd.DataFrame, path: Path, w: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    err = np.nan_to_num(np.vstack([t.goodput_per_gpu - t.goodput_per_gpu_ci_lo,
                                   t.goodput_per_gpu_ci_hi - t.goodput_per_gpu]))
    ax1.bar(t.policy, t.goodput_per_gpu, yerr=np.maximum(err, 0), capsize=3)
    ax1.set_ylabel("goodput per GPU (req/s)")
    x = np.arange(len(t))
    ax2.bar(x - 0.2, t.short_attainment, 0.4, label="policy")
    ax2.bar(x + 0.2, t.bound_attainment, 0.4, label="offline bound")
    ax2.set_xticks(x, t.policy)
    ax2.set_ylabel("SLO attainment on short traces")
    ax2.set_ylim(0, 1.05)
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"workload {w}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = CompareConfig()
    p.add_argument("--model", default=d.model)
    p.add_argument("--gpu", default=d.gpu)
    p.add_argument("--cluster", default=d.cluster, help="conf/cluster name or YAML path")
    p.add_argument("--workload", nargs="+", default=None, help="conf/workload names or paths")
    p.add_argument("--slo", default=d.slo, help="conf/slo name or YAML path")
    p.add_argument("--policy", default="", help="exported policy.onnx (with its policy.json)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--num-requests", type=int, default=None)
    p.add_argument("--rate-scales", type=float, nargs="+", default=None)
    p.add_argument("--bound-requests", type=int, default=None)
    p.add_argument("--bound-seeds", type=int, nargs="+", default=None)
    p.add_argument("--bound-rate-scale", type=float, default=None)
    p.add_argument("--no-ilp", action="store_true", help="skip the ILP allocation's plan")
    p.add_argument("--out", default=d.out)
    p.add_argument("--quick", action="store_true", help="small budgets (< 1 min)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    a = _parser().parse_args(argv)
    kw = {k: v for k, v in {"workloads": a.workload, "seeds": a.seeds,
                            "num_requests": a.num_requests, "rate_scales": a.rate_scales,
                            "bound_requests": a.bound_requests,
                            "bound_seeds": a.bound_seeds,
                            "bound_rate_scale": a.bound_rate_scale}.items() if v is not None}
    kw.update(model=a.model, gpu=a.gpu, cluster=a.cluster, slo=a.slo, policy=a.policy,
              ilp=not a.no_ilp, out=a.out)
    try:
        cfg = CompareConfig.quick(**kw) if a.quick else CompareConfig(**kw)
        table = run(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in table.workload.unique():
        print(f"\n## {w}\n")
        print(_markdown(_paper(table, w)))
    print(f"\nwritten to {cfg.out}/ (compare.md, compare.csv, compare.tex, plots)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
