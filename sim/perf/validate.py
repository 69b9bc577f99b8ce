"""Validate the analytic model against every real measurement we hold, and report the error.

``python -m sim.perf.validate [--data-root DIR] [--out DIR]`` prints and writes
(``<out>/*.csv``, ``<out>/*.png``, ``<out>/report.md``):

* per-operator error against every Vidur ``mlp.csv`` point (A100, H100, A40; all models and
  TP degrees), split into fitted and held-out (TP=8) points;
* attention prefill/decode error against the A100 attention profile;
* all-reduce and send/recv error against the DGX network profiles;
* whole-iteration error against Splitwise's measured prefill times and decode TBT (A100
  fitted, H100 held out; the power-capped H100 is reported but not a target);
* agreement with DistServe's fitted latency formulas (OPT-13B/66B, A100) on their range;
* KV capacity against DistServe's table;
* decode iterations of the real vLLM 0.19 runs after their last admission (engine vllm_v1;
  the single-GPU runs fitted the ``gddr_no_ecc`` streaming factor, the TP2 run did not).

Errors are absolute percentage errors (APE = |predicted / measured - 1|), summarised by
median and p90 per group.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from sim.catalog import get_gpu, get_model
from sim.perf import kernels
from sim.perf.fit import HELD_OUT_SPLITWISE_GPU, HELD_OUT_TP, predict_network, splitwise_predictions
from sim.perf.measurements import (
    DEVICE_GPU,
    default_data_root,
    elementwise_points,
    gemm_points,
    load_attention,
    load_distserve_coeffs,
    load_distserve_kv_capacity,
    load_mlp_profiles,
    load_network,
    load_splitwise,
)
from sim.perf.params import load_engine_params, load_kernel_params

TARGETS = {"gemm": 0.08, "allreduce": 0.15, "attention": 0.15, "iteration": 0.10,
           "iteration_group": 0.20, "kv_capacity": 0.03}
"""Acceptance targets: median APE (``iteration_group``: worst group median; KV: max error)."""


def _summary(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    g = df.groupby(by, dropna=False)["ape"]
    out = g.agg(n="size", median_ape="median", p90_ape=lambda s: s.quantile(0.9)).reset_index()
    return out


def operator_errors(data_root: Path) -> pd.DataFrame:
    """Predicted vs measured for every GEMM and elementwise point of Vidur's mlp.csv."""
    mlp = load_mlp_profiles(data_root)
    frames = []
    g = gemm_points(mlp)
    e = elementwise_points(mlp)
    for dev, gpu_name in DEVICE_GPU.items():
        gpu = get_gpu(gpu_name)
        kp = load_kernel_params(gpu.calibration)
        gd = g[g.device == dev]
        frames.append(gd.assign(predicted_s=kernels.gemm_time_s(gd.m, gd.n, gd.k, gpu, kp),
                                kind="gemm"))
        ed = e[e.device == dev]
        frames.append(ed.assign(predicted_s=kernels.elementwise_time_s(ed["bytes"], gpu, kp),
                                kind="elementwise"))
    out = pd.concat(frames, ignore_index=True)
    out["held_out"] = out.tp == HELD_OUT_TP
    out["ape"] = (out.predicted_s / out.measured_s - 1).abs()
    return out


def attention_errors(data_root: Path) -> pd.DataFrame:
    """Predicted vs measured attention kernel times (A100 profile)."""
    prefill, decode, heads = load_attention(data_root)
    gpu = get_gpu(DEVICE_GPU["a100"])
    kp = load_kernel_params(gpu.calibration)
    c, x = prefill.new_tokens.to_numpy(), prefill.ctx_tokens.to_numpy()
    p = prefill.assign(
        op="attn_prefill",
        predicted_s=kernels.attn_prefill_time_s(c, x, c * x, c * c, gpu=gpu, kp=kp, **heads),
    )
    b, ctx = decode.batch_size.to_numpy(), decode.ctx_tokens.to_numpy()
    d = decode.assign(
        op="attn_decode",
        predicted_s=kernels.attn_decode_time_s(b, b * ctx, gpu=gpu, kp=kp, **heads),
    )
    out = pd.concat([p, d], ignore_index=True)
    out["device"] = "a100"
    out["ape"] = (out.predicted_s / out.measured_s - 1).abs()
    return out


def network_errors(data_root: Path) -> pd.DataFrame:
    """Predicted vs measured all-reduce and send/recv times."""
    net = load_network(data_root)
    frames = []
    for gpu_name, rows in net.groupby("gpu"):
        kp = load_kernel_params(get_gpu(gpu_name).calibration)
        frames.append(rows.assign(predicted_s=predict_network(rows, kp)))
    out = pd.concat(frames, ignore_index=True)
    out["scope"] = np.where(out.devices_per_node < out.num_workers, "cross-node", "intra-node")
    out["ape"] = (out.predicted_s / out.measured_s - 1).abs()
    return out


