"""Deployment plans: what the allocation chose, as YAML/JSON, vLLM launch flags and a cluster.

A plan lists every instance (role, tp, pp, the node of each pipeline stage, its predicted
capacity) with the ``vllm serve`` command that would launch it, plus the predicted goodput
and the solver's status. :meth:`Plan.cluster_config` turns it into the simulator's
``ClusterConfig`` (and :func:`write_cluster_yaml` into a file ``simulate.py`` loads).

Instances whose stages span nodes cannot be expressed in a ``ClusterConfig`` (an instance
lives on one node there). Such a plan is simulated on one virtual node holding all the GPUs
(``simulation_note`` says so): KV transfers then run over NVLink, which is what the low
node-affinity placement guarantees by construction.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from sim.engine import ClusterConfig
from sim.instance import InstanceConfig
from solvers.ilp import Allocation

BASE_PORT = 8100
"""HTTP port of the first instance on a node; the next ones count up."""
NIXL_BASE_PORT = 5600
"""``VLLM_NIXL_SIDE_CHANNEL_PORT`` of the first instance on a node (unique per worker)."""
KV_ROLE = {"prefill": "kv_producer", "decode": "kv_consumer", "unified": "kv_both"}
"""Plan role -> ``kv_role`` of vLLM's ``KVTransferConfig`` (NixlConnector ignores it)."""


@dataclass
class PlanInstance:
    """One serving instance of a plan."""

    instance_id: int
    """Index in the plan (and in the simulator's instance list)."""
    role: str
    """prefill, decode or unified."""
    tensor_parallel_size: int
    """GPUs per stage."""
    pipeline_parallel_size: int
    """Stages."""
    nodes: list[int]
    """Node of each pipeline stage."""
    capacity_per_s: float
    """Rate this instance sustains alone under the SLOs (capacity model), req/s."""
    port: int
    """HTTP port of its API server."""
    vllm_serve: str
    """The command that launches it."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables it needs (NIXL side channel)."""


@dataclass
class Plan:
    """A deployment plan (see the module docstring)."""

    model: str
    """Model name (catalog)."""
    hf_id: str
    """Hugging Face id passed to ``vllm serve``."""
    gpu: str
    """GPU type (catalog)."""
    num_nodes: int
    """Nodes of the cluster."""
    gpus_per_node: int
    """GPUs per node."""
    network: str
    """Cross-node link preset (``sim.perf.transfer.LINKS``)."""
    node_affinity: str
    """high (KV may cross nodes) or low (prefill/decode stages share nodes)."""
    ttft_s: float
    """TTFT SLO, seconds."""
    tpot_s: float
    """TPOT SLO, seconds."""
    attainment_target_frac: float
    """Share of requests meeting both SLOs."""
    objective: str
    """What was optimised."""
    status: str
    """Solver status (OPTIMAL, FEASIBLE = time limit hit, best found)."""
    gap_frac: float
    """Relative optimality gap."""
    solve_s: float
    """Solver wall time, seconds."""
    predicted_goodput_per_s: float
    """Goodput the capacity model predicts for the plan, req/s."""
    num_gpus: int
    """GPUs the instances use."""
    instances: list[PlanInstance]
    """The instances."""
    perf_backend: str = "analytic"
    """Performance model backend the capacities came from."""
    router: str = "distserve"
    """Router the simulator should use with this plan."""
    simulation_note: str = ""
    """How the simulator approximates the plan, when it must."""

    @property
    def predicted_goodput_per_gpu(self) -> float:
        """Predicted goodput per GPU used, req/s."""
        return self.predicted_goodput_per_s / self.num_gpus if self.num_gpus else 0.0

    def to_dict(self) -> dict:
        """Plain data (YAML/JSON-ready), with the per-GPU goodput added."""
        d = asdict(self)
        d["predicted_goodput_per_gpu"] = self.predicted_goodput_per_gpu
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        """Inverse of :meth:`to_dict`."""
        d = {k: v for k, v in d.items() if k != "predicted_goodput_per_gpu"}
        d["instances"] = [PlanInstance(**i) for i in d["instances"]]
        return cls(**d)

    def spans_nodes(self) -> bool:
        """Whether any instance has stages on more than one node."""
        return any(len(set(i.nodes)) > 1 for i in self.instances)

    def cluster_config(self) -> ClusterConfig:
        """The simulator's cluster for this plan (one virtual node if instances span nodes)."""
        span = self.spans_nodes()
        insts = [
            InstanceConfig(role=i.role, tensor_parallel_size=i.tensor_parallel_size,
                           pipeline_parallel_size=i.pipeline_parallel_size,
                           node=0 if span else i.nodes[0])
            for i in self.instances
        ]
        if span:
            return ClusterConfig(num_nodes=1, gpus_per_node=self.num_nodes * self.gpus_per_node,
                                 network=self.network, instances=insts)
        return ClusterConfig(num_nodes=self.num_nodes, gpus_per_node=self.gpus_per_node,
                             network=self.network, instances=insts)

    def nodes_of_instances(self) -> list[int]:
        """Node of each instance's first stage (for node-local routing)."""
        return [i.nodes[0] for i in self.instances]


