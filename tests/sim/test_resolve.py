"""Catalog entries from the names real runs record (CUDA device names, repo ids)."""

import pytest

from sim.catalog import CatalogError
from sim.catalog.resolve import resolve_gpu, resolve_model

GIB = 1024**3


@pytest.mark.parametrize(("device", "expected"), [
    ("NVIDIA H100 80GB HBM3", "H100-SXM-80GB"),
    ("NVIDIA H100 PCIe", "H100-PCIe-80GB"),
    ("NVIDIA H100 NVL", "H100-PCIe-80GB"),
    ("NVIDIA A100-SXM4-80GB", "A100-80GB-SXM"),
    ("NVIDIA A100-SXM4-40GB", "A100-40GB-SXM"),
    ("NVIDIA A100 80GB PCIe", "A100-80GB-PCIe"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA L4", "L4"),
    ("NVIDIA A40", "A40"),
    ("NVIDIA A10G", "A10G"),
    ("NVIDIA GeForce RTX 4090", "RTX-4090"),
    ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "RTX-PRO-6000"),
    ("Tesla V100-SXM2-32GB", "V100-SXM2-32GB"),
    ("NVIDIA H200", "H200-141GB"),
    ("RTX4090", "RTX-4090"),  # folder names of the runs in ../shared
    ("RTXPRO6000", "RTX-PRO-6000"),
    ("A100-80GB-SXM", "A100-80GB-SXM"),  # catalog names as they are
])
def test_device_names(device, expected):
    assert resolve_gpu(device).name == expected


def test_memory_tells_a100_sizes_apart_and_hints_go_in_order():
    assert resolve_gpu("NVIDIA A100", memory_bytes=40 * GIB).name == "A100-40GB-SXM"
    assert resolve_gpu("NVIDIA A100", memory_bytes=80 * GIB).name == "A100-80GB-SXM"
    assert resolve_gpu(None, "", "NVIDIA L40S", "H100").name == "L40S"
    assert resolve_gpu("some-box", "H100").name == "H100-SXM-80GB"


def test_unknown_gpu_names_the_hints_and_the_fix():
    with pytest.raises(CatalogError, match=r"NVIDIA B200.*known GPUs.*conf/hardware"):
        resolve_gpu("NVIDIA B200")
    with pytest.raises(CatalogError, match="no GPU recorded"):
        resolve_gpu(None)


@pytest.mark.parametrize(("name", "expected"), [
    ("meta-llama/Llama-3.1-8B", "Llama-3.1-8B"),
    ("meta-llama/Llama-3.1-8B-Instruct", "Llama-3.1-8B"),
    ("meta-llama/Meta-Llama-3.1-70B-Instruct", "Llama-3.1-70B"),
    ("meta-llama/Meta-Llama-3-8B-Instruct", "Llama-3-8B"),
    ("meta-llama/Llama-2-7b-chat-hf", "Llama-2-7B"),
    ("Qwen/Qwen3-30B-A3B-Instruct-2507", "Qwen3-30B-A3B"),
    ("Qwen/Qwen2.5-7B-Instruct", "Qwen2.5-7B"),
    ("mistralai/Mistral-7B-Instruct-v0.3", "Mistral-7B"),
    ("facebook/opt-13b", "OPT-13B"),
    ("OPT-13B", "OPT-13B"),
])
def test_repo_ids(name, expected):
    assert resolve_model(name).name == expected


def test_quantised_or_unknown_models_are_not_guessed():
    with pytest.raises(CatalogError, match=r"Llama-3.1-8B-FP8.*known models.*conf/model"):
        resolve_model("neuralmagic/Llama-3.1-8B-FP8")
    with pytest.raises(CatalogError, match="non-empty string"):
        resolve_model("")
