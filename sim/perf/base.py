"""The one interface every latency backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from sim.catalog import GpuSpec, ModelSpec
from sim.perf.batch import BatchArrays, BatchShape


class LatencyBackend(ABC):
    """Times engine iterations of one instance (a model on ``tp x pp`` GPUs of one type).

    Two paths with the same meaning: :meth:`iteration_time_s` takes the seven
    :class:`BatchShape` sums as plain ints (the simulator's hot path, no validation), and
    :meth:`iteration_times_s` takes ``(n,)`` arrays. Times are the latency of one iteration
    through all pipeline stages, seconds, engine overhead included.
    """

    model: ModelSpec
    gpu: GpuSpec
    tp: int
    pp: int

    @abstractmethod
    def iteration_time_s(
        self,
        num_prefill_tokens: int,
        num_prefill_seqs: int,
        prefill_ctx_tokens: int,
        prefill_new_x_ctx: int,
        prefill_new_sq: int,
        num_decode_seqs: int,
        decode_ctx_tokens: int,
    ) -> float:
        """Seconds for one iteration; arguments as in :class:`BatchShape` (not validated)."""

    @abstractmethod
    def iteration_times_s(self, batch: BatchArrays) -> np.ndarray:
        """Seconds for each of ``n`` iterations: ``(n,) float64``."""

    def decode_line(self, num_seqs: int, ctx_tokens: int) -> tuple[float, float, float, float]:
        """Timing of a decode-only run: ``t_j = max(floor, a + slope * j) + const``.

        Iteration ``j`` has ``num_seqs`` sequences attending ``ctx_tokens + j * num_seqs``
        tokens in total. This default assumes time is linear in the context (true of every
        backend with a fixed batch size) and samples two iterations.

        Returns:
            ``(a_s, slope_s, floor_s, const_s)``.
        """
        t0 = self.iteration_time_s(0, 0, 0, 0, 0, num_seqs, ctx_tokens)
        t1 = self.iteration_time_s(0, 0, 0, 0, 0, num_seqs, ctx_tokens + num_seqs)
        return t0, max(t1 - t0, 0.0), 0.0, 0.0

    def time(self, shape: BatchShape) -> float:
        """Validated convenience wrapper around :meth:`iteration_time_s`."""
        return self.iteration_time_s(*shape.as_args())

    def prefill_time_s(self, prompt_tokens: int, cached_tokens: int = 0) -> float:
        """One iteration that prefills a single prompt of ``prompt_tokens`` new tokens."""
        return self.time(BatchShape.from_requests([prompt_tokens], [cached_tokens]))

    def decode_time_s(self, batch_size: int, ctx_tokens: int) -> float:
        """One decode iteration of ``batch_size`` sequences each attending ``ctx_tokens``."""
        return self.time(BatchShape.from_requests(decode_ctx_tokens=[ctx_tokens] * batch_size))
