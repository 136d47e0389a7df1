"""Architecture table: where each supported family keeps its modules.

Adding an architecture is one `ArchSpec` entry registered here, not new logic. Module
paths are dotted attribute paths: `layers` from the causal-LM model object, every
other block-level path from one decoder layer. Names were read from the installed
`transformers` sources (modeling_gpt2.py, modeling_gpt_neox.py, modeling_llama.py,
modeling_mistral.py, modeling_qwen2.py).

Gated MLPs (Llama family): a neuron's activation is defined as
``act(gate_proj(x))[n] * up_proj(x)[n]``, the value that `down_proj` reads, so that
``mlp_out = sum_n activation[n] * W_out[n]`` holds for every family. Its *pre*-activation
(`hook_pre`) is the gate's pre-activation ``gate_proj(x)[n]``; the up projection's value
is exposed as `hook_pre_linear`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lookuplens.errors import UnsupportedArchitectureError

NormKind = Literal["layernorm", "rmsnorm"]


@dataclass(frozen=True)
class ArchSpec:
    """Where one architecture family keeps its modules."""

    name: str
    """Family name shown to users, e.g. ``"gpt2"``."""
    model_types: tuple[str, ...]
    """`config.model_type` values this entry serves."""
    layers: str
    """Path from the causal-LM object to the `ModuleList` of decoder layers."""
    final_norm: str
    """Path from the causal-LM object to the final norm before the unembedding."""
    attn: str
    """Path from a layer to its attention module (returns ``(output, weights)``)."""
    attn_norm: str
    """Path from a layer to the norm in front of attention."""
    attn_out_proj: str
    """Path from a layer to the attention output projection (reads the per-head ``z``)."""
    mlp: str
    """Path from a layer to the MLP module."""
    mlp_norm: str
    """Path from a layer to the norm in front of the MLP."""
    mlp_in: str
    """Path to the MLP input projection (the gate projection for gated MLPs)."""
    mlp_out: str
    """Path to the MLP output projection; its input is the neurons' activation."""
    mlp_act: str
    """Path to the MLP activation function module."""
    mlp_up: str | None = None
    """Path to the up projection of a gated MLP; ``None`` for ungated MLPs."""
    conv1d: bool = False
    """True when weights are stored ``[in, out]`` (GPT-2's `Conv1D`), else ``[out, in]``."""
    norm: NormKind = "layernorm"
    """Kind of every norm in the model."""
    parallel_residual_attr: str | None = None
    """Config attribute that, when true, makes attention and MLP read the same residual."""
    n_kv_heads_attr: str | None = None
    """Config attribute holding the number of key/value heads (grouped-query attention)."""


_REGISTRY: dict[str, ArchSpec] = {}
_BY_MODEL_TYPE: dict[str, ArchSpec] = {}


def register_architecture(spec: ArchSpec) -> ArchSpec:
    """Add an architecture entry. Registering a name or model type twice raises."""
    if spec.name in _REGISTRY:
        raise ValueError(f"architecture {spec.name!r} is already registered; pick another name")
    for mt in spec.model_types:
        if mt in _BY_MODEL_TYPE:
            raise ValueError(
                f"model_type {mt!r} is already served by {_BY_MODEL_TYPE[mt].name!r}; "
                "remove it from one of the entries"
            )
    _REGISTRY[spec.name] = spec
    for mt in spec.model_types:
        _BY_MODEL_TYPE[mt] = spec
    return spec


def supported_model_types() -> list[str]:
    """All `config.model_type` values with a table entry, sorted."""
    return sorted(_BY_MODEL_TYPE)


def spec_for(model_type: str) -> ArchSpec:
    """The table entry for a `config.model_type`, or a clear error listing what is supported."""
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not supported; supported model types: "
            f"{', '.join(supported_model_types())} (add an ArchSpec entry in "
            "lookuplens/model/arch.py to support another)"
        ) from None


GPT2 = register_architecture(
    ArchSpec(
        name="gpt2",
        model_types=("gpt2",),
        layers="transformer.h",
        final_norm="transformer.ln_f",
        attn="attn",
        attn_norm="ln_1",
        attn_out_proj="attn.c_proj",
        mlp="mlp",
        mlp_norm="ln_2",
        mlp_in="mlp.c_fc",
        mlp_out="mlp.c_proj",
        mlp_act="mlp.act",
        conv1d=True,
        norm="layernorm",
    )
)

GPT_NEOX = register_architecture(
    ArchSpec(
        name="gpt_neox",
        model_types=("gpt_neox",),
        layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        attn="attention",
        attn_norm="input_layernorm",
        attn_out_proj="attention.dense",
        mlp="mlp",
        mlp_norm="post_attention_layernorm",
        mlp_in="mlp.dense_h_to_4h",
        mlp_out="mlp.dense_4h_to_h",
        mlp_act="mlp.act",
        norm="layernorm",
        parallel_residual_attr="use_parallel_residual",
    )
)

LLAMA = register_architecture(
    ArchSpec(
        name="llama",
        model_types=("llama", "mistral", "qwen2"),
        layers="model.layers",
        final_norm="model.norm",
        attn="self_attn",
        attn_norm="input_layernorm",
        attn_out_proj="self_attn.o_proj",
        mlp="mlp",
        mlp_norm="post_attention_layernorm",
        mlp_in="mlp.gate_proj",
        mlp_up="mlp.up_proj",
        mlp_out="mlp.down_proj",
        mlp_act="mlp.act_fn",
        norm="rmsnorm",
        n_kv_heads_attr="num_key_value_heads",
    )
)
