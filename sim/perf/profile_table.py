"""Profile-table backend: the analytic model with its dense layers replaced by measurements.

Vidur-style ``mlp.csv`` tables time every token-level operator of one layer (GEMMs, norms,
activation, RoPE, residual adds) on one GPU for a TP shard at sampled token counts. This
backend interpolates their sum linearly in the token count (and extrapolates linearly past
the last sample), and interpolates NCCL all-reduce tables in message size when given.
Attention, the LM head and engine overheads stay analytic: the measured attention tables are
not available for these shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sim.catalog import CatalogError, GpuSpec, ModelSpec
from sim.perf.analytic import AnalyticBackend, _tail_slope
from sim.perf.params import EngineParams

_OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
        "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")


def find_mlp_table(profile_dir: Path, model: ModelSpec) -> Path:
    """Find the ``mlp.csv`` below ``profile_dir`` whose recorded shape matches ``model``.

    Raises:
        CatalogError: when no table matches, listing the shapes that exist.
    """
    seen = []
    for f in sorted(Path(profile_dir).glob("**/mlp.csv")):
        row = pd.read_csv(f, nrows=1).iloc[0]
        shape = (int(row.n_head), int(row.n_kv_head), int(row.n_embd), int(row.n_expanded_embd))
        seen.append(f"{f.parent.name}{shape}")
        if shape == (model.num_attention_heads, model.num_kv_heads, model.hidden_size,
                     model.intermediate_size):
            return f
    raise CatalogError(
        f"no mlp.csv under {profile_dir} matches {model.name}'s shape; found: {', '.join(seen)}"
    )


class ProfileTableBackend(AnalyticBackend):
    """Interpolates measured per-operator tables for the dense part of every layer."""

    def __init__(
        self,
        model: ModelSpec | str,
        gpu: GpuSpec | str,
        mlp_table: Path | str,
        tp: int = 1,
        pp: int = 1,
        allreduce_table: Path | str | None = None,
        engine: EngineParams | str = "vllm_v1",
        max_table_tokens: int = 16384,
    ) -> None:
        """Load the tables.

        Args:
            model: model spec or name.
            gpu: GPU spec or name.
            mlp_table: a Vidur ``mlp.csv`` (or a folder to search with :func:`find_mlp_table`).
            tp: tensor parallel degree; the table must hold this TP shard.
            pp: pipeline parallel degree.
            allreduce_table: optional Vidur ``all_reduce.csv`` for the TP all-reduces.
            engine: engine overhead parameters or profile name.
            max_table_tokens: tokens tabulated exactly.
        """
        super().__init__(model, gpu, tp=tp, pp=pp, engine=engine,
                         max_table_tokens=max_table_tokens)
        path = Path(mlp_table)
        if path.is_dir():
            path = find_mlp_table(path, self.model)
        d = pd.read_csv(path)
        d = d[d.num_tensor_parallel_workers == tp]
        if d.empty:
            raise CatalogError(f"{path} has no rows for tp={tp}")
        cols = [f"time_stats.{op}.median" for op in _OPS if f"time_stats.{op}.median" in d]
        per_m = d.groupby("num_tokens")[cols].median().sum(axis=1) * 1e-3
        xs = per_m.index.to_numpy(dtype=np.float64)
        ys = per_m.to_numpy()
        m = np.arange(max_table_tokens + 1, dtype=np.float64)
        dense = np.interp(m, xs, ys)
        if len(xs) >= 2:
            # extrapolate with the average growth over the upper half of the samples (the
            # last two samples alone can even decrease: measurement noise)
            mid = float(np.interp(xs[-1] / 2, xs, ys))
            slope = max((ys[-1] - mid) / (xs[-1] / 2), 0.0)
            dense = np.where(m > xs[-1], ys[-1] + (m - xs[-1]) * slope, dense)
        dense[0] = 0.0
        ar = self._allreduce(m, allreduce_table) if tp > 1 else np.zeros_like(m)
        self._dense = dense + ar
        self._slope_m = _tail_slope(self._dense)
        self._scalar_tables()

    def _allreduce(self, m: np.ndarray, table: Path | str | None) -> np.ndarray:
        """Two all-reduces of ``m * hidden * dtype`` bytes per layer, from a table if given."""
        size = m * self.model.hidden_size * self.model.dtype_bytes
        if table is None:
            from sim.perf import kernels
            from sim.perf.analytic import pcie_collectives

            return 2 * kernels.allreduce_time_s(size, self.tp, self.gpu.intra_node_bytes_per_s,
                                                pcie_collectives(self.kp, self.gpu))
        d = pd.read_csv(table)
        d = d[(d.num_workers == self.tp) & (d.devices_per_node == self.tp)]
        if d.empty:
            raise CatalogError(f"{table} has no single-node rows with num_workers={self.tp}")
        g = d.groupby("size")["time_stats.all_reduce.median"].median() * 1e-3
        return np.where(size > 0, 2 * np.interp(size, g.index.to_numpy(float), g.to_numpy()), 0)
