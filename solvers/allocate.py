r"""Optimal allocation and placement of serving instances: ``python -m solvers.allocate ...``.

Workload statistics + ``sim.perf`` -> capacity of each candidate (role, tp, pp)
(:mod:`solvers.capacity`) -> integer program (:mod:`solvers.ilp`) -> deployment plan
(:mod:`solvers.plan`): YAML/JSON with ``vllm serve`` flags, and a cluster YAML for
``simulate.py``.

Example (DistServe's OPT-13B setting)::

    python -m solvers.allocate --model OPT-13B --num-nodes 1 --gpus-per-node 4 \
        --ttft-s 0.2 --tpot-s 0.1 --modes disaggregated --perf-backend distserve \
        --distserve-coeffs-path ../shared/data/distserve/latency_coeffs_a100_80g.csv \
        --lengths-path ../shared/data/distserve/sharegpt_lengths.csv --out plans/opt13b.yaml
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, fields

import numpy as np
import yaml

from sim.catalog import CONF_DIR, CatalogError, get_gpu, get_model
from sim.catalog.gpu import GIB
from sim.metrics import SLO
from sim.perf import LINKS, get_link, kv_transfer_time_s, load_engine_params
from sim.perf.memory import weight_bytes_per_gpu
from solvers.capacity import (
    DEFAULT_LENGTHS,
    Candidate,
    CapacityConfig,
    LengthStats,
    build_candidates,
    make_backend,
    min_gpus_to_fit,
    parallel_shapes,
    prefill_latencies_s,
)
from solvers.ilp import OBJECTIVES, SOLVERS, Allocation, Problem, solve
from solvers.plan import Plan, build_plan, write_cluster_yaml, write_plan

MODES = ("disaggregated", "colocated", "tandem")
"""Serving modes: disaggregated = prefill + decode pools; colocated and tandem use unified
instances (tandem plans are colocated capacity, routed by ``dynaserve``)."""
AFFINITY_CHOICES = ("auto", "high", "low")
"""auto: low when moving the mean prompt's KV across nodes takes longer than the TPOT SLO."""


