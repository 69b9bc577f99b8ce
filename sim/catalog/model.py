"""Transformer model specifications (``conf/model/*.yaml``) and their derived sizes."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from sim.catalog._load import CONF_DIR, CatalogError, build_dataclass, load_yaml, lookup
from sim.catalog._load import normalise_name as _norm

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "fp8": 1, "int8": 1}
"""Bytes per element for the supported weight / KV-cache dtypes."""

ACTIVATIONS = ("silu", "gelu", "gelu_new", "relu", "gelu_pytorch_tanh")
POSITION_EMBEDDINGS = ("rope", "learned", "alibi")
NORMS = ("rmsnorm", "layernorm")


@dataclass(slots=True)
class ModelSpec:
    """One decoder-only transformer, numbers as in its published ``config.json``.

    Sizes are element counts, not bytes. For mixture-of-experts models ``intermediate_size``
    is each expert's FFN width and ``num_experts`` > 1.
    """

    name: str
    """Display name, e.g. ``Llama-2-7B``; lookups ignore case and punctuation."""
    hf_id: str
    """Hugging Face repository id the numbers come from."""
    num_layers: int
    """Decoder layers (``num_hidden_layers``)."""
    hidden_size: int
    """Model width (``hidden_size``)."""
    num_attention_heads: int
    """Query heads."""
    num_kv_heads: int
    """Key/value heads (GQA); equals ``num_attention_heads`` for multi-head attention."""
    head_dim: int
    """Width of one attention head."""
    intermediate_size: int
    """FFN inner width (per expert for MoE models)."""
    gated_mlp: bool
    """True for SwiGLU-style MLPs (gate and up projections), False for a plain two-GEMM MLP."""
    activation: str
    """MLP activation function name."""
    vocab_size: int
    """Vocabulary size (rows of the embedding and LM head)."""
    max_position_embeddings: int
    """Longest context the model was trained for, in tokens."""
    dtype: str = "bfloat16"
    """Weight and KV-cache dtype: one of float16, bfloat16, float32, fp8, int8."""
    num_experts: int = 1
    """Routed experts per MoE layer (1 for dense models)."""
    num_experts_per_tok: int = 1
    """Experts each token is routed to (top-k)."""
    shared_expert_intermediate_size: int = 0
    """FFN width of an always-on shared expert (0 when there is none)."""
    tie_word_embeddings: bool = False
    """True when the LM head reuses the embedding matrix."""
    position_embedding: str = "rope"
    """rope, learned (OPT) or alibi (BLOOM)."""
    norm: str = "rmsnorm"
    """rmsnorm or layernorm."""
    qkv_bias: bool = False
    """Whether the QKV projection has a bias (Qwen, OPT)."""
    mlp_bias: bool = False
    """Whether the MLP and output projections have biases (OPT, BLOOM, phi-2)."""
    qk_norm: bool = False
    """Per-head RMSNorm of queries and keys before RoPE (Qwen3's ``q_norm`` / ``k_norm``)."""
    published_params: float = 0.0
    """Parameter count stated by the model's authors (0 if unknown); used only in tests."""

    def __post_init__(self) -> None:
        for field in (
            "num_layers",
            "hidden_size",
            "num_attention_heads",
            "num_kv_heads",
            "head_dim",
            "intermediate_size",
            "vocab_size",
            "max_position_embeddings",
            "num_experts",
            "num_experts_per_tok",
        ):
            value = getattr(self, field)
            if value <= 0:
                raise CatalogError(f"field {field!r} must be a positive integer, got {value}")
        if self.num_attention_heads % self.num_kv_heads:
            raise CatalogError(
                f"field 'num_kv_heads'={self.num_kv_heads} must divide "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.num_experts_per_tok > self.num_experts:
            raise CatalogError(
                f"field 'num_experts_per_tok'={self.num_experts_per_tok} exceeds "
                f"num_experts={self.num_experts}"
            )
        if self.shared_expert_intermediate_size < 0:
            raise CatalogError("field 'shared_expert_intermediate_size' must be >= 0")
        for field, allowed in (
            ("dtype", tuple(DTYPE_BYTES)),
            ("activation", ACTIVATIONS),
            ("position_embedding", POSITION_EMBEDDINGS),
            ("norm", NORMS),
        ):
            if getattr(self, field) not in allowed:
                raise CatalogError(
                    f"field {field!r}={getattr(self, field)!r} is not one of {', '.join(allowed)}"
                )

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        """True for mixture-of-experts models."""
        return self.num_experts > 1

    @property
    def dtype_bytes(self) -> int:
        """Bytes per weight / KV element."""
        return DTYPE_BYTES[self.dtype]

    @property
    def q_size(self) -> int:
        """Width of the query projection output (heads x head_dim)."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of the key (or value) projection output."""
        return self.num_kv_heads * self.head_dim

    @property
    def mlp_up_width(self) -> int:
        """Output width of one expert's up projection (gate and up fused when gated)."""
        return self.intermediate_size * (2 if self.gated_mlp else 1)

    @property
    def attn_params_per_layer(self) -> int:
        """QKV and output projection weights (plus biases) of one layer, elements."""
        h = self.hidden_size
        qkv = h * (self.q_size + 2 * self.kv_size)
        out = self.q_size * h
        bias = (self.q_size + 2 * self.kv_size if self.qkv_bias else 0) + (
            h if self.mlp_bias else 0
        )
        qk_norm = 2 * self.head_dim if self.qk_norm else 0
        return qkv + out + bias + qk_norm

    @property
    def mlp_params_per_expert(self) -> int:
        """Weights of one expert's MLP (up, optional gate, down), elements."""
        h = self.hidden_size
        w = self.mlp_up_width * h + self.intermediate_size * h
        bias = (self.mlp_up_width + h) if self.mlp_bias else 0
        return w + bias

    @property
    def mlp_params_per_layer(self) -> int:
        """All MLP weights of one layer (all experts, shared expert and router), elements."""
        h = self.hidden_size
        total = self.mlp_params_per_expert * self.num_experts
        if self.is_moe:
            total += h * self.num_experts  # router
        if self.shared_expert_intermediate_size:
            mult = 3 if self.gated_mlp else 2
            total += mult * h * self.shared_expert_intermediate_size + h  # + shared gate
        return total

    @property
    def norm_params_per_layer(self) -> int:
        """Two norms per layer (weight, plus bias for LayerNorm), elements."""
        return 2 * self.hidden_size * (2 if self.norm == "layernorm" else 1)

    @property
    def params_per_layer(self) -> int:
        """All weights of one decoder layer, elements."""
        return self.attn_params_per_layer + self.mlp_params_per_layer + self.norm_params_per_layer

    @property
    def embedding_params(self) -> int:
        """Token embedding (plus learned positions), final norm and LM head, elements."""
        h = self.hidden_size
        emb = self.vocab_size * h
        if self.position_embedding == "learned":
            emb += (self.max_position_embeddings + 2) * h  # OPT's offset of 2
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return emb + head + h * (2 if self.norm == "layernorm" else 1)

    @property
    def num_params(self) -> int:
        """Total parameter count, elements."""
        return self.num_layers * self.params_per_layer + self.embedding_params

    @property
    def weight_bytes(self) -> int:
        """Total weight size, bytes."""
        return self.num_params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token occupies across all layers (K and V)."""
        return 2 * self.num_layers * self.kv_size * self.dtype_bytes

    def check_tp(self, tp: int) -> None:
        """Raise if tensor parallel degree ``tp`` cannot shard this model's heads.

        Args:
            tp: tensor parallel degree (GPUs per pipeline stage).
        """
        if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
            raise CatalogError(f"tensor_parallel_size must be a positive integer, got {tp!r}")
        if self.num_attention_heads % tp:
            divisors = [d for d in range(1, 65) if self.num_attention_heads % d == 0]
            raise CatalogError(
                f"tensor_parallel_size={tp} does not divide {self.name}'s "
                f"{self.num_attention_heads} attention heads; use one of {divisors}"
            )

    def check_pp(self, pp: int) -> None:
        """Raise if pipeline parallel degree ``pp`` is invalid for this model."""
        if not isinstance(pp, int) or isinstance(pp, bool) or pp < 1:
            raise CatalogError(f"pipeline_parallel_size must be a positive integer, got {pp!r}")
        if pp > self.num_layers:
            raise CatalogError(
                f"pipeline_parallel_size={pp} exceeds {self.name}'s {self.num_layers} layers"
            )


@functools.cache
def _models(conf_dir: Path) -> dict[str, ModelSpec]:
    entries: dict[str, ModelSpec] = {}
    for path in sorted((conf_dir / "model").glob("*.yaml")):
        raw = load_yaml(path)
        spec = build_dataclass(ModelSpec, raw, f"conf/model/{path.name}")
        for key in {_norm(spec.name), _norm(path.stem), _norm(spec.hf_id.split("/")[-1])}:
            if key in entries and entries[key] is not spec and entries[key].name != spec.name:
                raise CatalogError(
                    f"conf/model/{path.name}: name {spec.name!r} clashes with "
                    f"{entries[key].name!r}"
                )
            entries[key] = spec
    return entries


def all_models(conf_dir: Path = CONF_DIR) -> list[ModelSpec]:
    """Every model in the catalog, sorted by name."""
    return sorted({m.name: m for m in _models(conf_dir).values()}.values(), key=lambda m: m.name)


def get_model(name: str, conf_dir: Path = CONF_DIR) -> ModelSpec:
    """Look up a model by name, file stem or Hugging Face repo name (case-insensitive).

    Raises:
        CatalogError: listing the known models when ``name`` is unknown.
    """
    if isinstance(name, ModelSpec):
        return name
    return lookup(_models(conf_dir), name, "model")


def model_from_dict(raw: dict, source: str = "model config") -> ModelSpec:
    """Validate a model given inline (e.g. from a Hydra config) instead of by name."""
    return build_dataclass(ModelSpec, raw, source)
