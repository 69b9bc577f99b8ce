"""Helpers for testing the Hydra entry points (``simulate.py``, ``train.py``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import hydra
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]


def import_entry(filename: str):
    """Import an entry-point script by path (registers its schema in Hydra's ConfigStore)."""
    spec = importlib.util.spec_from_file_location(Path(filename).stem + "_entry",
                                                  REPO / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose(config_name: str, *overrides: str):
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` into its dataclasses."""
    with hydra.initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = hydra.compose(config_name, overrides=list(overrides))
    return OmegaConf.to_object(cfg)
