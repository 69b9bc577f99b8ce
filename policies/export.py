"""Export a trained SB3 policy to a distribution-free ONNX actor plus a JSON sidecar.

The exported graph is what the live router runs (through :mod:`policies.onnx_policy`, which
needs only numpy and onnxruntime). It maps an observation and an action mask to the
deterministic action, i.e. what ``model.predict(obs, deterministic=True)`` returns::

    obs          float32 [batch, D]          raw env observation (VecNormalize baked in)
    action_mask  bool    [batch, sum(nvec)]  True = allowed; sb3-contrib layout:
                                             |- nvec[0] -|- nvec[1] -|- ... -|
       |
       |  (obs.double() - mean) / sqrt(var + eps), clip to +-clip_obs, .float()   if VecNormalize
       v
    pi_features_extractor -> mlp_extractor.forward_actor -> action_net  => logits [batch, sum(nvec)]
       |
       |  logits[~action_mask] = -inf, split per dimension, argmax of each (first index on ties)
       v
    action       int64   [batch, len(nvec)]

For plain PPO the mask input still exists; an all-True mask gives PPO's own deterministic
action. Output files are ``<path>.onnx`` (ONNX protobuf, weights inside, no external data) and
``<path>.json`` (the sidecar, keys in :data:`RESERVED_KEYS` plus the caller's). Nothing is
pickled.

Why not the recipe in SB3's docs (``th.onnx.export(OnnxableSB3Policy(policy), ...)`` where
``forward`` calls ``policy(obs, deterministic=True)``): since torch 2.9 ``th.onnx.export``
defaults to ``dynamo=True``, which captures the model with ``torch.export``. The policy's
forward builds ``torch.distributions.Categorical`` objects, whose argument validation runs
``if not torch._is_all_true(valid): raise`` -- a Python branch on tensor *data*, which
``torch.export`` cannot trace (``GuardOnDataDependentSymNode: Could not guard on
data-dependent expression Eq(u0, 1)``). The legacy TorchScript tracer (``dynamo=False``) still
gets through the recipe (it evaluates the check once, at trace time), but it is deprecated, and
the recipe's graph has a batch fixed at 1, no mask input, and also the value head, softmaxes
and log-probabilities nobody uses. So we export a small wrapper module
that touches only the actor's layers and plain tensor ops (no distributions, no data-dependent
control flow) with the default dynamo exporter, and make it robust by: a batch of 2 for the
example input (``torch.export`` specialises sizes 0 and 1), a named dynamic ``batch`` axis, a
pinned opset, weights embedded in one file, ``onnx.checker`` and a parity check of the
exported file in onnxruntime against the torch wrapper before returning.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch as th
from gymnasium import spaces
from torch import nn

from policies.onnx_policy import (
    ACTION_OUTPUT,
    FORMAT,
    FORMAT_VERSION,
    MASK_INPUT,
    OBS_INPUT,
    policy_paths,
)

OPSET = 20
"""ONNX opset of the exported graph (torch 2.13's dynamo default; onnxruntime 1.32 runs it)."""
RESERVED_KEYS = (
    "format",
    "format_version",
    "onnx_sha256",
    "opset",
    "obs_dim",
    "nvec",
    "inputs",
    "outputs",
    "masked_logit",
    "algorithm",
    "vec_normalize",
    "exporter",
    "versions",
)
"""Sidecar keys written by :func:`export_policy`; the caller's ``sidecar`` must not use them."""

_VERIFY_BATCH = 64
_VERIFY_LOGIT_ATOL = 1e-5


class DeterministicActor(nn.Module):
    """Observation (+ optional baked-in VecNormalize) and mask to the deterministic action.

    Only plain tensor ops, so ``torch.export`` (the dynamo ONNX exporter) traces it.

    Args:
        policy: an SB3 ``ActorCriticPolicy`` (PPO, A2C) or sb3-contrib
            ``MaskableActorCriticPolicy`` with a MultiDiscrete action space; its actor layers
            are deep-copied to CPU, so the model is left untouched.
        nvec: (n_dims,) number of choices per action dimension.
        obs_mean: (D,) float64 VecNormalize running mean, or None for no normalisation.
        obs_var: (D,) float64 VecNormalize running variance (with ``obs_mean``).
        epsilon: VecNormalize's epsilon added to the variance.
        clip_obs: VecNormalize's clip of the normalised observation, in standard deviations.
    """

    def __init__(
        self,
        policy: nn.Module,
        nvec: list[int],
        obs_mean: np.ndarray | None = None,
        obs_var: np.ndarray | None = None,
        epsilon: float = 1e-8,
        clip_obs: float = 10.0,
    ) -> None:
        super().__init__()
        self.features_extractor = copy.deepcopy(policy.pi_features_extractor).cpu()
        self.mlp_extractor = copy.deepcopy(policy.mlp_extractor).cpu()
        self.action_net = copy.deepcopy(policy.action_net).cpu()
        self.split_sizes = [int(n) for n in nvec]
        self.normalize = obs_mean is not None
        if self.normalize:
            # float64 like VecNormalize.normalize_obs, so the rounding matches it exactly.
            self.register_buffer("obs_mean", th.as_tensor(np.asarray(obs_mean, np.float64)))
            std = np.sqrt(np.asarray(obs_var, np.float64) + float(epsilon))
            self.register_buffer("obs_std", th.as_tensor(std))
            self.clip_obs = float(clip_obs)

    def logits(self, obs: th.Tensor) -> th.Tensor:
        """Unmasked action logits, (batch, sum(nvec)) float32, of raw observations (batch, D)."""
        x = obs
        if self.normalize:
            x = ((obs.double() - self.obs_mean) / self.obs_std).clamp(-self.clip_obs, self.clip_obs)
            x = x.float()
        return self.action_net(self.mlp_extractor.forward_actor(self.features_extractor(x)))

    def forward(self, obs: th.Tensor, action_mask: th.Tensor) -> th.Tensor:
        """Per-dimension argmax of the masked logits: (batch, n_dims) int64."""
        logits = self.logits(obs).masked_fill(~action_mask, float("-inf"))
        parts = th.split(logits, self.split_sizes, dim=1)
        return th.cat([p.argmax(dim=1, keepdim=True) for p in parts], dim=1)


def export_policy(
    model: Any,
    path_onnx: str | Path,
    *,
    sidecar: dict[str, Any],
    vec_normalize: Any = None,
) -> Path:
    """Write ``<path>.onnx`` (deterministic actor) and ``<path>.json`` (sidecar).

    Args:
        model: a trained ``stable_baselines3.PPO``/``A2C`` or ``sb3_contrib.MaskablePPO`` with
            a 1-D ``Box`` observation space and a ``MultiDiscrete`` action space.
        path_onnx: output path; ``run/policy``, ``run/policy.onnx`` and ``run/policy.json``
            all give ``run/policy.onnx`` + ``run/policy.json``. Parent folders are created.
        sidecar: the caller's JSON-serialisable description (observation layout,
            normalisation, action layout, cluster shape...), stored verbatim at the top level
            next to :data:`RESERVED_KEYS`. Numpy arrays and scalars are converted to lists and
            numbers.
        vec_normalize: the ``VecNormalize`` the model was trained behind, or None. Its
            observation normalisation (mean, var, epsilon, clip_obs) is baked into the graph,
            so the ONNX input is the raw env observation, and recorded under
            ``vec_normalize``. Reward normalisation is irrelevant for acting and ignored.

    Returns:
        The path of the written ``.onnx`` file.

    Raises:
        TypeError: unsupported model, spaces or VecNormalize, or a non-serialisable sidecar.
        ValueError: ``sidecar`` uses a reserved key or holds NaN/inf, or VecNormalize's shape
            does not match the model.
        RuntimeError: torch.export cannot trace the actor (a custom, untraceable features
            extractor), or the exported graph disagrees with the torch actor (exporter bug).
    """
    policy, obs_dim, nvec = _check_model(model)
    if not isinstance(sidecar, dict):
        raise TypeError(f"sidecar: expected a dict, got {type(sidecar).__name__}; pass {{}}")
    clash = sorted(set(sidecar) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(
            f"sidecar: keys {clash} are written by export_policy; rename them "
            f"(reserved: {list(RESERVED_KEYS)})"
        )
    try:
        caller = json.loads(json.dumps(sidecar, default=_json_default, allow_nan=False))
    except ValueError as e:  # NaN or inf somewhere (JSON has no such numbers)
        raise ValueError(f"sidecar: {e}; store NaN/inf as null or a string") from e
    vn_meta, vn_kwargs = _vec_normalize_params(vec_normalize, obs_dim)

    onnx_path, json_path = policy_paths(path_onnx)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)

    # Write beside the target and rename once verified, so a failed export never leaves a
    # new graph next to an old sidecar.
    tmp_onnx = onnx_path.with_name(onnx_path.name + ".tmp")
    try:
        actor = DeterministicActor(policy, nvec, **vn_kwargs).eval()
        _torch_export(actor, obs_dim, int(sum(nvec)), tmp_onnx)
        onnx.checker.check_model(str(tmp_onnx), full_check=True)
        _verify(actor, tmp_onnx, obs_dim, nvec)
        digest = hashlib.sha256(tmp_onnx.read_bytes()).hexdigest()
        tmp_onnx.replace(onnx_path)
    finally:
        tmp_onnx.unlink(missing_ok=True)

    n_dims, n_mask = len(nvec), int(sum(nvec))
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "onnx_sha256": digest,
        "opset": OPSET,
        "obs_dim": obs_dim,
        "nvec": nvec,
        "inputs": {
            OBS_INPUT: {"dtype": "float32", "shape": ["batch", obs_dim]},
            MASK_INPUT: {"dtype": "bool", "shape": ["batch", n_mask]},
        },
        "outputs": {ACTION_OUTPUT: {"dtype": "int64", "shape": ["batch", n_dims]}},
        "masked_logit": "-inf",
        "algorithm": type(model).__name__,
        "vec_normalize": vn_meta,
        "exporter": "torch.onnx.export(dynamo=True)",
        "versions": _versions(),
    }
    text = json.dumps({**meta, **caller}, indent=2, allow_nan=False)
    json_path.write_text(text + "\n", encoding="utf-8")
    return onnx_path


