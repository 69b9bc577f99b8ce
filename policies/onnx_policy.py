"""Run an exported policy (``<name>.onnx`` + ``<name>.json``) with onnxruntime only.

This is the live router's way to act: numpy, onnxruntime and json, no torch, no
stable-baselines3, no pickle (a test checks that importing this module leaves torch
unloaded). :mod:`policies.export` writes the files; this module owns their format constants.

Inputs of :meth:`OnnxPolicy.act`, for an action space ``MultiDiscrete(nvec)``::

    obs   float32 (D,) or (N, D)                raw env observation (VecNormalize is in the graph)
    mask  bool (sum(nvec),) or (N, sum(nvec))   True = allowed, dimensions concatenated:
          |- nvec[0] entries -|- nvec[1] entries -|- ... -|      (sb3-contrib's layout)
    ->    int64 (len(nvec),) or (N, len(nvec))  per dimension, the valid choice of largest logit
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

FORMAT = "baton.onnx_policy"
"""Value of the sidecar's ``format`` key."""
FORMAT_VERSION = 1
"""Sidecar/graph format this loader reads; bumped when inputs, outputs or keys change meaning."""
OBS_INPUT = "obs"
"""Graph input: float32 [batch, obs_dim]."""
MASK_INPUT = "action_mask"
"""Graph input: bool [batch, sum(nvec)]."""
ACTION_OUTPUT = "action"
"""Graph output: int64 [batch, len(nvec)]."""

_ORT_TYPES = {
    OBS_INPUT: "tensor(float)",
    MASK_INPUT: "tensor(bool)",
    ACTION_OUTPUT: "tensor(int64)",
}
_REQUIRED_KEYS = ("format", "format_version", "onnx_sha256", "obs_dim", "nvec")


def policy_paths(path: str | Path) -> tuple[Path, Path]:
    """The ``(.onnx, .json)`` pair for ``path``: ``run/p``, ``run/p.onnx`` or ``run/p.json``."""
    p = Path(path)
    if p.suffix in (".onnx", ".json"):
        p = p.with_suffix("")
    return p.parent / (p.name + ".onnx"), p.parent / (p.name + ".json")


