"""Catalog entries for popular served models: load, resolve from run names, published sizes."""

from __future__ import annotations

import pytest

from sim.catalog import get_model
from sim.catalog.resolve import resolve_model

NEW_MODELS = {
    # name: the Instruct repo id real runs record, or None when the catalog repo is the served one
    "Llama-3.2-1B": "meta-llama/Llama-3.2-1B-Instruct",
    "Llama-3.2-3B": "meta-llama/Llama-3.2-3B-Instruct",
    "Llama-3.3-70B": None,
    "Qwen3-0.6B": None,
    "Qwen3-1.7B": None,
    "Qwen3-4B": "Qwen/Qwen3-4B-Instruct-2507",
    "Qwen3-8B": None,
    "Qwen3-235B-A22B": "Qwen/Qwen3-235B-A22B-Instruct-2507",
    "Qwen2.5-0.5B": "Qwen/Qwen2.5-0.5B-Instruct",
    "Qwen2.5-1.5B": "Qwen/Qwen2.5-1.5B-Instruct",
    "Qwen2.5-3B": "Qwen/Qwen2.5-3B-Instruct",
    "Qwen2.5-Coder-7B": "Qwen/Qwen2.5-Coder-7B-Instruct",
    "Qwen2.5-Coder-32B": "Qwen/Qwen2.5-Coder-32B-Instruct",
    "Mistral-Small-24B": "mistralai/Mistral-Small-24B-Instruct-2501",
    "Mistral-Nemo-12B": "mistralai/Mistral-Nemo-Instruct-2407",
    "Phi-3.5-mini": None,
    "Phi-3-mini-128k": None,
    "phi-4": None,
    "DeepSeek-R1-Distill-Llama-8B": None,
    "DeepSeek-R1-Distill-Llama-70B": None,
    "DeepSeek-R1-Distill-Qwen-1.5B": None,
    "DeepSeek-R1-Distill-Qwen-7B": None,
    "DeepSeek-R1-Distill-Qwen-14B": None,
    "DeepSeek-R1-Distill-Qwen-32B": None,
}


@pytest.mark.parametrize("name", sorted(NEW_MODELS))
def test_entry_loads_and_matches_its_published_parameter_count(name):
    m = get_model(name)
    assert m.name == name
    assert m.published_params > 0
    assert m.num_params == pytest.approx(m.published_params, rel=0.03)
    m.check_tp(1)
    m.check_pp(1)


@pytest.mark.parametrize("name", sorted(NEW_MODELS))
def test_entry_resolves_from_its_repo_id(name):
    m = get_model(name)
    assert resolve_model(m.hf_id).name == name
    assert resolve_model(m.hf_id.split("/")[-1]).name == name


@pytest.mark.parametrize(("name", "instruct"),
                         sorted((n, i) for n, i in NEW_MODELS.items() if i))
def test_instruct_variant_resolves_to_the_base_entry(name, instruct):
    assert resolve_model(instruct).name == name


def test_sizes_that_differ_from_the_hidden_width():
    # explicit head_dim: query width != hidden_size
    assert get_model("Qwen3-0.6B").q_size == 2048
    assert get_model("Mistral-Small-24B").q_size == 4096
    assert get_model("Mistral-Nemo-12B").q_size == 4096
    # tied embeddings for the small Qwen and Llama models, untied from Qwen3-8B up
    assert get_model("Llama-3.2-1B").tie_word_embeddings
    assert get_model("Qwen3-4B").tie_word_embeddings
    assert not get_model("Qwen3-8B").tie_word_embeddings
    # Qwen3 MoE: 128 experts, top-8, each 1536 wide
    moe = get_model("Qwen3-235B-A22B")
    assert (moe.num_experts, moe.num_experts_per_tok, moe.intermediate_size) == (128, 8, 1536)
    assert moe.kv_bytes_per_token == 2 * 94 * 4 * 128 * 2
