"""What ``train.py`` runs: train (or pick) a policy, export it, evaluate it against heuristics.

Steps, each logged, with outputs in the run directory:

1. ``policy.kind == sb3``: train PPO / MaskablePPO on the routing environment
   (:mod:`policies.sb3_train`), export ``policy.onnx`` + ``policy.json``, check that the ONNX
   actor reproduces SB3's deterministic actions on 1,000 observations.
2. Evaluate on held-out seeds of the training workload and of ``other_workload``: the learned
   policy *through its exported ONNX file and the shared encoder* (exactly what the live
   router runs) next to every heuristic of ``eval.heuristics`` (:mod:`policies.evaluate`).
3. Write ``eval/report.md`` (+ CSVs and plots) and ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import MISSING

from envs import EnvConfig, EpisodeConfig, RewardConfig
from policies.evaluate import (
    EvalConfig,
    Scenario,
    evaluate,
    goodput_table,
    summary_table,
    write_report,
)
from policies.heuristics import make_heuristic
from policies.sb3_train import PolicyConfig, TrainConfig
from sim.catalog import GpuSpec, ModelSpec
from sim.engine import ClusterConfig, SimConfig
from sim.features import MODES, FeatureConfig
from sim.metrics import SLO
from sim.workload import WorkloadConfig

logger = logging.getLogger(__name__)


@dataclass
class EnvOptions:
    """The environment's own options (``env.*``)."""

    mode: str = "tandem"
    """tandem (Lead, Follow, split) or disaggregated (prefill, decode)."""
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    """Requests per episode and the rate range."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward per outcome."""
    features: FeatureConfig = field(default_factory=FeatureConfig)
    """Observation scales and split bins."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"env.mode {self.mode!r} is not one of {', '.join(MODES)}")


@dataclass
class TrainAppConfig:
    """Everything ``train.py`` needs (one Hydra group per field)."""

    model: ModelSpec = MISSING
    hardware: GpuSpec = MISSING
    cluster: ClusterConfig = MISSING
    workload: WorkloadConfig = MISSING
    """Training workload; evaluation uses held-out seeds of it."""
    other_workload: WorkloadConfig = MISSING
    """A second workload the policy never trained on (evaluation only)."""
    slo: SLO = MISSING
    sim: SimConfig = field(default_factory=SimConfig)
    policy: PolicyConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    env: EnvOptions = field(default_factory=EnvOptions)

    def env_config(self) -> EnvConfig:
        """The environment config this run trains on."""
        return EnvConfig(mode=self.env.mode, model=self.model, hardware=self.hardware,
                         cluster=self.cluster, workload=self.workload, slo=self.slo,
                         sim=self.sim, episode=self.env.episode, reward=self.env.reward,
                         features=self.env.features)


def _progress():
    """A tqdm bar fed by :func:`policies.evaluate.evaluate`'s progress callback."""
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int, label: str) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="evaluate", unit="policy-seed")
        bar.set_postfix_str(label)
        bar.update(1)
        if done == total:
            bar.close()

    return update


