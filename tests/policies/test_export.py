"""ONNX export of SB3 policies and the onnxruntime loader: parity, format, error paths.

The env is a tiny synthetic one built here (Box obs, MultiDiscrete action, ``action_masks()``),
so these tests do not depend on ``envs/``. Models train for a few hundred seeded steps.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from policies.export import RESERVED_KEYS, export_policy, random_masks
from policies.onnx_policy import FORMAT, FORMAT_VERSION, OnnxPolicy

REPO = Path(__file__).resolve().parents[2]
NVEC = [8, 8, 5]  # Lead instance, Follow instance, split bin
D = 12
N_PARITY = 1000


class MaskedToyEnv(gym.Env):
    """Observations ~ N(3, 2^2) per feature (so VecNormalize matters), random valid masks.

    Reward: +1 if Lead == [obs[0] > 3], +1 if split bin == [obs[1] > 3]; 32-step episodes.
    """

    def __init__(self, nvec: list[int] = NVEC, obs_dim: int = D) -> None:
        self.nvec = list(nvec)
        self.observation_space = spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = spaces.MultiDiscrete(self.nvec)
        self._t = -1

    def _draw(self) -> None:
        d = self.observation_space.shape[0]
        self._obs = (3.0 + 2.0 * self.np_random.normal(size=d)).astype(np.float32)
        self._mask = random_masks(self.np_random, self.nvec, 1)[0]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        self._draw()
        return self._obs, {}

    def action_masks(self) -> np.ndarray:
        return self._mask

    def step(self, action):
        assert self._t >= 0, "call reset() before step()"
        r = float(action[0] == int(self._obs[0] > 3)) + float(action[-1] == int(self._obs[1] > 3))
        self._t += 1
        self._draw()
        return self._obs, r, False, self._t >= 32, {}


def _train(algo, seed: int = 0):
    env = VecNormalize(DummyVecEnv([MaskedToyEnv]), norm_reward=False)
    model = algo("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=2, seed=seed, device="cpu")
    model.learn(384)
    return model, env


@pytest.fixture(scope="module")
def single_thread_torch():
    old = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(old)


@pytest.fixture(scope="module")
def ppo(single_thread_torch):
    return _train(PPO)


@pytest.fixture(scope="module")
def maskable(single_thread_torch):
    return _train(MaskablePPO)


SIDECAR = {
    "observation": {"features": [f"f{i}" for i in range(D)], "scale": np.ones(D)},
    "action": {"dims": ["lead", "follow", "split_bin"]},
    "cluster": {"n_instances": 8, "gpu": "A100-SXM-80GB"},
}


@pytest.fixture(scope="module")
def ppo_export(ppo, tmp_path_factory):
    model, env = ppo
    path = export_policy(
        model, tmp_path_factory.mktemp("ppo") / "policy", sidecar=SIDECAR, vec_normalize=env
    )
    return path


@pytest.fixture(scope="module")
def maskable_export(maskable, tmp_path_factory):
    model, env = maskable
    d = tmp_path_factory.mktemp("maskable")
    return export_policy(model, d / "policy.onnx", sidecar={}, vec_normalize=env)


@pytest.fixture(scope="module")
def parity_inputs():
    rng = np.random.default_rng(123)
    obs = (3.0 + 2.0 * rng.normal(size=(N_PARITY, D))).astype(np.float32)
    return obs, random_masks(rng, NVEC, N_PARITY, p=0.4)


# ---------------------------------------------------------------------------- parity


def test_ppo_all_true_mask_reproduces_predict_with_vec_normalize(ppo, ppo_export, parity_inputs):
    model, env = ppo
    obs, _ = parity_inputs
    expected, _ = model.predict(env.normalize_obs(obs), deterministic=True)
    policy = OnnxPolicy.load(ppo_export)
    got = policy.act(obs)
    assert got.dtype == np.int64 and got.shape == (N_PARITY, len(NVEC))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(policy.act(obs, np.ones((N_PARITY, sum(NVEC)), bool)), expected)
    # Not degenerate: the actions vary across observations in every dimension.
    assert all(len(np.unique(expected[:, k])) > 1 for k in range(len(NVEC)))


def test_ppo_with_mask_is_masked_argmax_of_its_logits(ppo, ppo_export, parity_inputs):
    model, env = ppo
    obs, masks = parity_inputs
    with th.no_grad():
        x = th.as_tensor(env.normalize_obs(obs))
        latent = model.policy.mlp_extractor.forward_actor(model.policy.extract_features(x))
        logits = model.policy.action_net(latent).numpy()
    logits = np.where(masks, logits, -np.inf)
    expected = np.stack([b.argmax(axis=1) for b in np.split(logits, np.cumsum(NVEC)[:-1], 1)], 1)
    np.testing.assert_array_equal(OnnxPolicy.load(ppo_export).act(obs, masks), expected)


def test_maskable_ppo_reproduces_predict_with_masks_and_vec_normalize(
    maskable, maskable_export, parity_inputs
):
    model, env = maskable
    obs, masks = parity_inputs
    expected, _ = model.predict(env.normalize_obs(obs), deterministic=True, action_masks=masks)
    got = OnnxPolicy.load(maskable_export).act(obs, masks)
    np.testing.assert_array_equal(got, expected)
    assert masks[np.arange(N_PARITY)[:, None], got + np.r_[0, np.cumsum(NVEC)[:-1]]].all()


def test_maskable_ppo_without_vec_normalize_export_is_reproducible(
    maskable, parity_inputs, tmp_path
):
    model, _ = maskable  # the graph then takes the (already normalised) policy input as is
    obs, masks = parity_inputs
    obs = obs - 3.0
    path = export_policy(model, tmp_path / "raw", sidecar={})
    again = export_policy(model, tmp_path / "again.json", sidecar={})
    assert again == tmp_path / "again.onnx"
    assert again.read_bytes() == path.read_bytes()  # same model, same bytes
    policy = OnnxPolicy.load(path)
    assert policy.sidecar["vec_normalize"] is None
    expected, _ = model.predict(obs, deterministic=True, action_masks=masks)
    np.testing.assert_array_equal(policy.act(obs, masks), expected)


def test_single_observation_matches_batch_row(maskable_export, parity_inputs):
    obs, masks = parity_inputs
    policy = OnnxPolicy.load(maskable_export)
    batch = policy.act(obs[:20], masks[:20])
    for i in range(20):
        one = policy.act(obs[i], masks[i])
        assert one.shape == (len(NVEC),) and one.dtype == np.int64
        np.testing.assert_array_equal(one, batch[i])
    np.testing.assert_array_equal(policy.act(obs[0]), policy.act(obs[:1])[0])
    # float64 observations and 0/1 integer masks are accepted and give the same actions.
    np.testing.assert_array_equal(
        policy.act(obs[:20].astype(np.float64), masks[:20].astype(np.int8)), batch
    )


def test_thread_count_is_configurable(maskable_export, parity_inputs):
    obs, masks = parity_inputs
    one = OnnxPolicy.load(maskable_export).act(obs, masks)
    two = OnnxPolicy.load(maskable_export.with_suffix(".json"), intra_op_num_threads=2)
    np.testing.assert_array_equal(two.act(obs, masks), one)


# ---------------------------------------------------------------------------- artefacts


def test_sidecar_merges_caller_keys_with_export_facts(ppo, ppo_export):
    _, env = ppo
    files = sorted(p.name for p in ppo_export.parent.iterdir())
    assert files == ["policy.json", "policy.onnx"]  # no pickle, no external weights, no tmp
    side = json.loads(ppo_export.with_suffix(".json").read_text())
    assert set(RESERVED_KEYS) <= set(side)
    assert side["format"] == FORMAT and side["format_version"] == FORMAT_VERSION
    assert side["obs_dim"] == D and side["nvec"] == NVEC and side["algorithm"] == "PPO"
    assert side["onnx_sha256"] == hashlib.sha256(ppo_export.read_bytes()).hexdigest()
    assert side["inputs"]["obs"] == {"dtype": "float32", "shape": ["batch", D]}
    assert side["inputs"]["action_mask"] == {"dtype": "bool", "shape": ["batch", sum(NVEC)]}
    assert side["outputs"]["action"] == {"dtype": "int64", "shape": ["batch", len(NVEC)]}
    assert side["versions"]["torch"] == th.__version__
    assert side["versions"]["stable-baselines3"] and side["versions"]["baton"]
    vn = side["vec_normalize"]
    np.testing.assert_array_equal(vn["mean"], env.obs_rms.mean)
    np.testing.assert_array_equal(vn["var"], env.obs_rms.var)
    assert vn["epsilon"] == env.epsilon and vn["clip_obs"] == env.clip_obs
    # Caller keys verbatim (numpy converted); the loader exposes the same dict.
    assert side["cluster"] == SIDECAR["cluster"] and side["action"] == SIDECAR["action"]
    assert side["observation"]["scale"] == [1.0] * D
    policy = OnnxPolicy.load(ppo_export)
    assert policy.sidecar == side and policy.obs_dim == D and policy.nvec.tolist() == NVEC


def test_loader_needs_neither_torch_nor_sb3(ppo_export):
    code = (
        "import sys, numpy as np\n"
        "import policies.onnx_policy as m\n"
        "assert 'torch' not in sys.modules\n"
        f"p = m.OnnxPolicy.load({str(ppo_export)!r})\n"
        f"a = p.act(np.zeros({D}, np.float32))\n"
        "bad = [k for k in ('torch', 'stable_baselines3', 'sb3_contrib') if k in sys.modules]\n"
        "assert not bad, bad\n"
        "print(a.tolist())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == len(NVEC)


# ---------------------------------------------------------------------------- errors


@pytest.fixture
def policy(maskable_export):
    return OnnxPolicy.load(maskable_export)


@pytest.mark.parametrize(
    "obs, match",
    [
        (np.zeros(D + 1, np.float32), r"obs: shape \(13,\), expected \(12,\)"),
        (np.zeros((4, D - 1), np.float32), r"obs: shape \(4, 11\)"),
        (np.zeros((2, 2, D), np.float32), r"obs: shape"),
        (np.full(D, np.nan, np.float32), r"obs: non-finite"),
    ],
)
def test_bad_observation_names_the_field(policy, obs, match):
    with pytest.raises(ValueError, match=match):
        policy.act(obs)


def test_bad_observation_dtype(policy):
    with pytest.raises(TypeError, match="obs: dtype"):
        policy.act(np.array(["a"] * D))


def test_bad_masks_name_the_field(policy):
    obs = np.zeros((3, D), np.float32)
    with pytest.raises(ValueError, match=r"mask: shape \(20,\), expected \(21,\)"):
        policy.act(obs[0], np.ones(sum(NVEC) - 1, bool))
    with pytest.raises(ValueError, match=r"mask: shape \(21,\), expected \(3, 21\)"):
        policy.act(obs, np.ones(sum(NVEC), bool))
    with pytest.raises(TypeError, match="mask: dtype float64"):
        policy.act(obs[0], np.full(sum(NVEC), 0.5))
    mask = np.ones((3, sum(NVEC)), bool)
    mask[1, 16:] = False  # the split-bin dimension of row 1
    with pytest.raises(ValueError, match="mask: action dimension 2 .* in row 1"):
        policy.act(obs, mask)


def _copy(export: Path, dest: Path) -> Path:
    for suffix in (".onnx", ".json"):
        shutil.copy(export.with_suffix(suffix), dest / ("p" + suffix))
    return dest / "p.onnx"


def test_missing_files(maskable_export, tmp_path):
    path = _copy(maskable_export, tmp_path)
    path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match=r"JSON sidecar .*p\.json not found"):
        OnnxPolicy.load(path)
    with pytest.raises(FileNotFoundError, match=r"ONNX graph .*nope\.onnx not found"):
        OnnxPolicy.load(tmp_path / "nope.json")


def test_hash_mismatch_between_sidecar_and_graph(maskable_export, ppo_export, tmp_path):
    path = _copy(maskable_export, tmp_path)
    shutil.copy(ppo_export, path)  # a graph from another export
    with pytest.raises(ValueError, match="onnx_sha256: .* re-export both"):
        OnnxPolicy.load(path)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda s: s.pop("onnx_sha256"), r"missing keys \['onnx_sha256'\]"),
        (lambda s: s.update(format_version=99), "format_version: .* 99"),
        (lambda s: s.update(format="other"), "format: "),
        (lambda s: s.update(nvec=[8, 8]), r"'action_mask' is tensor\(bool\) \[.*, 21\]"),
        (lambda s: s.update(obs_dim=0), "obs_dim: "),
    ],
)
def test_malformed_sidecar(maskable_export, tmp_path, edit, match):
    path = _copy(maskable_export, tmp_path)
    side = json.loads(path.with_suffix(".json").read_text())
    edit(side)
    path.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(ValueError, match=match):
        OnnxPolicy.load(path)


def test_export_rejects_bad_arguments(maskable, tmp_path):
    model, env = maskable
    with pytest.raises(ValueError, match=r"sidecar: keys \['nvec'\] are written by"):
        export_policy(model, tmp_path / "p", sidecar={"nvec": [1]})
    with pytest.raises(TypeError, match="sidecar: a value of type object"):
        export_policy(model, tmp_path / "p", sidecar={"x": object()})
    with pytest.raises(ValueError, match="sidecar: .*NaN"):
        export_policy(model, tmp_path / "p", sidecar={"x": float("nan")})
    with pytest.raises(TypeError, match="vec_normalize: DummyVecEnv is not a VecNormalize"):
        export_policy(model, tmp_path / "p", sidecar={}, vec_normalize=env.venv)
    discrete = PPO("MlpPolicy", gym.make("CartPole-v1"), device="cpu")
    with pytest.raises(TypeError, match="model.action_space: Discrete"):
        export_policy(discrete, tmp_path / "p", sidecar={})
    assert not list(tmp_path.iterdir())  # nothing written on bad input
