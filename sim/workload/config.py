"""Typed workload configs (the ``workload`` Hydra group) and :func:`build_workload`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sim.workload.arrivals import ARRIVAL_PROCESSES
from sim.workload.lengths import LENGTH_DISTRIBUTIONS, load_length_table
from sim.workload.traces import load_azure_csv, load_generic_csv, load_mooncake_jsonl
from sim.workload.workload import Workload

REPO_ROOT = Path(__file__).resolve().parents[2]
"""Relative trace and table paths resolve against this directory."""
TRACE_FORMATS = ("azure", "mooncake", "csv")
"""Valid :attr:`TraceConfig.format` values."""
WORKLOAD_KINDS = ("synthetic", "trace")
"""Valid :attr:`WorkloadConfig.kind` values."""


def _positive(owner: str, name: str, value: float, allow_zero: bool = False) -> None:
    """Raise unless ``value`` is a finite number > 0 (>= 0 with ``allow_zero``)."""
    ok = (not isinstance(value, bool) and isinstance(value, int | float) and np.isfinite(value)
          and (value >= 0 if allow_zero else value > 0))
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}.{name} = {value!r} must be a finite number {bound}")


def _positive_int(owner: str, name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}.{name} = {value!r} must be an integer >= 1")


def resolve_path(path: str | Path) -> Path:
    """``path`` itself when absolute, else relative to the repository root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


@dataclass
class ArrivalConfig:
    """An arrival process from :data:`~sim.workload.arrivals.ARRIVAL_PROCESSES` and its knobs."""

    process: str = "poisson"
    """poisson, gamma, mmpp_onoff or diurnal."""
    rate_per_s: float = 1.0
    """Mean rate, requests/s (mmpp_onoff: the on-state rate; diurnal: the mean over a period)."""
    cv: float = 1.0
    """gamma: std / mean of the inter-arrival gaps (1 = Poisson, > 1 bursty)."""
    rate_off_per_s: float = 0.0
    """mmpp_onoff: rate in the off state, requests/s."""
    mean_on_s: float = 10.0
    """mmpp_onoff: mean on-sojourn, seconds."""
    mean_off_s: float = 10.0
    """mmpp_onoff: mean off-sojourn, seconds."""
    amplitude_frac: float = 0.5
    """diurnal: relative swing of the rate, in [0, 1]."""
    period_s: float = 86400.0
    """diurnal: period of the cycle, seconds."""

    def __post_init__(self) -> None:
        if self.process not in ARRIVAL_PROCESSES:
            raise ValueError(f"ArrivalConfig.process = {self.process!r} is unknown; use one of "
                             f"{', '.join(ARRIVAL_PROCESSES)}")
        for name in ("rate_per_s", "cv", "mean_on_s", "mean_off_s", "period_s"):
            _positive("ArrivalConfig", name, getattr(self, name))
        _positive("ArrivalConfig", "rate_off_per_s", self.rate_off_per_s, allow_zero=True)
        if not 0.0 <= self.amplitude_frac <= 1.0:
            raise ValueError(f"ArrivalConfig.amplitude_frac = {self.amplitude_frac} must be in "
                             "[0, 1]")

    def params(self) -> dict[str, float]:
        """Keyword arguments of the selected arrival function."""
        if self.process == "poisson":
            return {"rate_per_s": self.rate_per_s}
        if self.process == "gamma":
            return {"rate_per_s": self.rate_per_s, "cv": self.cv}
        if self.process == "mmpp_onoff":
            return {"rate_on_per_s": self.rate_per_s, "rate_off_per_s": self.rate_off_per_s,
                    "mean_on_s": self.mean_on_s, "mean_off_s": self.mean_off_s}
        return {"mean_rate_per_s": self.rate_per_s, "amplitude_frac": self.amplitude_frac,
                "period_s": self.period_s}