def iteration_errors(data_root: Path) -> pd.DataFrame:
    """Predicted vs measured whole iterations (Splitwise), engine ``vllm_splitwise_2023``."""
    sw = load_splitwise(data_root)
    sw = sw.assign(gpu=sw.gpu.fillna("H100-SXM-80GB"))  # the power-capped H100 runs
    engine = load_engine_params("vllm_splitwise_2023")
    pred = splitwise_predictions(sw, engine)
    rows = []
    for phase, meas, prd in (("prefill", "prompt_s", "pred_prompt_s"),
                             ("decode", "token_s", "pred_token_s")):
        rows.append(pred.assign(phase=phase, measured_s=pred[meas], predicted_s=pred[prd]))
    out = pd.concat(rows, ignore_index=True)
    out["held_out"] = out.gpu == HELD_OUT_SPLITWISE_GPU
    out["power_capped"] = out.hardware.str.endswith("pcap")
    out["ape"] = (out.predicted_s / out.measured_s - 1).abs()
    return out.drop(columns=["prompt_s", "token_s", "pred_prompt_s", "pred_token_s"])


def distserve_agreement(data_root: Path) -> pd.DataFrame:
    """Our analytic prediction (engine ``distserve``) vs DistServe's fitted formulas.

    Prefill: one prompt of 64..2048 tokens; decode: batches of 1..128 at context 128..2048,
    the range DistServe profiled. DistServe's formulas include its engine's fixed costs.
    """
    from sim.perf.distserve import DistServeBackend

    coeffs = load_distserve_coeffs(data_root)
    rows = []
    for (engine, model_id, tp), _ in coeffs.groupby(["engine", "model", "tp"]):
        if engine != "distserve":
            continue
        model = get_model(model_id.split("/")[-1])
        from sim.perf.analytic import AnalyticBackend

        ours = AnalyticBackend(model, "A100-80GB-SXM", tp=int(tp), engine="vllm_v1")
        theirs = DistServeBackend(model, "A100-80GB-SXM", tp=int(tp), coeffs=coeffs)
        for prompt in (64, 128, 256, 512, 1024, 2048):
            rows.append(("prefill", model.name, tp, prompt, 1, ours.prefill_time_s(prompt),
                         theirs.prefill_time_s(prompt)))
        for bs in (1, 8, 32, 64, 128):
            for ctx in (128, 512, 2048):
                rows.append(("decode", model.name, tp, ctx, bs, ours.decode_time_s(bs, ctx),
                             theirs.decode_time_s(bs, ctx)))
    out = pd.DataFrame(rows, columns=["phase", "model", "tp", "tokens", "batch_size",
                                      "predicted_s", "measured_s"])
    out["ape"] = (out.predicted_s / out.measured_s - 1).abs()
    return out


def kv_capacity_errors(data_root: Path) -> pd.DataFrame:
    """KV capacity (engine ``distserve``, utilisation 0.95, block 16) vs DistServe's table."""
    from sim.perf.memory import plan_memory

    caps = load_distserve_kv_capacity(data_root)
    engine = load_engine_params("distserve")
    gpu = get_gpu("A100-80GB-SXM")
    pred = []
    for r in caps.itertuples():
        plan = plan_memory(get_model(r.model), gpu, int(r.tp), int(r.pp), engine,
                           gpu_memory_utilization=0.95, block_size=16)
        pred.append(plan.num_kv_tokens)
    out = caps.assign(predicted_tokens=pred)
    out["ape"] = (out.predicted_tokens / out.max_num_tokens - 1).abs()
    return out