def _check_model(model: Any) -> tuple[nn.Module, int, list[int]]:
    """The model's policy, observation dimension and ``nvec``; raises on unsupported models."""
    policy = getattr(model, "policy", None)
    needed = ("pi_features_extractor", "mlp_extractor", "action_net")
    if policy is None or not all(hasattr(policy, a) for a in needed):
        raise TypeError(
            f"model: {type(model).__name__} has no actor-critic policy with {needed}; "
            "export a stable_baselines3 PPO/A2C or sb3_contrib MaskablePPO"
        )
    obs_space, act_space = policy.observation_space, policy.action_space
    if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
        raise TypeError(
            f"model.observation_space: {obs_space} is not a 1-D Box; the exported graph takes "
            "a flat float32 vector (flatten the observation in the env)"
        )
    if not isinstance(act_space, spaces.MultiDiscrete) or act_space.nvec.ndim != 1:
        raise TypeError(
            f"model.action_space: {act_space} is not a 1-D MultiDiscrete; "
            "use MultiDiscrete([n]) for a single choice"
        )
    if np.any(np.asarray(act_space.start) != 0):
        raise TypeError(f"model.action_space: start={act_space.start} must be 0 to export")
    return policy, int(obs_space.shape[0]), [int(n) for n in act_space.nvec]


