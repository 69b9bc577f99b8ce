"""The environment's typed config (also the ``env`` part of ``train.py``'s config)."""

from __future__ import annotations

from dataclasses import dataclass, field

from envs.episodes import EpisodeConfig
from envs.reward import RewardConfig
from sim.catalog import GpuSpec, ModelSpec, get_gpu, get_model
from sim.engine import ClusterConfig, SimConfig
from sim.features import MODES, FeatureConfig
from sim.instance import InstanceConfig
from sim.metrics import SLO
from sim.workload import WorkloadConfig
from sim.workload.config import ArrivalConfig, LengthConfig


def default_cluster() -> ClusterConfig:
    """Eight unified TP1 instances on one 8-GPU node (any can be Lead or Follow)."""
    return ClusterConfig(num_nodes=1, gpus_per_node=8,
                         instances=[InstanceConfig(role="unified", replicas=8)])


def default_workload() -> WorkloadConfig:
    """``conf/workload/bursty.yaml`` scaled by 8 (to 16 req/s) for the eight instances.

    Gamma inter-arrival gaps with CV 4 and lognormal ShareGPT-like lengths.
    """
    return WorkloadConfig(name="bursty", kind="synthetic", num_requests=1000,
                          arrival=ArrivalConfig(process="gamma", rate_per_s=2.0, cv=4.0),
                          lengths=LengthConfig(distribution="lognormal"), rate_scale=8.0)


def default_slo() -> SLO:
    """``conf/slo/chat_long.yaml``: TTFT 1 s, TPOT 50 ms, 90% attainment."""
    return SLO(ttft_s=1.0, tpot_s=0.05, attainment_target_frac=0.9)


@dataclass
class EnvConfig:
    """Everything one routing environment needs; defaults are the embedded training setup."""

    mode: str = "tandem"
    """tandem (Lead, Follow, split bin) or disaggregated (prefill, decode; split 1)."""
    model: ModelSpec = field(default_factory=lambda: get_model("llama31_8b"))
    """Model served by every instance."""
    hardware: GpuSpec = field(default_factory=lambda: get_gpu("a100_80gb_sxm"))
    """GPU type of the cluster."""
    cluster: ClusterConfig = field(default_factory=default_cluster)
    """Nodes and instances."""
    workload: WorkloadConfig = field(default_factory=default_workload)
    """Arrival process and lengths, or a trace, that episodes are drawn from."""
    slo: SLO = field(default_factory=default_slo)
    """TTFT/TPOT objectives (reward and an observation feature)."""
    sim: SimConfig = field(default_factory=lambda: SimConfig(output_prediction_cv=0.3))
    """Simulator options (backend, output-length prediction noise)."""
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    """Requests per episode and the rate range."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward per outcome."""
    features: FeatureConfig = field(default_factory=FeatureConfig)
    """Observation scales and split bins."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"env.mode {self.mode!r} is not one of {', '.join(MODES)}")
        if isinstance(self.model, str):
            self.model = get_model(self.model)
        if isinstance(self.hardware, str):
            self.hardware = get_gpu(self.hardware)