class OnnxPolicy:
    """A deterministic exported policy: observation (+ mask) to MultiDiscrete action.

    Build it with :meth:`load`. Attributes ``obs_dim`` (D), ``nvec`` ((n_dims,) int64,
    read-only) and ``sidecar`` (a copy of the JSON sidecar, caller keys included).
    """

    def __init__(self, session: ort.InferenceSession, sidecar: dict[str, Any]) -> None:
        self._session = session
        self._sidecar = sidecar
        self.obs_dim = int(sidecar["obs_dim"])
        nvec = np.asarray(sidecar["nvec"], dtype=np.int64)
        nvec.setflags(write=False)
        self.nvec = nvec
        self._n_mask = int(nvec.sum())
        # Start of each dimension's block in the flat mask, for np.logical_or.reduceat.
        self._offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]]).astype(np.intp)
        self._ones1 = np.ones((1, self._n_mask), dtype=bool)
        self._outputs = [ACTION_OUTPUT]

    @property
    def sidecar(self) -> dict[str, Any]:
        """A deep copy of the sidecar (exporter keys and the caller's)."""
        return copy.deepcopy(self._sidecar)

    @property
    def session(self) -> ort.InferenceSession:
        """The onnxruntime session (inputs ``obs``, ``action_mask``; output ``action``)."""
        return self._session

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        intra_op_num_threads: int = 1,
        session_options: ort.SessionOptions | None = None,
        providers: list[str] | None = None,
    ) -> OnnxPolicy:
        """Load ``<name>.onnx`` and ``<name>.json`` and check that they belong together.

        Args:
            path: the ``.onnx`` file, the ``.json`` sidecar, or their common stem.
            intra_op_num_threads: onnxruntime threads per call; 1 (default) gives the lowest
                latency for one decision on a busy host. Ignored if ``session_options`` given.
            session_options: full onnxruntime options, used as given.
            providers: onnxruntime execution providers; default ``["CPUExecutionProvider"]``.

        Returns:
            The policy.

        Raises:
            FileNotFoundError: the ``.onnx`` or ``.json`` file is missing.
            ValueError: the sidecar is malformed or of another format/version, its
                ``onnx_sha256`` does not match the ``.onnx`` file, or the graph's inputs and
                outputs disagree with it.
        """
        onnx_path, json_path = policy_paths(path)
        for p, what in ((onnx_path, "ONNX graph"), (json_path, "JSON sidecar")):
            if not p.is_file():
                raise FileNotFoundError(
                    f"{what} {p} not found (loading {path}); export_policy writes "
                    f"{onnx_path.name} and {json_path.name} side by side, keep them together"
                )
        sidecar = _read_sidecar(json_path)
        model_bytes = onnx_path.read_bytes()
        digest = hashlib.sha256(model_bytes).hexdigest()
        if digest != sidecar["onnx_sha256"]:
            raise ValueError(
                f"onnx_sha256: sidecar {json_path} expects {sidecar['onnx_sha256']} but "
                f"{onnx_path} hashes to {digest}; the files come from different exports, "
                "re-export both with policies.export.export_policy"
            )
        if session_options is None:
            session_options = ort.SessionOptions()
            session_options.intra_op_num_threads = int(intra_op_num_threads)
            session_options.inter_op_num_threads = 1
            session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(
            model_bytes,
            sess_options=session_options,
            providers=providers or ["CPUExecutionProvider"],
        )
        _check_session(session, sidecar, onnx_path)
        return cls(session, sidecar)

    def act(self, obs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Deterministic action(s) for one observation or a batch.

        Args:
            obs: (D,) or (N, D) float32 raw observation(s); other real dtypes are cast.
            mask: (sum(nvec),) or (N, sum(nvec)) bool, True = allowed (0/1 integers are
                accepted); each dimension needs at least one allowed entry. None allows all.

        Returns:
            (n_dims,) int64 for one observation, (N, n_dims) int64 for a batch.

        Raises:
            TypeError: non-numeric obs or a mask that is neither bool nor 0/1 integers.
            ValueError: wrong shapes, non-finite obs, or a dimension with nothing allowed.
        """
        x = np.asarray(obs)
        if x.dtype != np.float32:
            if x.dtype.kind not in "fiu":
                raise TypeError(
                    f"obs: dtype {x.dtype}, expected float32 (or another real dtype); "
                    "pass the env's observation array"
                )
            x = x.astype(np.float32)
        single = x.ndim == 1
        if single:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.obs_dim:
            raise ValueError(
                f"obs: shape {np.shape(obs)}, expected ({self.obs_dim},) or "
                f"(N, {self.obs_dim}); build it with the encoder this policy was trained on "
                f"(sidecar obs_dim={self.obs_dim})"
            )
        if not np.isfinite(x).all():
            rows = np.flatnonzero(~np.isfinite(x).all(axis=1))[:5].tolist()
            raise ValueError(f"obs: non-finite values (NaN/inf) in rows {rows}; fix the encoder")
        if mask is None:
            m = self._ones1 if len(x) == 1 else np.ones((len(x), self._n_mask), dtype=bool)
            action = self._session.run(self._outputs, {OBS_INPUT: x, MASK_INPUT: m})[0]
        else:
            m = self._mask(mask, len(x), single)
            action = self._session.run(self._outputs, {OBS_INPUT: x, MASK_INPUT: m})[0]
            # A dimension with no allowed entry is all -inf in the graph and picks index 0,
            # which is masked: checking the chosen entries is cheaper than checking blocks.
            chosen = action + self._offsets  # (N, n_dims) flat mask index of each choice
            if len(x) == 1:
                ok = m[0][chosen[0]].all()
            else:
                ok = m[np.arange(len(x))[:, None], chosen].all()
            if not ok:
                self._raise_empty_dimension(m)
        return action[0] if single else action

    def bind(self) -> BoundPolicy:
        """A single-observation runner over preallocated, session-bound buffers.

        For a caller deciding one observation at a time in a hot loop (the live router):
        fill :attr:`BoundPolicy.obs` and :attr:`BoundPolicy.mask` in place, then call it.
        Same graph, same session, same answer as :meth:`act` for the same inputs.
        """
        return BoundPolicy(self)

    def _raise_empty_dimension(self, m: np.ndarray) -> None:
        any_valid = np.logical_or.reduceat(m, self._offsets, axis=1)
        if any_valid.all():
            raise RuntimeError("the graph chose a masked action; re-export the policy")
        row, dim = np.argwhere(~any_valid)[0].tolist()
        raise ValueError(
            f"mask: action dimension {dim} (nvec={int(self.nvec[dim])}) has no allowed "
            f"entry in row {row}; every dimension needs at least one True"
        )

    def _mask(self, mask: np.ndarray | None, n: int, single: bool) -> np.ndarray:
        """The validated (n, sum(nvec)) bool mask."""
        if mask is None:
            return np.ones((n, self._n_mask), dtype=bool)
        m = np.asarray(mask)
        if m.dtype != np.bool_:
            if m.dtype.kind not in "iu" or not np.isin(m, (0, 1)).all():
                raise TypeError(
                    f"mask: dtype {m.dtype}, expected bool (or 0/1 integers); "
                    "pass env.action_masks()"
                )
            m = m.astype(bool)
        expected = (self._n_mask,) if single else (n, self._n_mask)
        if m.shape != expected:
            raise ValueError(
                f"mask: shape {m.shape}, expected {expected} = sum(nvec={self.nvec.tolist()}) "
                "entries per observation (dimensions concatenated, as env.action_masks())"
            )
        return np.ascontiguousarray(m[None, :] if single else m)

    def __repr__(self) -> str:
        return (
            f"OnnxPolicy(obs_dim={self.obs_dim}, nvec={self.nvec.tolist()}, "
            f"algorithm={self._sidecar.get('algorithm')!r})"
        )


def _read_sidecar(json_path: Path) -> dict[str, Any]:
    """Parse and check the sidecar's exporter keys."""
    try:
        sidecar = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"sidecar {json_path}: not valid JSON ({e}); re-export it") from e
    if not isinstance(sidecar, dict):
        raise ValueError(f"sidecar {json_path}: top level is not an object; re-export it")
    missing = [k for k in _REQUIRED_KEYS if k not in sidecar]
    if missing:
        raise ValueError(
            f"sidecar {json_path}: missing keys {missing}; it was not written by "
            "policies.export.export_policy, re-export the policy"
        )
    if sidecar["format"] != FORMAT:
        raise ValueError(
            f"format: sidecar {json_path} says {sidecar['format']!r}, expected {FORMAT!r}"
        )
    if sidecar["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"format_version: sidecar {json_path} has {sidecar['format_version']!r}, this "
            f"loader reads {FORMAT_VERSION}; re-export with this version of Baton"
        )
    nvec, obs_dim = sidecar["nvec"], sidecar["obs_dim"]
    if not (isinstance(nvec, list) and nvec and all(isinstance(n, int) and n > 0 for n in nvec)):
        raise ValueError(f"nvec: sidecar {json_path} has {nvec!r}, expected positive ints")
    if not (isinstance(obs_dim, int) and obs_dim > 0):
        raise ValueError(f"obs_dim: sidecar {json_path} has {obs_dim!r}, expected an int > 0")
    return sidecar