def _plot(df: pd.DataFrame, hue: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for key, g in df.groupby(hue):
        ax.scatter(g.measured_s * 1e3, g.predicted_s * 1e3, s=4, alpha=0.5, label=str(key))
    lo = max(df.measured_s.min() * 1e3, 1e-4)
    hi = df.measured_s.max() * 1e3
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured (ms)")
    ax.set_ylabel("predicted (ms)")
    ax.set_title(title)
    ax.legend(markerscale=3, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def vllm_v1_errors(data_root: Path) -> pd.DataFrame:
    """Predicted vs measured decode iterations of the real vLLM 0.19 runs (engine vllm_v1).

    The iterations after each run's last admission
    (:func:`~sim.perf.measurements.load_vllm_drain_iterations`); the single-GPU runs fitted
    the ``gddr_no_ecc`` streaming factor (``fitted``), the TP2 run did not.
    """
    from sim.perf.fit import drain_predictions
    from sim.perf.measurements import load_vllm_drain_iterations

    rows = load_vllm_drain_iterations(data_root)
    pred = np.concatenate([
        drain_predictions(g, load_kernel_params(get_gpu(gpu).calibration))
        for gpu, g in rows.groupby("gpu", sort=False)
    ])
    rows = pd.concat([g for _, g in rows.groupby("gpu", sort=False)], ignore_index=True)
    out = rows.assign(predicted_s=pred, fitted=rows.tp == 1)
    out["ape"] = (out.predicted_s / out.measured_s - 1).abs()
    return out


def run(data_root: Path, out_dir: Path) -> dict[str, pd.DataFrame]:
    """Compute every comparison, write CSVs, plots and ``report.md``; return the summaries."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ops = operator_errors(data_root)
    attn = attention_errors(data_root)
    net = network_errors(data_root)
    it = iteration_errors(data_root)
    ds = distserve_agreement(data_root)
    kv = kv_capacity_errors(data_root)
    v1 = vllm_v1_errors(data_root)
    for name, df in (("operators", ops), ("attention", attn), ("network", net),
                     ("iterations", it), ("distserve_agreement", ds), ("kv_capacity", kv),
                     ("vllm_v1_decode", v1)):
        df.to_csv(out_dir / f"{name}.csv", index=False)
    summaries = {
        "operators": _summary(ops, ["kind", "op", "device", "held_out"]),
        "gemm_by_device": _summary(ops[ops.kind == "gemm"], ["device", "held_out"]),
        "attention": _summary(attn, ["op"]),
        "network": _summary(net, ["collective", "gpu", "scope"]),
        "network_all": _summary(net, ["collective", "gpu"]),
        "iterations": _summary(it[~it.power_capped], ["phase", "held_out"]),
        "iteration_groups": _summary(it, ["phase", "model", "hardware", "tp"]),
        "distserve_agreement": _summary(ds, ["phase", "model", "tp"]),
        "kv_capacity": kv.groupby("model").ape.agg(n="size", median_ape="median",
                                                   max_ape="max").reset_index(),
        "vllm_v1_decode": _summary(v1, ["run", "fitted"]),
    }
    _plot(ops[ops.kind == "gemm"], "device", out_dir / "gemm.png", "GEMMs (Vidur mlp.csv)")
    _plot(attn, "op", out_dir / "attention.png", "Attention (A100)")
    _plot(net, "scope", out_dir / "network.png", "All-reduce and send/recv (DGX)")
    _plot(it.assign(k=it.phase + " " + it.hardware), "k", out_dir / "iterations.png",
          "Whole iterations (Splitwise)")
    lines = ["# Performance-model validation", "", f"Data: `{data_root}`", ""]
    for name, s in summaries.items():
        lines += [f"## {name}", "", _markdown(s), ""]
    lines += ["## Targets", "", _markdown(check_targets(summaries)), ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    return summaries


def check_targets(s: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per acceptance target: the measured value, the target and whether it is met."""
    rows = []
    gd = s["gemm_by_device"]
    for r in gd.itertuples():
        rows.append((f"GEMM median APE, {r.device}, {'held-out' if r.held_out else 'fitted'}",
                     r.median_ape, TARGETS["gemm"]))
    net = s["network"]
    for r in net[(net.collective == "all_reduce") & (net.scope == "intra-node")].itertuples():
        rows.append((f"all-reduce median APE, {r.gpu}, intra-node", r.median_ape,
                     TARGETS["allreduce"]))
    nall = s["network_all"]
    for r in nall[nall.collective == "all_reduce"].itertuples():
        rows.append((f"all-reduce median APE, {r.gpu}, all points", r.median_ape,
                     TARGETS["allreduce"]))
    for r in s["attention"].itertuples():
        rows.append((f"{r.op} median APE (A100)", r.median_ape, TARGETS["attention"]))
    for r in s["iterations"].itertuples():
        rows.append((f"{r.phase} iteration median APE, {'held-out' if r.held_out else 'fitted'}",
                     r.median_ape, TARGETS["iteration"]))
    groups = s["iteration_groups"]
    worst = groups[~groups.hardware.str.endswith("pcap")].median_ape.max()
    rows.append(("worst device/TP/phase group median APE (not power-capped)", worst,
                 TARGETS["iteration_group"]))
    rows.append(("KV capacity max APE vs DistServe", s["kv_capacity"].max_ape.max(),
                 TARGETS["kv_capacity"]))
    out = pd.DataFrame(rows, columns=["check", "value", "target"])
    out["met"] = out.value <= out.target
    return out


def _markdown(df: pd.DataFrame) -> str:
    fmt = df.copy()
    for c in fmt.columns:
        if fmt[c].dtype.kind == "f":
            fmt[c] = fmt[c].map(lambda v: f"{v:.3f}")
    head = "| " + " | ".join(map(str, fmt.columns)) + " |"
    sep = "|" + "---|" * len(fmt.columns)
    body = ["| " + " | ".join(map(str, r)) + " |" for r in fmt.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=default_data_root(),
                    help="folder holding vidur_profiles/ and distserve/ (default ../shared/data)")
    ap.add_argument("--out", type=Path, default=Path("results/perf_validation"),
                    help="where to write CSVs, plots and report.md")
    args = ap.parse_args(argv)
    summaries = run(args.data_root, args.out)
    with pd.option_context("display.width", 140, "display.max_rows", 200):
        for name in ("gemm_by_device", "attention", "network", "network_all", "iterations",
                     "iteration_groups",
                     "distserve_agreement", "kv_capacity", "vllm_v1_decode"):
            print(f"\n== {name} ==")
            print(summaries[name].to_string(index=False))
        print("\n== targets ==")
        print(check_targets(summaries).to_string(index=False))
    print(f"\nwrote {args.out}/report.md, CSVs and plots")


if __name__ == "__main__":
    from sim.catalog._load import run_cli

    run_cli(main)
