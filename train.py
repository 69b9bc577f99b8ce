"""Train and evaluate a routing policy: ``python train.py policy=ppo workload=bursty``.

Hydra composes ``conf/train.yaml`` (groups model, hardware, cluster, workload, slo, sim,
policy, train, eval); the run directory (``outputs/<date>/<time>``) receives TensorBoard
logs, checkpoints, the exported ONNX policy and the evaluation report. ``policy=<heuristic>``
evaluates a heuristic without training. See README "Training a routing policy".
"""

from __future__ import annotations

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from policies.run import TrainAppConfig, run

ConfigStore.instance().store(name="train_schema", node=TrainAppConfig)


@hydra.main(config_path="conf", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    """Validate the composed config and run it."""
    run(OmegaConf.to_object(cfg), HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
