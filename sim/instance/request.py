"""One request's state inside the simulator: a progress counter plus an ordered status.

As in vLLM V1 there is no stored "phase": a request has ``num_computed_tokens`` (tokens whose
KV is in the cache of the instance serving it) and ``num_output_tokens`` (tokens sampled so
far); it is prefilling while ``num_computed_tokens < num_tokens - 1``::

    |<------------- num_prompt_tokens ------------->|<-- num_output_tokens -->|
    |<----------- num_computed_tokens ----------->|  (KV present)
                                                   ^ next token(s) to compute

Tandem serving (DynaServe) splits the outputs at ``split_tokens``: the Lead instance prefills
and samples outputs 1..split, then the KV of ``prompt + split - 1`` tokens moves to the Follow
instance, which samples the rest. ``split_tokens >= max_output_tokens`` is colocation, 1 is
disaggregation (DistServe).

While a request sits in an instance's aggregated decode batch its ``num_computed_tokens``,
``num_output_tokens`` and ``num_blocks`` are lazy: the instance advances one batch counter per
iteration and writes the request's counters back when it leaves the batch (stop, preemption)
or when ``Instance.running`` is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class RequestStatus(IntEnum):
    """Lifecycle states; non-terminal first, so ``status >= COMPLETED`` means finished."""

    WAITING = 0
    """In an instance's waiting queue (new, or preempted and to be recomputed)."""
    RUNNING = 1
    """Scheduled on an instance (prefilling or decoding)."""
    AWAITING_TRANSFER = 2
    """Lead finished its share; KV held on the Lead until the Follow has blocks for it."""
    TRANSFERRING = 3
    """KV moving Lead -> Follow over a link."""
    COMPLETED = 10
    """All output tokens sampled."""
    REJECTED = 11
    """Refused at arrival (see :class:`Reason`); never ran."""
    FAILED = 12
    """Started but could not finish (see :class:`Reason`)."""


class Reason(IntEnum):
    """Why a request was rejected or failed (``NONE`` for completed ones)."""

    NONE = 0
    PROMPT_EXCEEDS_KV_CAPACITY = 1
    """prompt + output tokens exceed every candidate instance's KV cache."""
    PROMPT_EXCEEDS_MAX_MODEL_LEN = 2
    """prompt + output tokens exceed the model's context length."""
    INVALID_DECISION = 3
    """The router returned an instance index out of range or a split < 1."""
    ROUTER_REJECTED = 4
    """The router chose to reject (admission control)."""
    FOLLOW_CANNOT_HOLD_KV = 5
    """The Follow instance can never hold this request's KV."""
    SIMULATION_ENDED = 6
    """Still in flight when the simulation was stopped at its time limit."""


REASON_TEXT = {
    Reason.NONE: "",
    Reason.PROMPT_EXCEEDS_KV_CAPACITY: "prompt+output tokens exceed the instance's KV capacity",
    Reason.PROMPT_EXCEEDS_MAX_MODEL_LEN: "prompt+output tokens exceed max_model_len",
    Reason.INVALID_DECISION: "router returned an invalid decision",
    Reason.ROUTER_REJECTED: "router rejected the request",
    Reason.FOLLOW_CANNOT_HOLD_KV: "follow instance can never hold the request's KV",
    Reason.SIMULATION_ENDED: "still in flight when the simulation stopped",
}


@dataclass(slots=True, eq=False)
class Request:
    """A request in flight. Timestamps are seconds of simulated time, ``-1.0`` until set."""

    rid: int
    """Index into the workload arrays."""
    arrival_s: float
    """When it reached the cluster."""
    num_prompt_tokens: int
    """Prompt length."""
    max_output_tokens: int
    """Tokens to generate (the trace's output length; ``ignore_eos``)."""
    hashes: np.ndarray | None = None
    """Prompt block hashes (prefix caching), each covering ``hash_block_tokens`` tokens."""
    lead: int = -1
    """Instance that prefills it and samples outputs 1..split_tokens."""
    follow: int = -1
    """Instance that samples the remaining outputs (== lead when colocated)."""
    split_tokens: int = 0
    """Outputs sampled on the Lead before the hand-over."""
    status: RequestStatus = RequestStatus.WAITING
    reason: Reason = Reason.NONE
    instance: int = -1
    """Instance whose queue or batch it is in now."""
    num_computed_tokens: int = 0
    """Tokens with KV on the current instance."""
    num_output_tokens: int = 0
    """Outputs sampled so far."""
    num_blocks: int = 0
    """KV blocks it holds on the current instance (including shared prefix blocks)."""
    num_shared_blocks: int = 0
    """Of those, blocks shared through the prefix cache (owned by cache entries)."""
    shared_hashes: tuple | range = ()
    """Prefix-cache entries it holds a reference to on the current instance."""
    num_cached_prompt_tokens: int = 0
    """Prompt tokens served from the prefix cache at its (last) admission."""
    stop_tokens: int = 0
    """Outputs after which it leaves its current instance (split on the Lead, else all)."""
    num_preemptions: int = 0
    handover_cancelled: bool = False
    """The Lead kept and finished it because the Follow could not take its KV (deadlock)."""
    first_scheduled_s: float = -1.0
    """First time any of its tokens was scheduled."""
    first_token_s: float = -1.0
    """When output 1 was sampled (TTFT = first_token_s - arrival_s)."""
    lead_done_s: float = -1.0
    """When the Lead sampled output ``split_tokens`` (hand-over requested)."""
    transfer_start_s: float = -1.0
    transfer_end_s: float = -1.0
    finish_s: float = -1.0
    """When it reached a terminal status."""

    @property
    def num_tokens(self) -> int:
        """Prompt plus sampled outputs."""
        return self.num_prompt_tokens + self.num_output_tokens

    @property
    def is_terminal(self) -> bool:
        """Completed, rejected or failed."""
        return self.status >= RequestStatus.COMPLETED

    @property
    def is_prefilling(self) -> bool:
        """Whether its next scheduled tokens are prompt (or recompute) tokens."""
        return self.num_computed_tokens < self.num_tokens - 1 or self.num_output_tokens == 0