def _check_session(session: ort.InferenceSession, sidecar: dict[str, Any], path: Path) -> None:
    """The graph's input/output names, dtypes and fixed dims agree with the sidecar."""
    nvec = sidecar["nvec"]
    expected = {
        OBS_INPUT: sidecar["obs_dim"],
        MASK_INPUT: sum(nvec),
        ACTION_OUTPUT: len(nvec),
    }
    args = {a.name: a for a in [*session.get_inputs(), *session.get_outputs()]}
    for name, width in expected.items():
        a = args.get(name)
        if a is None:
            raise ValueError(
                f"{path}: graph has no {name!r} (has {sorted(args)}); re-export the policy"
            )
        if a.type != _ORT_TYPES[name] or len(a.shape) != 2 or a.shape[1] != width:
            raise ValueError(
                f"{path}: {name!r} is {a.type} {a.shape}, the sidecar expects "
                f"{_ORT_TYPES[name]} [batch, {width}]; re-export both files together"
            )


class BoundPolicy:
    """:meth:`OnnxPolicy.act` for one observation, without per-call array allocation.

    ``obs`` ``(1, obs_dim)`` float32 and ``mask`` ``(1, sum(nvec))`` bool are bound to the
    session's inputs once (onnxruntime IOBinding over these buffers, zero-copy on CPU) and the
    action to a preallocated int64 buffer. The caller fills ``obs`` and ``mask`` in place (never
    rebinds them) and calls the object. Unlike :meth:`OnnxPolicy.act` the observation is not
    checked for NaN/inf (the caller's encoder produces finite values); the chosen entries are
    checked against the mask as there.
    """

    def __init__(self, policy: OnnxPolicy) -> None:
        self.policy = policy
        n_mask = int(policy.nvec.sum())
        self.obs = np.zeros((1, policy.obs_dim), dtype=np.float32)
        self.mask = np.ones((1, n_mask), dtype=bool)
        self.action = np.zeros((1, len(policy.nvec)), dtype=np.int64)
        session = policy.session
        io = session.io_binding()
        for name, arr in ((OBS_INPUT, self.obs), (MASK_INPUT, self.mask)):
            io.bind_input(name, "cpu", 0, arr.dtype.type, list(arr.shape), arr.ctypes.data)
        io.bind_output(ACTION_OUTPUT, "cpu", 0, np.int64, list(self.action.shape),
                       self.action.ctypes.data)
        self._io = io
        self._run = session.run_with_iobinding
        self._mask_row = self.mask[0]
        self._offsets = [int(x) for x in policy._offsets]

    def __call__(self) -> list[int]:
        """The action for the current buffers, one int per dimension.

        Raises:
            ValueError: a dimension of the mask has no allowed entry.
        """
        self._run(self._io)
        action = self.action[0].tolist()
        row = self._mask_row
        for a, lo in zip(action, self._offsets, strict=True):
            if not row[lo + a]:
                self.policy._raise_empty_dimension(self.mask)
        return action
