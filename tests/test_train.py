"""train.py: Hydra composition, config errors, heuristic-only runs, and a short real training."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from envs import RoutingEnv
from policies.run import TrainAppConfig, run
from policies.sb3_train import PolicyConfig, TrainConfig, find_checkpoint
from tests.hydra_entry import REPO, import_entry
from tests.hydra_entry import compose as hydra_compose

TINY = ["train=smoke", "eval=smoke", "env.episode.requests_per_episode=64"]


@pytest.fixture(scope="module", autouse=True)
def train_module():
    """Import train.py by path: registers ``train_schema`` in Hydra's ConfigStore."""
    return import_entry("train.py")


def compose(*overrides: str) -> TrainAppConfig:
    """Compose conf/train.yaml with ``overrides`` into a TrainAppConfig."""
    return hydra_compose("train", *overrides)


def test_defaults_compose_to_the_embedded_training_setup():
    cfg = compose()
    assert isinstance(cfg, TrainAppConfig)
    assert cfg.policy.algo == "PPO" and cfg.policy.kwargs["policy_kwargs"]["net_arch"] == [128, 128]
    assert cfg.workload.name == "bursty" and cfg.workload.rate_scale == 8.0
    assert cfg.other_workload.name == "mmpp" and cfg.other_workload.rate_scale == 8.0
    assert cfg.cluster.num_gpus_used() == 8
    env = cfg.env_config()
    assert env.slo.ttft_s == 1.0 and env.sim.output_prediction_cv == 0.3


@pytest.mark.parametrize("override, match", [
    (["train.n_envs=0"], "train.n_envs"),
    (["+policy.kwargs.learning_rat=0.1"], "learning_rat"),
    (["policy=maskable_ppo", "policy.algo=DQN"], "policy.algo"),
    (["eval.rate_scales=[2.0,1.0]"], "ascending"),
    (["env.mode=colocated"], "env.mode"),
])
def test_bad_values_fail_at_load_naming_the_field(override, match):
    with pytest.raises((ValueError, ValidationError), match=match):
        compose(*override)


def test_unknown_keys_and_groups_fail_at_composition():
    with pytest.raises(ConfigCompositionException):
        compose("train.timesteps=10")
    with pytest.raises(ConfigCompositionException):
        compose("policy=sac")


def test_heuristic_policy_evaluates_without_training(tmp_path):
    summary = run(compose(*TINY, "policy=distserve"), tmp_path)
    assert summary["kind"] == "heuristic" and "train_wall_s" not in summary
    assert not (tmp_path / "policy.onnx").exists()
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "| distserve |" in text and "Workload `mmpp`" in text


@pytest.mark.slow
def test_short_training_exports_a_policy_that_loads_and_acts(tmp_path):
    summary = run(compose(*TINY), tmp_path)
    assert summary["timesteps"] >= 4096 and summary["parity_onnx_vs_sb3"] == 1.0
    for f in ("policy.onnx", "policy.json", "final_model.zip", "summary.json",
              "eval/report.md", "eval/summary.csv", "eval/eval_bursty.png"):
        assert (tmp_path / f).is_file(), f
    assert list((tmp_path / "tb").rglob("events.out.tfevents*"))
    assert "## Verdict" in (tmp_path / "eval" / "report.md").read_text()
    # the exported policy runs without torch: load it in a clean interpreter and act
    code = (
        "import sys, json, numpy as np\n"
        "from policies.onnx_policy import OnnxPolicy\n"
        "from sim.features import ObservationEncoder\n"
        f"p = OnnxPolicy.load({str(tmp_path / 'policy.onnx')!r})\n"
        "enc = ObservationEncoder.from_layout(p.sidecar['baton']['observation'])\n"
        "a = p.act(np.zeros(enc.obs_dim, np.float32), np.ones(sum(enc.nvec), bool))\n"
        "assert 'torch' not in sys.modules and len(a) == len(enc.nvec)\n"
        "print(json.dumps([int(x) for x in a]))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True)
    assert len(json.loads(out.stdout)) == 3
    # resume continues from the newest checkpoint instead of starting over
    ckpt = find_checkpoint(tmp_path)
    assert ckpt.name == "final_model.zip"          # saved after the last periodic checkpoint
    assert find_checkpoint(tmp_path / "checkpoints" / "ppo_2048_steps.zip").is_file()
    more = run(compose(*TINY, "train.total_timesteps=6144", f"train.resume_from={tmp_path}"),
               tmp_path / "resumed")
    assert more["timesteps"] >= 6144
    # it continued: its first periodic checkpoint is past the resumed 4096 steps
    ckpts = sorted(int(p.stem.split("_")[-2]) for p in
                   (tmp_path / "resumed" / "checkpoints").glob("*_steps.zip"))
    assert ckpts and ckpts[0] > 4096


def test_train_and_policy_configs_validate_directly():
    with pytest.raises(ValueError, match="policy.kwargs \\['n_step'\\]"):
        PolicyConfig(kwargs={"n_step": 64})
    with pytest.raises(ValueError, match="train.vec_env"):
        TrainConfig(vec_env="ray")
    with pytest.raises(ValueError, match="train.warm_start_steps"):
        TrainConfig(warm_start="distserve", warm_start_steps=0)
    with pytest.raises(FileNotFoundError, match="resume_from"):
        find_checkpoint("/nonexistent/run")
    env = RoutingEnv(compose(*TINY).env_config())
    obs, _ = env.reset(seed=0)
    assert np.isfinite(obs).all()