def vllm_command(hf_id: str, role: str, tp: int, pp: int, port: int,
                 gpu_memory_utilization: float = 0.9) -> str:
    """``vllm serve`` command line of one instance.

    Every role gets NixlConnector (``kv_producer`` / ``kv_consumer`` / ``kv_both`` for
    unified): NixlConnector ignores ``kv_role``, and a unified instance needs a connector to
    take part in a tandem (Lead/Follow) hand-off.
    """
    args = ["vllm", "serve", hf_id, "--port", str(port),
            "--tensor-parallel-size", str(tp), "--pipeline-parallel-size", str(pp),
            "--gpu-memory-utilization", str(gpu_memory_utilization)]
    kv = {"kv_connector": "NixlConnector", "kv_role": KV_ROLE[role]}
    args += ["--kv-transfer-config", json.dumps(kv, separators=(",", ":"))]
    return shlex.join(args)


def build_plan(alloc: Allocation, *, model, gpu, num_nodes: int, gpus_per_node: int,
               network: str, node_affinity: str, slo, objective: str,
               perf_backend: str = "analytic", router: str = "distserve") -> Plan:
    """Turn an allocation into a plan with ports and launch commands.

    Raises:
        ValueError: when the allocation has no instances (status and message say why).
    """
    if not alloc.instances:
        raise ValueError(f"no plan: solver status {alloc.status}; {alloc.message}")
    next_port: dict[int, int] = {}
    out = []
    for k, (cand, nodes) in enumerate(alloc.instances):
        head = nodes[0]
        slot = next_port.get(head, 0)
        next_port[head] = slot + 1
        port = BASE_PORT + slot
        env = {}
        if cand.role in ("prefill", "decode"):
            env = {"VLLM_NIXL_SIDE_CHANNEL_PORT": str(NIXL_BASE_PORT + 10 * slot),
                   "VLLM_NIXL_SIDE_CHANNEL_HOST": f"node{head}"}
        out.append(PlanInstance(k, cand.role, cand.tp, cand.pp, list(nodes),
                                float(cand.capacity_per_s), port,
                                vllm_command(model.hf_id, cand.role, cand.tp, cand.pp, port),
                                env))
    plan = Plan(model.name, model.hf_id, gpu.name, num_nodes, gpus_per_node, network,
                node_affinity, slo.ttft_s, slo.tpot_s, slo.attainment_target_frac, objective,
                alloc.status, float(alloc.gap_frac), float(alloc.solve_s),
                float(alloc.goodput_per_s), int(alloc.num_gpus), out, perf_backend, router)
    if plan.spans_nodes():
        plan.simulation_note = ("instances span nodes; the simulator places every instance on "
                                "one virtual node of all the GPUs (KV moves over NVLink)")
    return plan


def write_plan(plan: Plan, path: str | Path) -> Path:
    """Write the plan as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    d = plan.to_dict()
    if path.suffix in (".yaml", ".yml"):
        path.write_text(yaml.safe_dump(d, sort_keys=False))
    else:
        path.write_text(json.dumps(d, indent=2))
    return path


def read_plan(path: str | Path) -> Plan:
    """Read a plan written by :func:`write_plan`."""
    text = Path(path).read_text()
    d = yaml.safe_load(text) if Path(path).suffix in (".yaml", ".yml") else json.loads(text)
    return Plan.from_dict(d)


def cluster_dict(plan: Plan) -> dict:
    """The plan's cluster as the dict a ``conf/cluster/*.yaml`` file holds."""
    cc = plan.cluster_config()
    keep = ("role", "tensor_parallel_size", "pipeline_parallel_size", "node")
    return {"num_nodes": cc.num_nodes, "gpus_per_node": cc.gpus_per_node,
            "network": cc.network,
            "instances": [{k: getattr(i, k) for k in keep} for i in cc.instances]}


def write_cluster_yaml(plan: Plan, path: str | Path) -> Path:
    """Write the plan's cluster as a YAML ``simulate.py`` loads (``cluster=...``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Planned by solvers.allocate: {plan.model} on {plan.gpu}, predicted goodput "
              f"{plan.predicted_goodput_per_s:.3f} req/s on {plan.num_gpus} GPUs "
              f"({plan.status}). Use with router={plan.router}.\n")
    if plan.simulation_note:
        header += f"# {plan.simulation_note}\n"
    path.write_text(header + yaml.safe_dump(cluster_dict(plan), sort_keys=False))
    return path