def run(cfg: TrainAppConfig, out_dir: str | Path) -> dict:
    """Train/export/evaluate as the config says; returns the summary written to JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx"):   # exporter pass-by-pass INFO logs
        logging.getLogger(noisy).setLevel(logging.WARNING)
    env_cfg = cfg.env_config()
    summary: dict = {"policy": cfg.policy.name, "kind": cfg.policy.kind}
    policies = {h: (lambda h=h: make_heuristic(h, seed=cfg.train.seed))
                for h in cfg.eval.heuristics}
    learned_name = None
    notes = [f"Cluster: {cfg.cluster.num_gpus_used()} x {cfg.hardware.name} GPUs, model "
             f"{cfg.model.name}, mode {cfg.env.mode}; SLO TTFT {cfg.slo.ttft_s} s, TPOT "
             f"{cfg.slo.tpot_s} s, target {cfg.slo.attainment_target_frac:.0%}.",
             f"Held-out seeds {list(cfg.eval.seeds)}, {cfg.eval.num_requests} requests each; "
             f"rate multipliers {list(cfg.eval.rate_scales)} of each workload's rate."]
    if cfg.policy.kind == "sb3":
        from policies.sb3_train import check_parity, export, train_policy

        t0 = time.perf_counter()
        model = train_policy(env_cfg, cfg.policy, cfg.train, out)
        summary["train_wall_s"] = time.perf_counter() - t0
        summary["timesteps"] = model.trained_steps
        summary["best_checkpoint_steps"] = int(model.num_timesteps)
        summary["warm_start"] = model.warm_start
        onnx_path = export(model, env_cfg, out, extra={"policy": cfg.policy.name})
        summary["parity_onnx_vs_sb3"] = check_parity(model, onnx_path, env_cfg)
        logger.info("trained %d steps in %.0f s; exported %s (ONNX == SB3 on %.1f%% of 1000 "
                    "observations)", summary["timesteps"], summary["train_wall_s"], onnx_path,
                    100 * summary["parity_onnx_vs_sb3"])
        learned_name = cfg.policy.name
        if model.warm_start:
            notes.append(f"Warm start: `{cfg.policy.name}` was initialised by behaviour cloning "
                         f"of `{cfg.train.warm_start}` on {model.warm_start['samples']} of its "
                         "decisions (it reproduced "
                         f"{model.warm_start['accuracy']:.0%} of them exactly; ties between "
                         "equally loaded instances make the rest ambiguous), then trained by "
                         "PPO.")
        if model.warm_start and summary["best_checkpoint_steps"] == 0:
            notes.append("PPO never beat the cloned policy on the periodic evaluation episodes, "
                         "so the policy exported and evaluated here is the cloned one.")
        policies = {learned_name: _onnx_policy_factory(onnx_path), **policies}
        notes.append(f"`{learned_name}`: {cfg.policy.algo} trained for {summary['timesteps']} "
                     f"steps ({summary['train_wall_s']:.0f} s; the checkpoint evaluated here is "
                     f"the best periodic evaluation's, at {summary['best_checkpoint_steps']} "
                     "steps), evaluated through the exported "
                     "ONNX file (the same artefact the runtime router loads); ONNX reproduces "
                     f"SB3's deterministic action on {summary['parity_onnx_vs_sb3']:.1%} of "
                     "1,000 observations.")
    elif cfg.policy.name not in policies:
        policies = {cfg.policy.name: lambda: make_heuristic(cfg.policy.name, cfg.train.seed),
                    **policies}
    scn = Scenario(cfg.model, cfg.hardware, cfg.cluster, cfg.sim, cfg.slo)
    other = cfg.other_workload.name
    if other == cfg.workload.name:  # same conf with other settings: keep both rows apart
        other += "_other"
    workloads = {cfg.workload.name: cfg.workload, other: cfg.other_workload}
    t0 = time.perf_counter()
    runs = evaluate(scn, workloads, policies, cfg.eval, progress=_progress())
    summary["eval_wall_s"] = time.perf_counter() - t0
    gpus = cfg.cluster.num_gpus_used()
    target = cfg.slo.attainment_target_frac
    good = goodput_table(runs, target, gpus)
    table = summary_table(runs, good, learned_name, list(cfg.eval.heuristics))
    report = write_report(runs, good, table, out / "eval",
                          title=f"Evaluation: {cfg.policy.name} vs heuristics", target=target,
                          num_gpus=gpus, notes=notes)
    summary["report"] = str(report)
    summary["table"] = json.loads(table.to_json(orient="records"))
    if learned_name:
        summary["verdict"] = verdicts(table, learned_name)
        with report.open("a") as f:
            f.write("\n## Verdict\n\n" + "\n".join(f"- {v}" for v in summary["verdict"]) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    logger.info("report: %s", report)
    for v in summary.get("verdict", []):
        logger.info(v)
    return summary


def verdicts(table, learned: str) -> list[str]:
    """One sentence per workload: does the learned policy beat the best heuristic?"""
    out = []
    for r in table[table.learned].itertuples():
        if not hasattr(r, "gain_vs_best"):
            continue
        sig = r.gain_ci_lo > 0 or r.gain_ci_hi < 0
        word = "is not distinguishable from"
        if sig:
            word = "beats" if r.gain_vs_best > 0 else "trails"
        goal = "met" if r.gain_ci_lo > 0 and r.gain_vs_best >= 0.05 else "NOT met"
        out.append(f"{r.workload}: {learned} {word} the best heuristic ({r.best_heuristic}) in "
                   f"goodput per GPU by {r.gain_vs_best:+.1%} [95% CI {r.gain_ci_lo:+.1%}, "
                   f"{r.gain_ci_hi:+.1%}] over seeds; goal (>= +5% with the interval above 0) "
                   f"{goal}.")
    return out


def _onnx_policy_factory(onnx_path: Path):
    from policies.learned import EncodedPolicy
    from policies.onnx_policy import OnnxPolicy
    from sim.features import ObservationEncoder

    net = OnnxPolicy.load(onnx_path)
    layout = net.sidecar["baton"]["observation"]

    def factory():
        return EncodedPolicy(ObservationEncoder.from_layout(layout), net.act, name="learned")

    return factory
