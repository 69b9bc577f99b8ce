"""DistServe's fitted latency formulas as a backend, to reproduce its results exactly.

DistServe (OSDI'24) profiled its engine on A100-80GB and fitted, per model and TP degree
(times in milliseconds)::

    prefill(l_1..l_n) = a + b * sum(l_i) + c * sum(l_i ** 2)
    decode(ctx_1..ctx_B) = a + b * sum(ctx_i + 1) + c * B     # one set for B < 95, one >= 95

DistServe's ``ctx_i + 1`` (``prefill_lens + counter + 1`` with ``counter`` = outputs - 1) is
the number of tokens a sequence attends to, which is our ``decode_ctx_tokens`` per sequence.
Its simulator divides both by the pipeline degree per stage; a request passing all stages
sees the undivided value, which is what :meth:`iteration_time_s` returns. Like DistServe, a
batch that mixes prefill and decode is timed by the prefill formula alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sim.catalog import CatalogError, GpuSpec, ModelSpec, get_gpu, get_model
from sim.perf.base import LatencyBackend
from sim.perf.batch import BatchArrays

DECODE_LARGE_BATCH = 95
"""DistServe switches decode coefficients at this batch size."""


class DistServeBackend(LatencyBackend):
    """Iteration times from DistServe's coefficient table (``latency_coeffs_a100_80g.csv``)."""

    def __init__(
        self,
        model: ModelSpec | str,
        gpu: GpuSpec | str = "A100-80GB-SXM",
        tp: int = 1,
        pp: int = 1,
        coeffs: pd.DataFrame | Path | str | None = None,
        engine: str = "distserve",
    ) -> None:
        """Pick the coefficients of one (engine, model, TP).

        Args:
            model: model spec or name (OPT-13B or OPT-66B have coefficients).
            gpu: must be A100-80GB-SXM (the only GPU DistServe profiled).
            tp: tensor parallel degree.
            pp: pipeline parallel degree.
            coeffs: the coefficient table, or a path to its CSV.
            engine: ``distserve`` or ``vllm`` (DistServe also fitted vLLM's engine).

        Raises:
            CatalogError: when the table has no coefficients for this combination.
        """
        self.model = get_model(model) if isinstance(model, str) else model
        self.gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
        self.tp, self.pp = tp, pp
        if coeffs is None:
            raise CatalogError(
                "DistServeBackend needs coeffs: a DataFrame or the path of DistServe's "
                "latency_coeffs_a100_80g.csv"
            )
        table = coeffs if isinstance(coeffs, pd.DataFrame) else pd.read_csv(coeffs)
        if self.gpu.name != "A100-80GB-SXM":
            raise CatalogError(
                f"DistServe coefficients exist only for A100-80GB-SXM, not {self.gpu.name}"
            )
        hf = self.model.hf_id.lower()
        rows = table[(table.engine == engine) & (table.model.str.lower() == hf)
                     & (table.tp == tp)]
        if rows.empty:
            have = table[table.engine == engine][["model", "tp"]].drop_duplicates()
            pairs = ", ".join(f"{m} tp={t}" for m, t in have.itertuples(index=False))
            raise CatalogError(
                f"no DistServe {engine} coefficients for {self.model.name} tp={tp}; have: {pairs}"
            )
        by_phase = {r.phase: (r.a_ms * 1e-3, r.b_ms * 1e-3, r.c_ms * 1e-3)
                    for r in rows.itertuples()}
        self._pre = by_phase["prefill"]
        self._dec_small = by_phase["decoding_smallbs"]
        self._dec_large = by_phase["decoding_largebs"]

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
        """Seconds through all pipeline stages (DistServe's per-stage time times ``pp``)."""
        if num_prefill_tokens:
            a, b, c = self._pre
            return a + b * num_prefill_tokens + c * prefill_new_sq
        if not num_decode_seqs:
            return 0.0
        a, b, c = self._dec_small if num_decode_seqs < DECODE_LARGE_BATCH else self._dec_large
        return a + b * decode_ctx_tokens + c * num_decode_seqs

    def iteration_times_s(self, batch: BatchArrays) -> np.ndarray:
        """Vectorised :meth:`iteration_time_s`; ``(n,) float64``."""
        pt, _, _, _, psq, ds, dc = (np.asarray(a, dtype=np.float64) for a in batch)
        a, b, c = self._pre
        pre = a + b * pt + c * psq
        small = self._dec_small
        large = self._dec_large
        use_large = ds >= DECODE_LARGE_BATCH
        da = np.where(use_large, large[0], small[0])
        db = np.where(use_large, large[1], small[1])
        dcc = np.where(use_large, large[2], small[2])
        dec = np.where(ds > 0, da + db * dc + dcc * ds, 0.0)
        return np.where(pt > 0, pre, dec)

    def stage_time_s(self, *args: int) -> float:
        """Seconds one pipeline stage is busy (DistServe's simulator value)."""
        return self.iteration_time_s(*args) / self.pp
