"""Model and GPU catalogs: hand-counted sizes, lookups, and messages for bad entries."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.catalog import (
    CatalogError,
    ModelSpec,
    all_gpus,
    all_models,
    get_gpu,
    get_model,
    gpu_from_dict,
    model_from_dict,
)
from tests.sim.perf.conftest import ROUND_GPU, TINY, make_model

GOOD_MODEL_YAML = """\
name: Good
hf_id: test/good
num_layers: 2
hidden_size: 64
num_attention_heads: 4
num_kv_heads: 2
head_dim: 16
intermediate_size: 128
gated_mlp: true
activation: silu
vocab_size: 100
max_position_embeddings: 512
"""


# ---- hand-counted sizes ------------------------------------------------------------------
def test_tiny_model_parameter_count_by_hand():
    m = make_model()
    # attention: QKV 64 x (64 + 2*32) + out 64 x 64
    assert m.attn_params_per_layer == 64 * 128 + 64 * 64 == 12288
    # gated MLP: gate+up 64 x 256, down 128 x 64
    assert m.mlp_params_per_layer == 64 * 256 + 128 * 64 == 24576
    # two RMSNorm weights
    assert m.norm_params_per_layer == 128
    assert m.params_per_layer == 12288 + 24576 + 128 == 36992
    # embedding 100 x 64, untied LM head 100 x 64, final norm 64
    assert m.embedding_params == 6400 + 6400 + 64
    assert m.num_params == 2 * 36992 + 12864 == 86848
    assert m.weight_bytes == 2 * 86848  # bfloat16


def test_tiny_model_kv_bytes_per_token_by_hand():
    m = make_model()
    # K and V x 2 layers x 2 KV heads x 16 dims x 2 bytes
    assert m.kv_bytes_per_token == 2 * 2 * 2 * 16 * 2 == 256
    assert make_model(dtype="float32").kv_bytes_per_token == 512
    assert make_model(num_kv_heads=4).kv_bytes_per_token == 512


def test_tiny_model_variants_by_hand():
    # plain two-GEMM MLP with biases, LayerNorm, learned positions, tied head
    m = make_model(gated_mlp=False, mlp_bias=True, qkv_bias=True, norm="layernorm",
                   position_embedding="learned", tie_word_embeddings=True, activation="gelu")
    assert m.attn_params_per_layer == 12288 + 128 + 64  # + QKV bias + out bias
    assert m.mlp_params_per_layer == 64 * 128 + 128 * 64 + 128 + 64
    assert m.norm_params_per_layer == 2 * 2 * 64
    assert m.embedding_params == 6400 + (512 + 2) * 64 + 2 * 64  # no LM head, OPT offset 2


def test_tiny_moe_parameter_count_by_hand():
    m = make_model(num_experts=4, num_experts_per_tok=2, shared_expert_intermediate_size=32)
    expert = 64 * 256 + 128 * 64
    router = 64 * 4
    shared = 3 * 64 * 32 + 64
    assert m.is_moe
    assert m.mlp_params_per_layer == 4 * expert + router + shared


def test_llama2_7b_sizes():
    m = get_model("Llama-2-7B")
    assert m.num_params == 6_738_415_616
    assert m.weight_bytes == pytest.approx(13.48e9, rel=0.01)
    assert m.kv_bytes_per_token == 524288  # 2 x 32 layers x 4096 x 2 bytes


def test_every_model_matches_its_published_parameter_count():
    checked = 0
    for m in all_models():
        if m.published_params:
            assert m.num_params == pytest.approx(m.published_params, rel=0.03), m.name
            checked += 1
    assert checked >= 20


def test_every_gpu_converts_units_once():
    gpus = all_gpus()
    assert len(gpus) >= 10
    a100 = get_gpu("A100-80GB-SXM")
    assert a100.memory_bytes == 80 * 2**30
    assert a100.peak_flops_per_s == 312e12
    assert a100.hbm_bytes_per_s == 2039e9
    assert a100.intra_node_bytes_per_s == 300e9  # NVLink
    assert a100.network_bytes_per_s == 25e9
    a10g = get_gpu("A10G")
    assert a10g.nvlink_bytes_per_s == 0
    assert a10g.intra_node_bytes_per_s == a10g.pcie_bytes_per_s == 32e9  # falls back to PCIe


# ---- lookups -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Llama-2-7B", "llama-2-7b", "llama2_7b", "LLAMA 2 7B",
                                  "Llama-2-7b-hf"])
def test_model_lookup_ignores_case_and_punctuation(name):
    assert get_model(name).hf_id == "meta-llama/Llama-2-7b-hf"


def test_lookup_passes_specs_through():
    m, g = make_model(), gpu_from_dict(ROUND_GPU)
    assert get_model(m) is m
    assert get_gpu(g) is g
    assert get_gpu("a100_80gb_sxm").name == "A100-80GB-SXM"


def test_unknown_model_lists_known_names():
    with pytest.raises(CatalogError, match="Llama-2-7B") as exc:
        get_model("Llama-9-7B")
    assert "unknown model" in str(exc.value)


def test_unknown_gpu_lists_known_names():
    with pytest.raises(CatalogError, match="A100-80GB-SXM"):
        get_gpu("B9000")


@pytest.mark.parametrize("name", ["", None])
def test_empty_name_is_rejected(name):
    with pytest.raises(CatalogError, match="non-empty string"):
        get_model(name)


# ---- validation --------------------------------------------------------------------------
def test_tp_must_divide_heads():
    m = get_model("Llama-2-7B")
    m.check_tp(4)
    with pytest.raises(CatalogError, match="tensor_parallel_size=3") as exc:
        m.check_tp(3)
    assert "[1, 2, 4, 8, 16, 32]" in str(exc.value)
    for bad in (0, -2, True, 2.0):
        with pytest.raises(CatalogError, match="tensor_parallel_size"):
            m.check_tp(bad)


def test_pp_must_not_exceed_layers():
    m = make_model()
    m.check_pp(2)
    with pytest.raises(CatalogError, match="pipeline_parallel_size=3"):
        m.check_pp(3)
    with pytest.raises(CatalogError, match="pipeline_parallel_size"):
        m.check_pp(0)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"num_layers": 0}, "num_layers"),
        ({"hidden_size": -64}, "hidden_size"),
        ({"num_kv_heads": 3}, "num_kv_heads"),
        ({"num_experts_per_tok": 2}, "num_experts_per_tok"),
        ({"shared_expert_intermediate_size": -1}, "shared_expert_intermediate_size"),
        ({"dtype": "float8"}, "dtype"),
        ({"activation": "swish"}, "activation"),
        ({"norm": "batchnorm"}, "norm"),
        ({"position_embedding": "sinusoid"}, "position_embedding"),
        ({"num_layers": 2.5}, "num_layers"),
        ({"num_layers": True}, "num_layers"),
        ({"gated_mlp": "yes"}, "gated_mlp"),
        ({"name": 7}, "name"),
    ],
)
def test_model_from_dict_names_the_bad_field(overrides, field):
    with pytest.raises(CatalogError, match=field):
        model_from_dict({**TINY, **overrides})


def test_model_from_dict_accepts_integral_floats_and_exponent_strings():
    m = model_from_dict({**TINY, "num_layers": 2.0, "published_params": "6.7e9"})
    assert m.num_layers == 2 and isinstance(m.num_layers, int)
    assert m.published_params == 6.7e9


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"memory_gib": 0}, "memory_gib"),
        ({"peak_dense_tflops": -1}, "peak_dense_tflops"),
        ({"num_sms": 0}, "num_sms"),
        ({"nvlink_bandwidth_gb_per_s": -1}, "nvlink_bandwidth_gb_per_s"),
        ({"calibration": ""}, "calibration"),
    ],
)
def test_gpu_from_dict_names_the_bad_field(overrides, field):
    with pytest.raises(CatalogError, match=field):
        gpu_from_dict({**ROUND_GPU, **overrides})


# ---- malformed catalog files -------------------------------------------------------------
def _conf_with_model(tmp_path: Path, text: str) -> Path:
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "good.yaml").write_text(GOOD_MODEL_YAML)
    (conf / "model" / "bad.yaml").write_text(text)
    return conf


def test_well_formed_conf_dir_loads(tmp_path):
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "good.yaml").write_text(GOOD_MODEL_YAML)
    assert get_model("good", conf_dir=conf).num_params == 86848
    assert [m.name for m in all_models(conf_dir=conf)] == ["Good"]


def test_yaml_syntax_error_names_the_file(tmp_path):
    conf = _conf_with_model(tmp_path, "name: Bad\nhidden_size: [64\n")
    with pytest.raises(CatalogError, match=r"bad\.yaml: malformed YAML"):
        get_model("good", conf_dir=conf)


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    text = GOOD_MODEL_YAML.replace("name: Good", "name: Bad").replace("hidden_size", "hiden_size")
    conf = _conf_with_model(tmp_path, text)
    with pytest.raises(CatalogError, match="unknown field 'hiden_size'") as exc:
        get_model("good", conf_dir=conf)
    assert "did you mean 'hidden_size'" in str(exc.value)
    assert "bad.yaml" in str(exc.value)


def test_missing_key_is_named(tmp_path):
    text = GOOD_MODEL_YAML.replace("name: Good", "name: Bad").replace("vocab_size: 100\n", "")
    conf = _conf_with_model(tmp_path, text)
    with pytest.raises(CatalogError, match="missing required field 'vocab_size'"):
        get_model("good", conf_dir=conf)


def test_negative_value_is_named(tmp_path):
    text = GOOD_MODEL_YAML.replace("name: Good", "name: Bad").replace("num_layers: 2",
                                                                       "num_layers: -2")
    conf = _conf_with_model(tmp_path, text)
    with pytest.raises(CatalogError, match="'num_layers' must be a positive integer, got -2"):
        get_model("good", conf_dir=conf)


def test_wrong_type_is_named(tmp_path):
    text = GOOD_MODEL_YAML.replace("name: Good", "name: Bad").replace("head_dim: 16",
                                                                       "head_dim: wide")
    conf = _conf_with_model(tmp_path, text)
    with pytest.raises(CatalogError, match="'head_dim': expected an integer, got 'wide'"):
        get_model("good", conf_dir=conf)


def test_non_mapping_file_is_rejected(tmp_path):
    conf = _conf_with_model(tmp_path, "- just\n- a list\n")
    with pytest.raises(CatalogError, match=r"bad\.yaml: expected a mapping"):
        get_model("good", conf_dir=conf)


def test_two_models_with_one_name_clash(tmp_path):
    # bad.yaml is named Other but shares good.yaml's Hugging Face name "good"
    conf = _conf_with_model(tmp_path, GOOD_MODEL_YAML.replace("name: Good", "name: Other"))
    with pytest.raises(CatalogError, match="clashes"):
        get_model("good", conf_dir=conf)


def test_malformed_gpu_file_names_the_field(tmp_path):
    conf = tmp_path / "conf"
    (conf / "hardware").mkdir(parents=True)
    body = "".join(f"{k}: {v}\n" for k, v in {**ROUND_GPU, "hbm_bandwidth_gb_per_s": -5}.items())
    (conf / "hardware" / "bad_gpu.yaml").write_text(body)
    with pytest.raises(CatalogError, match="hbm_bandwidth_gb_per_s"):
        get_gpu("Round-GPU", conf_dir=conf)


def test_catalog_specs_are_model_specs():
    assert all(isinstance(m, ModelSpec) for m in all_models())
    assert len({m.name for m in all_models()}) == len(all_models()) >= 20