@dataclass
class LengthConfig:
    """A length distribution from :data:`~sim.workload.lengths.LENGTH_DISTRIBUTIONS`.

    The lognormal defaults match ShareGPT's mean and median (traces README: prompt 2,340 /
    1,730, output 439 / 415 tokens).
    """

    distribution: str = "lognormal"
    """fixed, lognormal or empirical."""
    prompt_tokens: int = 512
    """fixed: prompt length, tokens."""
    output_tokens: int = 64
    """fixed: output length, tokens."""
    prompt_mean: float = 2340.0
    """lognormal: mean prompt length before clipping, tokens."""
    prompt_cv: float = 0.91
    """lognormal: std / mean of the prompt length before clipping."""
    output_mean: float = 439.0
    """lognormal: mean output length before clipping, tokens."""
    output_cv: float = 0.35
    """lognormal: std / mean of the output length before clipping."""
    min_tokens: int = 1
    """lognormal: lower clip of both lengths, tokens."""
    max_prompt_tokens: int = 8192
    """lognormal: upper clip of prompts, tokens."""
    max_output_tokens: int = 2048
    """lognormal: upper clip of outputs, tokens."""
    path: str | None = None
    """empirical: CSV length table (absolute, or relative to the repository root)."""

    def __post_init__(self) -> None:
        if self.distribution not in LENGTH_DISTRIBUTIONS:
            raise ValueError(f"LengthConfig.distribution = {self.distribution!r} is unknown; "
                             f"use one of {', '.join(LENGTH_DISTRIBUTIONS)}")
        for name in ("prompt_tokens", "output_tokens", "min_tokens", "max_prompt_tokens",
                     "max_output_tokens"):
            _positive_int("LengthConfig", name, getattr(self, name))
        for name in ("prompt_mean", "output_mean"):
            _positive("LengthConfig", name, getattr(self, name))
        for name in ("prompt_cv", "output_cv"):
            _positive("LengthConfig", name, getattr(self, name), allow_zero=True)
        if self.min_tokens > min(self.max_prompt_tokens, self.max_output_tokens):
            raise ValueError(f"LengthConfig.min_tokens = {self.min_tokens} exceeds "
                             f"max_prompt_tokens ({self.max_prompt_tokens}) or max_output_tokens "
                             f"({self.max_output_tokens}); lower it")
        if self.distribution == "empirical" and not self.path:
            raise ValueError("LengthConfig.path is required for distribution 'empirical'; set "
                             "it to a CSV with prompt_tokens,output_tokens columns")

    def sample(self, num_requests: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``(prompt_tokens, output_tokens)``, each (num_requests,) int64 (reads ``path``)."""
        if self.distribution == "fixed":
            params = {"prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens}
        elif self.distribution == "lognormal":
            params = {"prompt_mean": self.prompt_mean, "prompt_cv": self.prompt_cv,
                      "output_mean": self.output_mean, "output_cv": self.output_cv,
                      "min_tokens": self.min_tokens, "max_prompt_tokens": self.max_prompt_tokens,
                      "max_output_tokens": self.max_output_tokens}
        else:
            params = {"table": load_length_table(resolve_path(self.path))}
        return LENGTH_DISTRIBUTIONS[self.distribution](num_requests, rng, **params)


@dataclass
class TraceConfig:
    """A trace file to replay."""

    format: str = "csv"
    """azure (Azure LLM 2023 CSV), mooncake (FAST'25 JSONL) or csv (Baton's generic CSV)."""
    path: str = "sim/workload/fixtures/tiny_trace.csv"
    """Trace file, absolute or relative to the repository root."""
    spread_buckets: bool = True
    """mooncake: spread requests of a 3 s bucketed trace uniformly over their bucket."""
    bucket_s: float = 3.0
    """mooncake: bucket width, seconds."""

    def __post_init__(self) -> None:
        if self.format not in TRACE_FORMATS:
            raise ValueError(f"TraceConfig.format = {self.format!r} is unknown; use one of "
                             f"{', '.join(TRACE_FORMATS)}")
        if not self.path:
            raise ValueError("TraceConfig.path is empty; give the trace file")
        _positive("TraceConfig", "bucket_s", self.bucket_s)

    def load(self, rng: np.random.Generator, name: str | None = None) -> Workload:
        """Read the trace (``rng`` is only used to spread Mooncake buckets)."""
        path = resolve_path(self.path)
        if not path.is_file():
            raise FileNotFoundError(f"TraceConfig.path {self.path!r} -> {path} does not exist; "
                                    "the real traces live in ../shared/data/traces (optional)")
        if self.format == "azure":
            return load_azure_csv(path, name)
        if self.format == "mooncake":
            return load_mooncake_jsonl(path, self.spread_buckets, rng, self.bucket_s, name)
        return load_generic_csv(path, name)


@dataclass
class WorkloadConfig:
    """One workload: synthetic (arrival process x length distribution) or a trace."""

    name: str = "workload"
    """Label carried by the workload."""
    kind: str = "synthetic"
    """synthetic or trace."""
    num_requests: int = 1000
    """synthetic: number of requests generated."""
    arrival: ArrivalConfig = field(default_factory=ArrivalConfig)
    """synthetic: the arrival process."""
    lengths: LengthConfig = field(default_factory=LengthConfig)
    """synthetic: the length distribution."""
    trace: TraceConfig | None = None
    """trace: the file to replay."""
    rate_scale: float = 1.0
    """Multiply the arrival rate (arrival_s / rate_scale), applied after the window."""
    start_s: float = 0.0
    """Window start, seconds of the original time line."""
    duration_s: float | None = None
    """Window length, seconds; None = to the end."""
    max_requests: int | None = None
    """Keep at most this many requests (after window and scaling); None = all."""

    def __post_init__(self) -> None:
        if self.kind not in WORKLOAD_KINDS:
            raise ValueError(f"WorkloadConfig.kind = {self.kind!r} is unknown; use one of "
                             f"{', '.join(WORKLOAD_KINDS)}")
        if self.kind == "trace" and self.trace is None:
            raise ValueError("WorkloadConfig.trace is required when kind = 'trace'; add a "
                             "trace: {format: ..., path: ...} section")
        _positive_int("WorkloadConfig", "num_requests", self.num_requests)
        _positive("WorkloadConfig", "rate_scale", self.rate_scale)
        _positive("WorkloadConfig", "start_s", self.start_s, allow_zero=True)
        if self.duration_s is not None:
            _positive("WorkloadConfig", "duration_s", self.duration_s)
        if self.max_requests is not None:
            _positive_int("WorkloadConfig", "max_requests", self.max_requests)


def build_workload(cfg: WorkloadConfig, rng: np.random.Generator) -> Workload:
    """Build the workload a config describes.

    Synthetic: arrivals and lengths are drawn from two independent child generators spawned
    from ``rng`` (changing the arrival process leaves the lengths unchanged). Trace: the file is
    loaded. Then, for both: ``window(start_s, start_s + duration_s)`` (only when a window is
    set), ``scale_rate(rate_scale)``, ``head(max_requests)``.

    Args:
        cfg: the workload config.
        rng: the only source of randomness.

    Returns:
        The workload.

    Raises:
        ValueError: the window or ``max_requests`` leaves no request.
    """
    if cfg.kind == "trace":
        workload = cfg.trace.load(rng, cfg.name)
    else:
        arrival_rng, length_rng = rng.spawn(2)
        process = ARRIVAL_PROCESSES[cfg.arrival.process]
        arrival_s = process(cfg.num_requests, arrival_rng, **cfg.arrival.params())
        prompt, output = cfg.lengths.sample(cfg.num_requests, length_rng)
        workload = Workload(arrival_s, prompt, output, name=cfg.name)
    if cfg.start_s > 0 or cfg.duration_s is not None:
        end_s = None if cfg.duration_s is None else cfg.start_s + cfg.duration_s
        workload = workload.window(cfg.start_s, end_s)
    if cfg.rate_scale != 1.0:
        workload = workload.scale_rate(cfg.rate_scale)
    if cfg.max_requests is not None:
        workload = workload.head(cfg.max_requests)
    if len(workload) == 0:
        raise ValueError(f"workload {cfg.name!r} is empty after start_s = {cfg.start_s}, "
                         f"duration_s = {cfg.duration_s}; widen the window")
    return workload
