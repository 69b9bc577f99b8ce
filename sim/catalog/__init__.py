"""GPU and model catalogs loaded from ``conf/hardware`` and ``conf/model``."""

from sim.catalog._load import CONF_DIR, CatalogError
from sim.catalog.gpu import GpuSpec, all_gpus, get_gpu, gpu_from_dict
from sim.catalog.model import ModelSpec, all_models, get_model, model_from_dict

__all__ = [
    "CONF_DIR",
    "CatalogError",
    "GpuSpec",
    "ModelSpec",
    "all_gpus",
    "all_models",
    "get_gpu",
    "get_model",
    "gpu_from_dict",
    "model_from_dict",
]
