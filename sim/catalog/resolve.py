"""Catalog entries for the names real runs record: CUDA device names, Hugging Face repo ids.

A vLLM run records its GPU as ``torch.cuda.get_device_name()`` (``NVIDIA H100 80GB HBM3``,
``NVIDIA A100-SXM4-40GB``, ``NVIDIA GeForce RTX 4090``) and its model as the repo id it served
(``meta-llama/Llama-3.1-8B-Instruct``, ``Qwen/Qwen3-30B-A3B-Instruct-2507``). The catalog
keys GPUs by datasheet name and models by base repo, so these helpers map one onto the other:
GPU families by pattern (memory size and form factor from the name, or from the device's
memory when the name leaves it open), models by dropping fine-tuning suffixes that do not
change the architecture (``-Instruct``, ``-Chat``, ``-hf``, a release date such as ``-2507``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from sim.catalog._load import CatalogError
from sim.catalog.gpu import GpuSpec, all_gpus, get_gpu
from sim.catalog.model import ModelSpec, all_models, get_model

GIB = 1024**3


def _a100(text: str, memory_gib: float | None) -> str | None:
    small = "40g" in text or (memory_gib is not None and memory_gib < 60)
    if small:
        return "A100-40GB-SXM"  # (the catalog's only 40 GB A100; PCIe differs in power)
    return "A100-80GB-PCIe" if "pcie" in text else "A100-80GB-SXM"


def _h100(text: str, memory_gib: float | None) -> str | None:
    # PCIe and NVL are PCIe cards (lower clocks and bandwidth than SXM5)
    return "H100-PCIe-80GB" if ("pcie" in text or "nvl" in text) else "H100-SXM-80GB"


_GPU_PATTERNS: tuple[tuple[str, Callable[[str, float | None], str | None] | str], ...] = (
    (r"h200", "H200-141GB"),
    (r"h100", _h100),
    (r"a100", _a100),
    (r"l40s", "L40S"),
    (r"(^|[^a-z0-9])l4($|[^a-z0-9])", "L4"),
    (r"a10g", "A10G"),
    (r"(^|[^a-z0-9])a40($|[^a-z0-9])", "A40"),
    (r"4090", "RTX-4090"),
    (r"pro\W*6000", "RTX-PRO-6000"),
    (r"v100", "V100-SXM2-32GB"),
)
"""Lower-cased device or folder name pattern -> catalog GPU (or a function choosing one)."""


def resolve_gpu(*hints: str | None, memory_bytes: int | None = None) -> GpuSpec:
    """The catalog GPU a run's recorded names denote.

    Args:
        hints: names to try in order, e.g. the recorded CUDA device name, a hardware label,
            a folder name; None or empty ones are skipped. The first that matches wins.
        memory_bytes: the device's total memory, bytes, when recorded (tells a 40 GB A100
            from an 80 GB one when the name does not).

    Raises:
        CatalogError: naming the hints and the known GPUs when none matches.
    """
    memory_gib = memory_bytes / GIB if memory_bytes else None
    tried = [h for h in hints if h]
    for hint in tried:
        try:
            return get_gpu(hint)
        except CatalogError:
            pass
        text = hint.lower()
        for pattern, target in _GPU_PATTERNS:
            if re.search(pattern, text):
                name = target if isinstance(target, str) else target(text, memory_gib)
                if name:
                    return get_gpu(name)
    known = ", ".join(g.name for g in all_gpus())
    raise CatalogError(f"no catalog GPU matches {tried or 'the run (no GPU recorded)'}; "
                       f"known GPUs: {known}. Add conf/hardware/<gpu>.yaml or name one "
                       "explicitly (e.g. --gpu)")


_SUFFIX = re.compile(r"[-_](instruct|chat|hf|base|it|\d{4})$", re.IGNORECASE)
_VERSION = re.compile(r"[-_]v\d+(\.\d+)*$", re.IGNORECASE)


def _model_candidates(name: str) -> list[str]:
    """``name``, its repo part, then that part with fine-tuning suffixes dropped one by one."""
    out = [name]
    repo = name.rstrip("/").split("/")[-1]
    while True:
        out.append(repo)
        if repo.lower().startswith("meta-llama-"):  # Meta-Llama-3.1-8B -> Llama-3.1-8B
            out.append(repo[len("meta-"):])
        shorter = _SUFFIX.sub("", repo)
        if shorter == repo:
            shorter = _VERSION.sub("", repo)  # Mistral-7B-Instruct-v0.3 -> Mistral-7B...
        if shorter == repo or not shorter:
            return out
        repo = shorter


def resolve_model(name: str) -> ModelSpec:
    """The catalog model a recorded model name or repo id denotes.

    Tries the name, its repo part (after the last ``/``), then that part without
    fine-tuning suffixes (``-Instruct``, ``-Chat``, ``-hf``, ``-Base``, ``-it``, a four-digit
    release such as ``-2507``, a ``-vX.Y`` revision) and without a ``Meta-`` prefix: the
    same architecture. Quantised variants (``-FP8``, ``-AWQ``) are not matched (other weight
    and KV sizes).

    Raises:
        CatalogError: naming the model and the known ones when none matches.
    """
    if not isinstance(name, str) or not name:
        raise CatalogError(f"model name must be a non-empty string, got {name!r}")
    for candidate in _model_candidates(name):
        try:
            return get_model(candidate)
        except CatalogError:
            continue
    known = ", ".join(m.name for m in all_models())
    raise CatalogError(f"no catalog model matches {name!r}; known models: {known}. Add "
                       "conf/model/<model>.yaml (the Hugging Face config's sizes) or name one "
                       "explicitly (e.g. --model)")
