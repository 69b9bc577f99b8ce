"""Workloads: arrival processes x length distributions, or replayed traces, as column arrays."""

from sim.workload.arrivals import ARRIVAL_PROCESSES, diurnal, gamma, mmpp_onoff, poisson
from sim.workload.config import (
    REPO_ROOT,
    ArrivalConfig,
    LengthConfig,
    TraceConfig,
    WorkloadConfig,
    build_workload,
    resolve_path,
)
from sim.workload.lengths import (
    LENGTH_DISTRIBUTIONS,
    empirical,
    fixed,
    load_length_table,
    lognormal,
)
from sim.workload.traces import (
    canonical_hash_ids,
    load_azure_csv,
    load_generic_csv,
    load_mooncake_jsonl,
    prefix_groups_to_hashes,
    spread_buckets_s,
    write_generic_csv,
)
from sim.workload.workload import Workload

__all__ = [
    "ARRIVAL_PROCESSES",
    "LENGTH_DISTRIBUTIONS",
    "REPO_ROOT",
    "ArrivalConfig",
    "LengthConfig",
    "TraceConfig",
    "Workload",
    "WorkloadConfig",
    "build_workload",
    "canonical_hash_ids",
    "diurnal",
    "empirical",
    "fixed",
    "gamma",
    "load_azure_csv",
    "load_generic_csv",
    "load_length_table",
    "load_mooncake_jsonl",
    "lognormal",
    "mmpp_onoff",
    "poisson",
    "prefix_groups_to_hashes",
    "resolve_path",
    "spread_buckets_s",
    "write_generic_csv",
]
