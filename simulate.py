"""Simulate a GPU cluster serving a workload: ``python simulate.py cluster=... workload=...``.

Hydra composes ``conf/simulate.yaml`` with the groups model, hardware, cluster, workload, slo,
router and sim; results land in Hydra's run directory (``outputs/<date>/<time>``).
"""

from __future__ import annotations

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sim.run import SimulateConfig, run_simulation

ConfigStore.instance().store(name="simulate_schema", node=SimulateConfig)


@hydra.main(config_path="conf", config_name="simulate", version_base=None)
def main(cfg: DictConfig) -> None:
    """Validate the composed config and run it."""
    run_simulation(OmegaConf.to_object(cfg), HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
