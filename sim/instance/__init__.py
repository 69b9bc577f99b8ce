"""One serving instance: request state, KV blocks with prefix caching, vLLM V1 scheduling."""

from sim.instance.config import ROLES, InstanceConfig, vllm_default_limits
from sim.instance.kv import KVCache
from sim.instance.request import REASON_TEXT, Reason, Request, RequestStatus
from sim.instance.scheduler import Instance, IterationPlan

__all__ = [
    "REASON_TEXT",
    "ROLES",
    "Instance",
    "InstanceConfig",
    "IterationPlan",
    "KVCache",
    "Reason",
    "Request",
    "RequestStatus",
    "vllm_default_limits",
]
