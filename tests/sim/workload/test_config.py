"""Workload configs: validation, every conf/workload/*.yaml, build_workload semantics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from sim.workload import (
    REPO_ROOT,
    ArrivalConfig,
    LengthConfig,
    TraceConfig,
    WorkloadConfig,
    build_workload,
    load_generic_csv,
)
from tests.sim.workload.conftest import SHARED_DATA

CONF_DIR = REPO_ROOT / "conf" / "workload"
YAMLS = sorted(CONF_DIR.glob("*.yaml"))


def _load(path: Path) -> WorkloadConfig:
    merged = OmegaConf.merge(OmegaConf.structured(WorkloadConfig), OmegaConf.load(path))
    return OmegaConf.to_object(merged)


def test_every_group_file_exists():
    names = {p.stem for p in YAMLS}
    assert names >= {"poisson", "bursty", "mmpp", "diurnal", "fixed", "sharegpt", "azure_code",
                     "azure_conv", "mooncake", "trace_csv"}
    for path in YAMLS:
        assert path.read_text().startswith("# "), f"{path.name} must start with a comment"


@pytest.mark.parametrize("path", YAMLS, ids=[p.stem for p in YAMLS])
def test_yaml_loads_and_builds(path):
    cfg = _load(path)
    assert isinstance(cfg, WorkloadConfig) and cfg.name == path.stem
    if cfg.kind == "trace" and "../shared" in cfg.trace.path and not SHARED_DATA.is_dir():
        pytest.skip(f"{path.name} needs {SHARED_DATA}")
    if cfg.kind == "synthetic":
        cfg.num_requests = 200
    else:
        cfg.max_requests = 500
    w = build_workload(cfg, np.random.default_rng(0))
    assert 0 < len(w) <= 500 and w.name == path.stem
    assert np.all(np.diff(w.arrival_s) >= 0)


def test_yaml_rates():
    for stem in ("poisson", "bursty", "mmpp", "diurnal"):
        cfg = _load(CONF_DIR / f"{stem}.yaml")
        cfg.num_requests = 5000
        w = build_workload(cfg, np.random.default_rng(0))
        tolerance = 0.1 if stem == "poisson" else 0.35
        assert w.rate_per_s == pytest.approx(2.0, rel=tolerance), stem
    assert _load(CONF_DIR / "bursty.yaml").arrival.cv == 4.0


def test_fixed_yaml_is_distserve_example():
    w = build_workload(_load(CONF_DIR / "fixed.yaml"), np.random.default_rng(0))
    assert set(w.prompt_tokens.tolist()) == {512} and set(w.output_tokens.tolist()) == {64}


def test_same_seed_same_workload_and_lengths_independent_of_arrivals():
    cfg = WorkloadConfig(num_requests=300)
    a = build_workload(cfg, np.random.default_rng(5))
    b = build_workload(cfg, np.random.default_rng(5))
    c = build_workload(cfg, np.random.default_rng(6))
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    assert not np.array_equal(a.arrival_s, c.arrival_s)
    bursty = WorkloadConfig(num_requests=300, arrival=ArrivalConfig(process="gamma", cv=3.0))
    d = build_workload(bursty, np.random.default_rng(5))
    np.testing.assert_array_equal(a.prompt_tokens, d.prompt_tokens)


def test_trace_window_scale_head_order():
    trace = TraceConfig(format="csv", path="sim/workload/fixtures/tiny_trace.csv")
    full = load_generic_csv(REPO_ROOT / trace.path)
    cfg = WorkloadConfig(name="t", kind="trace", trace=trace, start_s=20.0, duration_s=30.0,
                         rate_scale=2.0, max_requests=10)
    w = build_workload(cfg, np.random.default_rng(0))
    expected = full.window(20.0, 50.0).scale_rate(2.0).head(10)
    np.testing.assert_array_equal(w.arrival_s, expected.arrival_s)
    np.testing.assert_array_equal(w.hash_ids, expected.hash_ids)
    assert len(w) == 10 and w.arrival_s[-1] < 15.0


def test_empty_window_raises():
    cfg = WorkloadConfig(kind="trace", trace=TraceConfig(), start_s=1e6)
    with pytest.raises(ValueError, match="empty"):
        build_workload(cfg, np.random.default_rng(0))


def test_missing_trace_file_says_where():
    cfg = WorkloadConfig(kind="trace", trace=TraceConfig(path="nope/missing.csv"))
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        build_workload(cfg, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda: ArrivalConfig(process="weibull"), r"process = 'weibull'.*poisson, gamma"),
        (lambda: ArrivalConfig(rate_per_s=-1.0), "ArrivalConfig.rate_per_s"),
        (lambda: ArrivalConfig(amplitude_frac=2.0), "ArrivalConfig.amplitude_frac"),
        (lambda: LengthConfig(distribution="zipf"), r"distribution = 'zipf'.*fixed, lognormal"),
        (lambda: LengthConfig(distribution="empirical"), "LengthConfig.path"),
        (lambda: LengthConfig(prompt_cv=-0.1), "LengthConfig.prompt_cv"),
        (lambda: LengthConfig(min_tokens=5000, max_output_tokens=2048), "min_tokens"),
        (lambda: TraceConfig(format="parquet"), r"format = 'parquet'.*azure, mooncake, csv"),
        (lambda: WorkloadConfig(kind="replay"), r"kind = 'replay'.*synthetic, trace"),
        (lambda: WorkloadConfig(kind="trace"), "WorkloadConfig.trace"),
        (lambda: WorkloadConfig(num_requests=0), "WorkloadConfig.num_requests"),
        (lambda: WorkloadConfig(rate_scale=0.0), "WorkloadConfig.rate_scale"),
        (lambda: WorkloadConfig(duration_s=-1.0), "WorkloadConfig.duration_s"),
        (lambda: WorkloadConfig(max_requests=0), "WorkloadConfig.max_requests"),
    ],
)
def test_config_errors_name_the_field(build, pattern):
    with pytest.raises(ValueError, match=pattern):
        build()


def test_omegaconf_error_reaches_user():
    bad = OmegaConf.merge(OmegaConf.structured(WorkloadConfig),
                          {"arrival": {"process": "weibull"}})
    with pytest.raises(ValueError, match="ArrivalConfig.process"):
        OmegaConf.to_object(bad)