@dataclass
class AllocateConfig:
    """Everything the allocation needs (CLI flags are these names with dashes)."""

    model: str = "OPT-13B"
    """Model name (``conf/model``)."""
    gpu: str = "A100-80GB-SXM"
    """GPU type (``conf/hardware``)."""
    num_nodes: int = 1
    """Nodes in the cluster."""
    gpus_per_node: int = 8
    """GPUs per node (NVLink inside a node)."""
    network: str = "infiniband_hdr_200g"
    """Cross-node link preset (``sim.perf.transfer.LINKS``), e.g. ethernet_25g."""
    node_affinity: str = "auto"
    """auto, high (KV may cross nodes) or low (prefill/decode stages share a node)."""
    ttft_s: float = 0.25
    """TTFT SLO, seconds."""
    tpot_s: float = 0.1
    """TPOT SLO, seconds."""
    attainment_target_frac: float = 0.9
    """Share of requests that must meet both SLOs."""
    modes: tuple[str, ...] = ("disaggregated", "colocated")
    """Serving modes allowed (subset of :data:`MODES`)."""
    lengths_path: str = DEFAULT_LENGTHS
    """CSV of (prompt_tokens, output_tokens) rows describing the workload."""
    objective: str = "goodput_per_gpu"
    """goodput_per_gpu, max_goodput or min_gpus (needs rate_per_s)."""
    rate_per_s: float = 0.0
    """min_gpus: arrival rate to serve, req/s."""
    perf_backend: str = "analytic"
    """analytic or distserve (DistServe's fitted coefficients)."""
    engine: str = "vllm_v1"
    """Engine overhead profile of the analytic backend."""
    distserve_coeffs_path: str = ""
    """DistServe's latency_coeffs_a100_80g.csv (perf_backend=distserve)."""
    pp_overlap: bool = False
    """Pipeline micro-batches overlap (DistServe) instead of Baton's one-iteration-at-a-time."""
    max_gpus_per_instance: int = 32
    """Largest tp x pp considered."""
    solver: str = "CP_SAT"
    """CP_SAT, SCIP, HIGHS or CBC."""
    time_limit_s: float = 60.0
    """Limit per integer program, seconds; on expiry the best plan found and its gap return."""

    def __post_init__(self) -> None:
        for name in ("num_nodes", "gpus_per_node", "max_gpus_per_instance"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("ttft_s", "tpot_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if not 0 < self.attainment_target_frac <= 1:
            raise ValueError(f"attainment_target_frac must be in (0, 1], got "
                             f"{self.attainment_target_frac}")
        _choice("network", self.network, tuple(LINKS))
        _choice("node_affinity", self.node_affinity, AFFINITY_CHOICES)
        _choice("objective", self.objective, OBJECTIVES)
        _choice("solver", self.solver, SOLVERS)
        self.modes = tuple(self.modes)
        if not self.modes:
            raise ValueError(f"modes is empty; give some of {', '.join(MODES)}")
        for m in self.modes:
            _choice("modes", m, MODES)
        if self.objective == "min_gpus" and not self.rate_per_s > 0:
            raise ValueError(f"objective min_gpus needs rate_per_s > 0, got {self.rate_per_s}")
        if self.rate_per_s < 0:
            raise ValueError(f"rate_per_s must be >= 0, got {self.rate_per_s}")
        if self.time_limit_s < 0:
            raise ValueError(f"time_limit_s must be >= 0 (0 = no limit), got {self.time_limit_s}")
        self.capacity_config()  # validates backend fields

    def slo(self) -> SLO:
        """The SLOs."""
        return SLO(self.ttft_s, self.tpot_s, self.attainment_target_frac)

    def capacity_config(self) -> CapacityConfig:
        """Options of the capacity analysis."""
        return CapacityConfig(perf_backend=self.perf_backend, engine=self.engine,
                              distserve_coeffs_path=self.distserve_coeffs_path,
                              pp_overlap=self.pp_overlap,
                              max_gpus_per_instance=self.max_gpus_per_instance)

    def roles(self) -> tuple[str, ...]:
        """Candidate roles the modes allow."""
        roles = ["prefill", "decode"] if "disaggregated" in self.modes else []
        if {"colocated", "tandem"} & set(self.modes):
            roles.append("unified")
        return tuple(roles)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} {value!r} is not one of {', '.join(allowed)}")


@dataclass
class Result:
    """What :func:`allocate` produced."""

    plan: Plan | None
    """The plan (None when infeasible)."""
    allocation: Allocation
    """Solver answer (status, gap, time)."""
    candidates: list[Candidate]
    """Candidates with capacities the program chose from."""
    node_affinity: str
    """Affinity used (auto resolved)."""
    message: str = ""
    """Why there is no plan, in words."""


def resolve_affinity(cfg: AllocateConfig, model, lengths: LengthStats) -> str:
    """``cfg.node_affinity``, with auto resolved from the cross-node KV transfer time."""
    if cfg.node_affinity != "auto":
        return cfg.node_affinity
    if cfg.num_nodes == 1:
        return "high"
    t = float(kv_transfer_time_s(model, lengths.mean_prompt_tokens, get_link(cfg.network)))
    return "low" if t > cfg.tpot_s else "high"


def explain_no_candidates(cfg: AllocateConfig, model, gpu, lengths: LengthStats) -> str:
    """Why no candidate exists: model too large for the cluster, or SLOs too tight."""
    cap = cfg.capacity_config()
    engine = load_engine_params("distserve" if cfg.perf_backend == "distserve" else cfg.engine)
    weights_gib = weight_bytes_per_gpu(model, 1, 1, engine) / GIB
    need = min_gpus_to_fit(model, gpu, cap)
    total = cfg.num_nodes * cfg.gpus_per_node
    if need is None:
        return (f"{model.name} ({weights_gib:.0f} GiB of weights) does not fit on up to "
                f"{cap.max_gpus_per_instance} {gpu.name} per instance; use a larger GPU or "
                "raise max_gpus_per_instance")
    if need > total:
        return (f"{model.name} needs at least {need} {gpu.name} per instance "
                f"({weights_gib:.0f} GiB of weights) but the cluster has {cfg.num_nodes} x "
                f"{cfg.gpus_per_node} = {total}")
    best = _fastest_prefill_s(cfg, model, gpu, lengths, need, total)
    hint = "" if best is None else (f"; the fastest instance prefills the mean prompt "
                                    f"({lengths.mean_prompt_tokens:.0f} tokens) in {best:.3f} s")
    return (f"no configuration of {model.name} on up to {total} {gpu.name} meets TTFT "
            f"{cfg.ttft_s} s / TPOT {cfg.tpot_s} s at {cfg.attainment_target_frac:.0%} "
            f"attainment with modes {', '.join(cfg.modes)}{hint}; relax the SLOs or allow "
            "other modes / backends")


def _fastest_prefill_s(cfg: AllocateConfig, model, gpu, lengths: LengthStats, need: int,
                       total: int) -> float | None:
    """Shortest prefill of the mean prompt over instance shapes of ``need..total`` GPUs."""
    prompt = np.array([int(round(lengths.mean_prompt_tokens))])
    best = None
    for tp, pp in parallel_shapes(model, total):
        if tp * pp < need:
            continue
        try:
            be = make_backend(model, gpu, tp, pp, cfg.capacity_config())
        except CatalogError:
            continue
        t = float(prefill_latencies_s(be, prompt, 1 << 30)[0])
        best = t if best is None else min(best, t)
    return best


def allocate(cfg: AllocateConfig) -> Result:
    """Capacities, integer program and plan for one configuration.

    Raises:
        ValueError: for an unknown model or GPU name (the message lists the known ones).
    """
    try:
        model = get_model(cfg.model)
    except CatalogError as e:
        raise ValueError(f"model: {e}") from None
    try:
        gpu = get_gpu(cfg.gpu)
    except CatalogError as e:
        raise ValueError(f"gpu: {e}") from None
    lengths, served_frac = LengthStats.from_table(cfg.lengths_path).servable(
        model.max_position_embeddings)
    affinity = resolve_affinity(cfg, model, lengths)
    need = min_gpus_to_fit(model, gpu, cfg.capacity_config())
    if need is None or need > cfg.num_nodes * cfg.gpus_per_node:
        msg = explain_no_candidates(cfg, model, gpu, lengths)
        return Result(None, Allocation("INFEASIBLE", message=msg), [], affinity, msg)
    if served_frac < cfg.attainment_target_frac:
        msg = (f"only {served_frac:.1%} of the requests in {cfg.lengths_path} fit "
               f"{model.name}'s {model.max_position_embeddings}-token context (prompt + output); "
               f"attainment_target_frac {cfg.attainment_target_frac} is out of reach: use "
               "shorter requests or a model with a longer context")
        return Result(None, Allocation("INFEASIBLE", message=msg), [], affinity, msg)
    # rejected (too long) requests are misses: the served ones must do better
    slo = SLO(cfg.ttft_s, cfg.tpot_s, min(cfg.attainment_target_frac / served_frac, 1.0))
    total = cfg.num_nodes * cfg.gpus_per_node
    cands = build_candidates(model, gpu, lengths, slo, cfg.capacity_config(), cfg.roles(),
                             max_gpus=total)
    prob = Problem(tuple(cands), cfg.num_nodes, cfg.gpus_per_node, affinity, cfg.objective,
                   cfg.rate_per_s)
    if not prob.usable():
        msg = explain_no_candidates(cfg, model, gpu, lengths)
        return Result(None, Allocation("INFEASIBLE", message=msg), cands, affinity, msg)
    alloc = solve(prob, cfg.solver, cfg.time_limit_s)
    if not alloc.instances:
        msg = alloc.message or f"solver status {alloc.status}"
        if alloc.status == "INFEASIBLE" and cfg.objective != "min_gpus":
            have = sorted({c.role for c in prob.usable()})
            msg = (explain_no_candidates(cfg, model, gpu, lengths)
                   + f" (only {', '.join(have)} instances meet their SLO alone)")
        if alloc.status == "NOT_SOLVED":
            msg += f"; no plan found within time_limit_s = {cfg.time_limit_s}"
        return Result(None, alloc, cands, affinity, msg)
    roles = {c.role for c, _ in alloc.instances}
    router = "distserve" if "unified" not in roles else (
        "dynaserve" if "tandem" in cfg.modes else "join_shortest_queue")
    if "unified" in roles and len(roles) > 1:
        router = "plan"  # only solvers.verify.PlanRouter mixes colocated and disaggregated
    plan = build_plan(alloc, model=model, gpu=gpu, num_nodes=cfg.num_nodes,
                      gpus_per_node=cfg.gpus_per_node, network=cfg.network,
                      node_affinity=affinity, slo=cfg.slo(), objective=cfg.objective,
                      perf_backend=cfg.perf_backend, router=router)
    return Result(plan, alloc, cands, affinity)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m solvers.allocate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = AllocateConfig()
    for f in fields(AllocateConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, tuple):
            ap.add_argument(flag, nargs="+", default=list(default), metavar="MODE")
        else:
            ap.add_argument(flag, type=type(default), default=default)
    ap.add_argument("--out", default="plan.yaml",
                    help="plan file (.yaml/.yml or .json); the cluster YAML goes to "
                         "<out dir>/cluster/<out stem>.yaml")
    ap.add_argument("--verify", action="store_true",
                    help="simulate the plan at its predicted goodput and print the attainment")
    ap.add_argument("--verify-requests", type=int, default=1000)
    return ap


def print_result(res: Result, out=None) -> None:
    """Human-readable summary: candidates, chosen instances, goodput and solver stats."""
    out = out or sys.stdout
    print(f"node affinity: {res.node_affinity}; {len(res.candidates)} candidates", file=out)
    for c in res.candidates:
        print(f"  {c.key:<20} {c.capacity_per_s:8.3f} req/s  {c.capacity_per_s / c.num_gpus:7.3f}"
              f" /GPU  {c.note}", file=out)
    a = res.allocation
    print(f"status {a.status}  gap {a.gap_frac:.2e}  solve {a.solve_s:.3f} s "
          f"({a.num_solves} programs)", file=out)
    if res.plan is None:
        print(f"no plan: {res.message}", file=out)
        return
    p = res.plan
    print(f"goodput {p.predicted_goodput_per_s:.3f} req/s on {p.num_gpus} GPUs = "
          f"{p.predicted_goodput_per_gpu:.3f} req/s/GPU", file=out)
    for i in p.instances:
        print(f"  #{i.instance_id} {i.role:<8} tp{i.tensor_parallel_size} "
              f"pp{i.pipeline_parallel_size} nodes {i.nodes}  {i.vllm_serve}", file=out)


def _model_conf_name(name: str) -> str:
    """The ``conf/model`` option whose file describes model ``name``."""
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        if yaml.safe_load(path.read_text()).get("name") == name:
            return path.stem
    return name


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 for bad input, 1 for no plan)."""
    ap = _parser()
    args = vars(ap.parse_args(argv))
    out, verify, num_req = args.pop("out"), args.pop("verify"), args.pop("verify_requests")
    args["modes"] = tuple(args["modes"])
    try:
        cfg = AllocateConfig(**args)
        res = allocate(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_result(res)
    if res.plan is None:
        return 1
    path = write_plan(res.plan, out)
    cluster = write_cluster_yaml(res.plan, path.parent / "cluster" / f"{path.stem}.yaml")
    extra = " sim=distserve" if cfg.perf_backend == "distserve" else ""
    print(f"plan -> {path}\ncluster -> {cluster}\nsimulate with: python simulate.py "
          f"'hydra.searchpath=[file://{cluster.parent.parent.resolve()}]' cluster={path.stem} "
          f"model={_model_conf_name(res.plan.model)} router={res.plan.router}{extra}")
    if verify:
        from solvers.verify import simulate_plan

        s = simulate_plan(res.plan, res.plan.predicted_goodput_per_s, cfg.capacity_config(),
                          cfg.lengths_path, num_req)
        print(f"simulated at {res.plan.predicted_goodput_per_s:.3f} req/s: attainment "
              f"{s['slo_attainment']:.3f} (TTFT {s['ttft_attainment']:.3f}, TPOT "
              f"{s['tpot_attainment']:.3f}), target {cfg.attainment_target_frac}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
