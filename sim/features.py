"""Observation and action encoding shared by the environments and the live router.

A policy sees one arriving request at a time. :class:`ObservationEncoder` turns a
:class:`~sim.routing.ClusterView` and a :class:`~sim.routing.RequestInfo` into a fixed-shape
float32 vector and a flat action mask, and turns the policy's action back into a
:class:`~sim.routing.Decision`. The simulator-driven environments (``envs/``) and the router
(``runtime/``) both call this class, so a policy receives byte-identical inputs in both; the
exported policy's sidecar JSON carries :meth:`ObservationEncoder.layout` so the router can
rebuild the encoder without the training config.

Observation (float32, shape ``(num_instances * 10 + 6,)``), instance-major, then the request::

    per instance i (10 values)                          scale
      0 queued prefill tokens (waiting + running)       log1p(x) / log1p(token_scale)
      1 waiting requests                                log1p(x) / log1p(count_scale)
      2 running requests                                log1p(x) / log1p(count_scale)
      3 KV blocks used / KV blocks                      fraction in [0, 1]
      4 (free blocks - blocks this request needs) / KV blocks, clipped to [-1, 1]
      5 KV hand-overs into i (pending or in flight)     log1p(x) / log1p(transfer_scale)
      6 KV hand-overs out of i                          log1p(x) / log1p(transfer_scale)
      7-9 role one-hot: unified, prefill, decode
    request (6 values)
      prompt tokens, predicted output tokens            log1p(x) / log1p(token_scale)
      TTFT SLO / ttft_scale_s, TPOT SLO / tpot_scale_s
      arrival-rate estimate (EWMA of gaps)              log1p(req/s) / log1p(rate_scale)
      gap since the previous arrival                    log1p(s / tpot_scale_s) / log1p(1000)

Every value is clipped to ``[-1, OBS_HIGH]``; the observation space is that Box.

Action: ``MultiDiscrete([n, n, len(split_bins)])`` (Lead, Follow, split bin) in tandem mode,
``MultiDiscrete([n, n])`` (prefill, decode; split 1) in disaggregated mode. A split bin ``f``
means: ``f <= 0`` one token on the Lead (disaggregation), ``f >= 1`` every token on the Lead
(colocation), otherwise ``max(1, round(f * predicted_output))`` tokens. Lead == Follow is
colocation whatever the bin. The mask (sb3-contrib's MultiDiscrete convention: the
per-dimension masks concatenated) allows Leads whose role prefills (unified, prefill) and whose
KV could ever hold the prompt, Follows whose role decodes (unified, decode) and whose KV could
ever hold prompt + predicted output, and every split bin. When no instance qualifies, every
instance of the right role stays allowed (the simulator then rejects the request, counted).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from sim.routing import ClusterView, Decision, RequestInfo

ROLES = ("unified", "prefill", "decode")
"""Instance roles in the order of the one-hot features."""
INSTANCE_FEATURES = (
    "queued_prefill_tokens", "num_waiting", "num_running", "kv_used_frac",
    "kv_free_after_request_frac", "num_transfers_in", "num_transfers_out",
    "role_unified", "role_prefill", "role_decode",
)
"""Names of the per-instance features, in order."""
REQUEST_FEATURES = (
    "prompt_tokens", "predicted_output_tokens", "ttft_slo", "tpot_slo", "rate_estimate",
    "gap_since_previous",
)
"""Names of the request features, in order."""
OBS_HIGH = 4.0
"""Upper clip of every feature (log-scaled counts may exceed 1 above their scale)."""
MODES = ("tandem", "disaggregated")
COLOCATE = 1 << 30
"""Split meaning "every token on the Lead"."""


@dataclass
class FeatureConfig:
    """Fixed normalisation scales and action bins (stored in the policy's sidecar)."""

    token_scale: float = 8192.0
    """Tokens mapping to 1.0 on the log scale (prompt, output, queued prefill)."""
    count_scale: float = 256.0
    """Requests mapping to 1.0 on the log scale (waiting, running)."""
    transfer_scale: float = 16.0
    """KV hand-overs mapping to 1.0 on the log scale."""
    ttft_scale_s: float = 1.0
    """Seconds of TTFT SLO mapping to 1.0."""
    tpot_scale_s: float = 0.1
    """Seconds of TPOT SLO mapping to 1.0."""
    rate_scale_per_s: float = 100.0
    """Arrival rate (req/s) mapping to 1.0 on the log scale."""
    rate_ewma_alpha: float = 0.1
    """Weight of the newest gap in the rate estimate's EWMA, in (0, 1]."""
    split_bins: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    """Split choices as shares of the predicted output (0 = one token, 1 = colocate)."""

    def __post_init__(self) -> None:
        for name in ("token_scale", "count_scale", "transfer_scale", "ttft_scale_s",
                     "tpot_scale_s", "rate_scale_per_s"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"features.{name} = {v!r} must be a finite number > 0")
        if not 0 < self.rate_ewma_alpha <= 1:
            raise ValueError(f"features.rate_ewma_alpha = {self.rate_ewma_alpha} must be in "
                             "(0, 1]")
        if not self.split_bins:
            raise ValueError("features.split_bins is empty; give at least one bin, e.g. [0.0]")
        self.split_bins = [float(b) for b in self.split_bins]
        if any(not 0.0 <= b <= 1.0 for b in self.split_bins):
            raise ValueError(f"features.split_bins = {self.split_bins} must lie in [0, 1] "
                             "(0 = one token on the Lead, 1 = all tokens on the Lead)")


def split_tokens(bin_frac: float, predicted_output_tokens: int) -> int:
    """Tokens sampled on the Lead for a split bin (see the module docstring)."""
    if bin_frac <= 0.0:
        return 1
    if bin_frac >= 1.0:
        return COLOCATE
    return max(1, round(bin_frac * predicted_output_tokens))


class ObservationEncoder:
    """Encode (view, request) into an observation and mask; decode actions into decisions.

    Stateful only in the arrival-rate estimate: call :meth:`reset` when a run starts and
    :meth:`encode` exactly once per arriving request, in arrival order.
    """

    def __init__(self, roles: tuple[str, ...] | list[str], kv_total_blocks, block_size: int,
                 ttft_slo_s: float, tpot_slo_s: float, cfg: FeatureConfig | None = None,
                 mode: str = "tandem") -> None:
        """Create an encoder for one cluster shape.

        Args:
            roles: role of each instance (unified, prefill or decode), length n.
            kv_total_blocks: KV blocks of each instance, shape (n,).
            block_size: tokens per KV block.
            ttft_slo_s: TTFT objective, seconds (an input feature).
            tpot_slo_s: TPOT objective, seconds (an input feature).
            cfg: scales and split bins.
            mode: ``tandem`` (Lead, Follow, split) or ``disaggregated`` (prefill, decode).
        """
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        bad = [r for r in roles if r not in ROLES]
        if bad:
            raise ValueError(f"roles {bad} are not among {ROLES}")
        self.cfg = cfg or FeatureConfig()
        self.mode = mode
        self.roles = tuple(roles)
        n = self.num_instances = len(self.roles)
        if n < 1:
            raise ValueError("the cluster has no instance")
        self.kv_total = np.asarray(kv_total_blocks, dtype=np.float64).reshape(-1)
        if self.kv_total.shape != (n,):
            raise ValueError(f"kv_total_blocks has shape {self.kv_total.shape}, expected ({n},)")
        self.block_size = int(block_size)
        self.ttft_slo_s, self.tpot_slo_s = float(ttft_slo_s), float(tpot_slo_s)
        c = self.cfg
        self._inv_tok = 1.0 / math.log1p(c.token_scale)
        self._inv_cnt = 1.0 / math.log1p(c.count_scale)
        self._inv_tr = 1.0 / math.log1p(c.transfer_scale)
        self._inv_rate = 1.0 / math.log1p(c.rate_scale_per_s)
        self._inv_gap = 1.0 / math.log1p(1000.0)
        self._inv_total = 1.0 / np.maximum(self.kv_total, 1.0)
        self._cap_tokens = self.kv_total * self.block_size
        onehot = np.zeros((3, n))
        for i, r in enumerate(self.roles):
            onehot[ROLES.index(r), i] = 1.0
        lead_roles = ("unified", "prefill")
        follow_roles = ("unified", "decode")
        self._lead_role = np.array([r in lead_roles for r in self.roles])
        self._follow_role = np.array([r in follow_roles for r in self.roles])
        if not self._lead_role.any():
            self._lead_role[:] = True
        if not self._follow_role.any():
            self._follow_role[:] = True
        self._bins = list(self.cfg.split_bins)
        self.nvec = ([n, n, len(self._bins)] if mode == "tandem" else [n, n])
        self.obs_dim = n * len(INSTANCE_FEATURES) + len(REQUEST_FEATURES)
        # per instance: 1 / KV blocks, free fraction when empty (1.0 unless 0 blocks), one-hot
        self._static = [(float(self._inv_total[i]), float(self.kv_total[i] * self._inv_total[i]),
                         tuple(float(x) for x in onehot[:, i])) for i in range(n)]
        self._ttft_feat = self.ttft_slo_s / self.cfg.ttft_scale_s
        self._tpot_feat = self.tpot_slo_s / self.cfg.tpot_scale_s
        self._inv_tpot_scale = 1.0 / self.cfg.tpot_scale_s
        self._min_cap = float(self._cap_tokens.min())
        self._mask_buf = np.concatenate(
            (self._lead_role, self._follow_role) if mode == "disaggregated" else
            (self._lead_role, self._follow_role, np.ones(len(self._bins), dtype=bool)))
        self.reset()

    # ---- state ----------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the arrival-rate estimate (a new run starts)."""
        self._last_arrival_s: float | None = None
        self._gap_ewma_s: float | None = None
        self._last_gap_s = 0.0

    # ---- encoding -------------------------------------------------------------------------
    def encode(self, view: ClusterView, req: RequestInfo,
               observe: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Observation ``(obs_dim,)`` float32 and mask ``(sum(nvec),)`` bool for one arrival.

        ``observe=False`` encodes without counting ``req`` as a new arrival (the rate estimate
        and the gap stay as they were): for re-encoding a state, e.g. an episode's last one.
        """
        return self.encode_values(
            view.values("queued_prefill_tokens"), view.values("num_waiting"),
            view.values("num_running"), view.values("num_transfers_in"),
            view.values("num_transfers_out"), view.values("kv_used_blocks"), req, observe)

    def encode_values(self, queued, waiting, running, transfers_in, transfers_out, used_blocks,
                      req: RequestInfo, observe: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`encode` from per-instance sequences (each of length n).

        Plain Python over the instances: for the handful of instances a decision sees this
        beats a dozen tiny numpy calls (a hot path of every environment step and routed
        request). Values are computed in float64 and rounded once to float32.
        """
        obs = np.array(self._features(queued, waiting, running, transfers_in, transfers_out,
                                      used_blocks, req, observe), dtype=np.float32)
        np.minimum(obs, OBS_HIGH, out=obs)   # guards absurd inputs; -1 is the floor above
        return obs, self.mask(req.num_prompt_tokens, req.predicted_output_tokens)

    def encode_into(self, obs: np.ndarray, mask: np.ndarray, queued, waiting, running,
                    transfers_in, transfers_out, used_blocks, req: RequestInfo,
                    observe: bool = True) -> None:
        """:meth:`encode_values` written into caller-owned buffers (no allocation of arrays).

        ``obs`` is a float32 array of ``obs_dim`` elements and ``mask`` a bool array of
        ``sum(nvec)`` elements (any shapes of that size, C-contiguous); afterwards they hold
        exactly what :meth:`encode_values` would return. For a caller that reuses the same
        buffers every decision (the live router binds them to the policy's session once).
        """
        flat = obs.reshape(-1)
        flat[:] = self._features(queued, waiting, running, transfers_in, transfers_out,
                                 used_blocks, req, observe)
        np.minimum(flat, OBS_HIGH, out=flat)
        self._fill_mask(mask.reshape(-1), req.num_prompt_tokens, req.predicted_output_tokens)

    def _features(self, queued, waiting, running, transfers_in, transfers_out, used_blocks,
                  req: RequestInfo, observe: bool) -> list[float]:
        """The observation as float64 Python floats, before the float32 rounding and clip."""
        lg = math.log1p
        it, ic, itr = self._inv_tok, self._inv_cnt, self._inv_tr
        prompt, pred = req.num_prompt_tokens, req.predicted_output_tokens
        need = -(-(prompt + pred) // self.block_size)
        out: list[float] = []
        ext = out.extend
        for (inv_total, free_base, role), q, w, r, t_in, t_out, used in zip(
                self._static, queued, waiting, running, transfers_in, transfers_out,
                used_blocks, strict=True):
            u = used * inv_total
            f = free_base - u - need * inv_total
            ext((lg(q) * it, lg(w) * ic, lg(r) * ic, u, f if f > -1.0 else -1.0,
                 lg(t_in) * itr, lg(t_out) * itr))
            ext(role)
        gap = self._observe_arrival(req.arrival_s) if observe else self._last_gap_s
        ewma = self._gap_ewma_s
        # no gap yet: rate 0; only simultaneous arrivals so far: the highest rate (capped below)
        rate = 0.0 if ewma is None else (1.0 / ewma if ewma > 0 else math.inf)
        ext((lg(prompt) * it, lg(pred) * it, self._ttft_feat, self._tpot_feat,
             lg(rate) * self._inv_rate, lg(gap * self._inv_tpot_scale) * self._inv_gap))
        return out

    def _observe_arrival(self, arrival_s: float) -> float:
        """Update the rate estimate with one arrival; returns the gap to the previous, s."""
        last = self._last_arrival_s
        self._last_arrival_s = arrival_s
        if last is None:
            self._last_gap_s = 0.0
            return 0.0
        gap = max(arrival_s - last, 0.0)
        self._last_gap_s = gap
        a = self.cfg.rate_ewma_alpha
        self._gap_ewma_s = gap if self._gap_ewma_s is None else \
            (1 - a) * self._gap_ewma_s + a * gap
        return gap

    def mask(self, prompt_tokens: int, predicted_output_tokens: int) -> np.ndarray:
        """Flat action mask for a request (see the module docstring)."""
        m = np.empty_like(self._mask_buf)
        self._fill_mask(m, prompt_tokens, predicted_output_tokens)
        return m

    def _fill_mask(self, m: np.ndarray, prompt_tokens: int,
                   predicted_output_tokens: int) -> None:
        """Write :meth:`mask` into ``m`` (flat, ``sum(nvec)`` bools)."""
        n = self.num_instances
        m[:] = self._mask_buf
        if prompt_tokens + 1 > self._min_cap:  # some instance cannot hold it
            lead = self._lead_role & (self._cap_tokens >= prompt_tokens + 1)
            m[:n] = lead if lead.any() else self._lead_role
        total = prompt_tokens + predicted_output_tokens
        if total > self._min_cap:
            follow = self._follow_role & (self._cap_tokens >= total)
            m[n:2 * n] = follow if follow.any() else self._follow_role

    # ---- decoding -------------------------------------------------------------------------
    def decode(self, action, req: RequestInfo) -> Decision:
        """The decision an action stands for (raises ValueError for out-of-range entries)."""
        lead, follow = int(action[0]), int(action[1])
        n = self.num_instances
        if not (0 <= lead < n and 0 <= follow < n):
            raise ValueError(f"action {list(action)} names an instance outside 0..{n - 1}")
        if self.mode == "disaggregated":
            return Decision(lead, follow, 1)
        b = int(action[2])
        if not 0 <= b < len(self._bins):
            raise ValueError(f"action split bin {b} outside 0..{len(self._bins) - 1}")
        return Decision(lead, follow, split_tokens(self._bins[b], req.predicted_output_tokens))

    # ---- description ----------------------------------------------------------------------
    def layout(self) -> dict:
        """JSON-serialisable description (sidecar): rebuild with :meth:`from_layout`."""
        return {
            "mode": self.mode,
            "roles": list(self.roles),
            "kv_total_blocks": [int(x) for x in self.kv_total],
            "block_size": self.block_size,
            "ttft_slo_s": self.ttft_slo_s,
            "tpot_slo_s": self.tpot_slo_s,
            "features": asdict(self.cfg),
            "instance_features": list(INSTANCE_FEATURES),
            "request_features": list(REQUEST_FEATURES),
            "obs_dim": self.obs_dim,
            "obs_low": -1.0,
            "obs_high": OBS_HIGH,
            "nvec": list(self.nvec),
            "action_dims": (["lead", "follow", "split_bin"] if self.mode == "tandem"
                            else ["prefill", "decode"]),
        }

    @classmethod
    def from_layout(cls, layout: dict) -> ObservationEncoder:
        """Rebuild the encoder a sidecar describes."""
        try:
            return cls(layout["roles"], layout["kv_total_blocks"], layout["block_size"],
                       layout["ttft_slo_s"], layout["tpot_slo_s"],
                       FeatureConfig(**layout["features"]), layout["mode"])
        except KeyError as e:
            raise ValueError(f"observation layout lacks {e.args[0]!r}; export the policy "
                             "again with this version of Baton") from None