def _vec_normalize_params(vec_normalize: Any, obs_dim: int) -> tuple[dict | None, dict]:
    """Sidecar record and :class:`DeterministicActor` kwargs for a VecNormalize (or None)."""
    if vec_normalize is None:
        return None, {}
    rms = getattr(vec_normalize, "obs_rms", None)
    if rms is None or not hasattr(vec_normalize, "clip_obs"):
        raise TypeError(
            f"vec_normalize: {type(vec_normalize).__name__} is not a VecNormalize; pass the "
            "VecNormalize the model was trained behind, or None"
        )
    if not vec_normalize.norm_obs:
        return {"norm_obs": False}, {}
    if isinstance(rms, dict):
        raise TypeError("vec_normalize: dict observations are not supported; use a flat Box")
    mean, var = np.asarray(rms.mean, np.float64), np.asarray(rms.var, np.float64)
    if mean.shape != (obs_dim,) or var.shape != (obs_dim,):
        raise ValueError(
            f"vec_normalize.obs_rms: mean/var shapes {mean.shape}/{var.shape} do not match the "
            f"model's observation ({obs_dim},); pass the VecNormalize of this model's env"
        )
    eps, clip = float(vec_normalize.epsilon), float(vec_normalize.clip_obs)
    meta = {
        "norm_obs": True,
        "baked_into_graph": True,
        "mean": mean.tolist(),
        "var": var.tolist(),
        "epsilon": eps,
        "clip_obs": clip,
        "formula": "clip((obs - mean) / sqrt(var + epsilon), -clip_obs, clip_obs) in float64",
    }
    return meta, {"obs_mean": mean, "obs_var": var, "epsilon": eps, "clip_obs": clip}


