"""A tiny hand-built ONNX policy for tests and benchmarks (no torch, no training).

:func:`write_linear_policy` writes ``policy.onnx`` + ``policy.json`` in the exporter's format
(``policies.onnx_policy``): a linear layer and a masked argmax per action dimension, with the
sidecar's ``baton.observation`` layout from :func:`make_layout`, so :class:`runtime.router`
loads it like a trained policy. :func:`fixed_policy` always answers one decision.
"""

from __future__ import annotations

from pathlib import Path


def write_linear_policy(path: Path, layout: dict, weights=None, bias=None) -> Path:
    """Write ``path.onnx`` + ``path.json``: a masked-argmax linear policy, built without torch.

    ``logits = obs @ weights + bias`` (weights ``(obs_dim, sum(nvec))``), masked entries
    -inf, argmax per action dimension -- the exporter's contract (``policies.onnx_policy``).
    Zero weights and a one-hot bias make a fixed-action policy.
    """
    import hashlib
    import json

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from policies.onnx_policy import FORMAT, FORMAT_VERSION

    nvec = list(layout["nvec"])
    d, m = layout["obs_dim"], sum(nvec)
    w = np.zeros((d, m), np.float32) if weights is None else np.asarray(weights, np.float32)
    b = np.zeros(m, np.float32) if bias is None else np.asarray(bias, np.float32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"),
             numpy_helper.from_array(np.array(-1e9, np.float32), "NEG")]
    nodes = [helper.make_node("MatMul", ["obs", "W"], ["xw"]),
             helper.make_node("Add", ["xw", "B"], ["logits"]),
             helper.make_node("Where", ["action_mask", "logits", "NEG"], ["masked"])]
    outs, lo = [], 0
    for k, n in enumerate(nvec):
        inits += [numpy_helper.from_array(np.array([lo], np.int64), f"s{k}"),
                  numpy_helper.from_array(np.array([lo + n], np.int64), f"e{k}"),
                  numpy_helper.from_array(np.array([1], np.int64), f"ax{k}")]
        nodes += [helper.make_node("Slice", ["masked", f"s{k}", f"e{k}", f"ax{k}"], [f"sl{k}"]),
                  helper.make_node("ArgMax", [f"sl{k}"], [f"a{k}"], axis=1, keepdims=1)]
        outs.append(f"a{k}")
        lo += n
    nodes.append(helper.make_node("Concat", outs, ["action"], axis=1))
    graph = helper.make_graph(
        nodes, "linear_policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", d]),
         helper.make_tensor_value_info("action_mask", TensorProto.BOOL, ["batch", m])],
        [helper.make_tensor_value_info("action", TensorProto.INT64, ["batch", len(nvec)])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    onnx_path = path.with_suffix(".onnx")
    onnx_path.write_bytes(data)
    side = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "onnx_sha256": hashlib.sha256(data).hexdigest(), "obs_dim": d, "nvec": nvec,
            "baton": {"observation": layout}}
    path.with_suffix(".json").write_text(json.dumps(side))
    return onnx_path


def make_layout(roles, mode: str = "tandem", kv_blocks: int = 28632) -> dict:
    """An observation layout for ``roles`` (the shared encoder's)."""
    from sim.features import ObservationEncoder

    return ObservationEncoder(roles, [kv_blocks] * len(roles), 16, 1.0, 0.05,
                              mode=mode).layout()


def fixed_policy(path: Path, roles, lead: int, follow: int, split_bin: int = 0,
                 mode: str = "tandem") -> Path:
    """A policy that always answers ``(lead, follow[, split_bin])``."""
    import numpy as np

    layout = make_layout(roles, mode)
    n = len(roles)
    bias = np.zeros(sum(layout["nvec"]), np.float32)
    bias[lead] = bias[n + follow] = 1.0
    if mode == "tandem":
        bias[2 * n + split_bin] = 1.0
    return write_linear_policy(path, layout, bias=bias)