def _torch_export(actor: DeterministicActor, obs_dim: int, n_mask: int, path: Path) -> None:
    """Run torch's dynamo ONNX exporter on ``actor`` with a dynamic batch axis."""
    # Batch 2, not 1: torch.export specialises dimensions of size 0 and 1 to constants.
    example = (th.zeros(2, obs_dim), th.ones(2, n_mask, dtype=th.bool))
    batch = th.export.Dim("batch")
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms"
    try:
        with th.no_grad(), warnings.catch_warnings():
            # Noise from torch's own internals on every export, not about our model.
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r"# The axis name: batch will not be used")
            th.onnx.export(
                actor,
                example,
                str(path),
                dynamo=True,
                opset_version=OPSET,
                input_names=[OBS_INPUT, MASK_INPUT],
                output_names=[ACTION_OUTPUT],
                dynamic_shapes={"obs": {0: batch}, "action_mask": {0: batch}},
                external_data=False,
                optimize=True,
                verbose=False,
            )
    except Exception as e:
        raise RuntimeError(
            f"torch.onnx.export(dynamo=True) failed on the actor ({e.__class__.__name__}); the "
            "features extractor and MLP must be traceable by torch.export (no Python branches "
            "on tensor values). Full error above."
        ) from e
    finally:
        quiet.setLevel(level)


def _verify(actor: DeterministicActor, path: Path, obs_dim: int, nvec: list[int]) -> None:
    """Run the exported file in onnxruntime and compare with the torch actor.

    Raises:
        RuntimeError: an action differs and the torch logits are not a near-tie there.
    """
    rng = np.random.default_rng(0)
    obs = rng.normal(0.0, 2.0, (_VERIFY_BATCH, obs_dim)).astype(np.float32)
    mask = random_masks(rng, nvec, _VERIFY_BATCH)
    mask[0] = True  # at least one unmasked row
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = np.concatenate(
        [
            sess.run(None, {OBS_INPUT: obs[:1], MASK_INPUT: mask[:1]})[0],  # batch 1 too
            sess.run(None, {OBS_INPUT: obs[1:], MASK_INPUT: mask[1:]})[0],
        ]
    )
    with th.no_grad():
        logits = actor.logits(th.as_tensor(obs)).numpy()
    logits = np.where(mask, logits, -np.inf)
    offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
    for k, (off, n) in enumerate(zip(offsets, nvec, strict=True)):
        block = logits[:, off : off + n]
        chosen = block[np.arange(len(block)), np.clip(got[:, k], 0, n - 1)]
        bad = (got[:, k] < 0) | (got[:, k] >= n) | (chosen < block.max(axis=1) - _VERIFY_LOGIT_ATOL)
        if bad.any():
            raise RuntimeError(
                f"exported {path} disagrees with the torch actor on action dimension {k} for "
                f"{int(bad.sum())}/{len(bad)} verification rows (onnx {got[bad, k][:5]}, torch "
                f"{block.argmax(axis=1)[bad][:5]}); this is an exporter bug, please report it"
            )


def random_masks(rng: np.random.Generator, nvec: list[int], n: int, p: float = 0.5) -> np.ndarray:
    """Random action masks, (n, sum(nvec)) bool, each dimension keeping >= 1 valid entry.

    Args:
        rng: the random source.
        nvec: (n_dims,) choices per action dimension.
        n: number of masks.
        p: probability that an entry is valid before the at-least-one fix.
    """
    parts = []
    for size in nvec:
        m = rng.random((n, size)) < p
        m[np.arange(n), rng.integers(0, size, n)] = True
        parts.append(m)
    return np.concatenate(parts, axis=1)


def _versions() -> dict[str, str]:
    """Versions of the packages that produced the export (``None`` when not installed)."""
    out = {}
    for name in ("baton", "torch", "stable-baselines3", "sb3-contrib", "onnx", "onnxscript"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _json_default(x: Any) -> Any:
    """``json.dumps`` hook: numpy arrays to lists, numpy scalars and Paths to plain values."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(
        f"sidecar: a value of type {type(x).__name__} is not JSON-serialisable; "
        "convert it to lists, numbers, strings or dicts"
    )
