"""A model's shape from its ``config.json`` alone (no weights): sizes, parameter count and
the FLOPs of a forward pass, for every architecture `lookuplens.model.arch` supports.

Parameters are counted the way the Hugging Face classes build the modules: GPT-2 (fused
``c_attn`` with biases, learned positions, tied LM head by default), GPT-NeoX (fused
``query_key_value`` with biases, untied ``embed_out`` by default) and the Llama family
(separate q/k/v/o projections with grouped-query key/value heads, a gated MLP,
RMSNorm; Qwen2 adds q/k/v biases).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lookuplens.errors import ModelLoadError, UserError
from lookuplens.model.arch import spec_for

__all__ = ["ModelShape", "read_config", "shape_from_config"]


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only causal LM that its cost depends on."""

    name: str
    """Where the config came from (a folder, a hub id, ``bundled:NAME``)."""
    model_type: str
    architecture: str
    """The `ArchSpec` family serving `model_type`."""
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    max_context: int
    gated_mlp: bool
    tied_embeddings: bool
    parallel_residual: bool
    embed_params: int
    """Token embedding, plus learned positions where the model has them."""
    layer_params: int
    """One decoder layer: attention, MLP, norms, biases."""
    layer_matmul_params: int
    """The weights of one layer's matrix multiplications (2 FLOPs each per token)."""
    head_params: int
    """The final norm and, when not tied to the embedding, the LM head."""
    dtype: str = "float32"
    """The dtype the config says the weights were saved in (informational)."""

    @property
    def params(self) -> int:
        return self.embed_params + self.n_layers * self.layer_params + self.head_params

    @property
    def layer_weight_params(self) -> int:
        return self.layer_params

    def layer_flops(self, tokens: float, seq_len: float) -> float:
        """FLOPs of one decoder layer on `tokens` tokens in sequences of `seq_len`
        (padded) positions: the matrix multiplications, and attention's scores and
        weighted sum over the whole (masked) ``seq_len x seq_len`` square."""
        linear = 2.0 * self.layer_matmul_params * tokens
        attention = 4.0 * tokens * seq_len * self.n_heads * self.d_head
        return linear + attention

    def unembed_flops(self, tokens: float) -> float:
        """FLOPs of the LM head on `tokens` positions."""
        return 2.0 * self.d_model * self.d_vocab * tokens

    def forward_flops(self, tokens: float, seq_len: float, layers: float | None = None) -> float:
        """A forward pass through `layers` decoder layers (default: all) and the LM head
        on every position: about 2 x params x tokens plus attention's term."""
        n = self.n_layers if layers is None else layers
        return n * self.layer_flops(tokens, seq_len) + self.unembed_flops(tokens)


def read_config(source: str) -> tuple[dict[str, Any], str]:
    """The raw ``config.json`` of a local folder, a ``bundled:NAME`` model or a hub id
    (through `transformers.AutoConfig`, which needs the network or the local cache), and a
    name for it. Bad input raises a `UserError` with one line."""
    from lookuplens.zoo import bundled_model_path, default_model_path

    if not source:
        folder: Path | None = default_model_path()
        name = "bundled:storyworld"
    elif source.startswith("bundled:"):
        try:
            folder = bundled_model_path(source)
        except KeyError as e:
            raise UserError(str(e.args[0])) from None
        name = source
    else:
        folder = Path(source).expanduser()
        name = source
        looks_local = (
            folder.exists()
            or source.startswith((".", "/", "~"))
            or source.endswith(("/", os.sep))
            or source.count("/") > 1
        )
        if not looks_local:
            folder = None
    if folder is not None:
        if not folder.is_dir():
            raise UserError(f"model folder {source} does not exist; pass a folder or a hub id")
        path = folder / "config.json"
        if not path.is_file():
            raise UserError(
                f"{folder} holds no config.json; pass a model folder written by "
                "save_pretrained (the weights are not needed) or a hub id"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{path} is not a readable JSON config: {e}".splitlines()[0]) from None
        if not isinstance(data, dict):
            raise UserError(f"{path} is not a JSON object")
        return data, name
    return _hub_config(source), name


def _hub_config(model_id: str) -> dict[str, Any]:
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(model_id)
    except Exception as e:  # offline, unknown id, gated repository: one line says which
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(
            f"cannot read the config of {model_id!r} from the Hugging Face hub ({first[:200]}); "
            "pass a local folder holding its config.json instead"
        ) from None
    return dict(cfg.to_dict())


def _int(data: dict[str, Any], *keys: str, default: int | None = None) -> int:
    for k in keys:
        v = data.get(k)
        if v is not None and not isinstance(v, bool):
            try:
                return int(v)
            except (TypeError, ValueError):
                break
    if default is not None:
        return default
    raise UserError(f"config.json lacks {keys[0]!r}; it is needed to estimate the cost")


def shape_from_config(data: dict[str, Any], name: str = "") -> ModelShape:
    """The `ModelShape` of a config dict (``config.json``'s contents)."""
    model_type = str(data.get("model_type") or "")
    if not model_type:
        raise UserError(f"config.json of {name or 'the model'} has no model_type")
    spec = spec_for(model_type)  # UnsupportedArchitectureError lists the supported types
    if spec.name == "gpt2":
        d = _int(data, "n_embd", "hidden_size")
        n_layers = _int(data, "n_layer", "num_hidden_layers")
        n_heads = _int(data, "n_head", "num_attention_heads")
        d_mlp = _int(data, "n_inner", "intermediate_size", default=4 * d)
        vocab = _int(data, "vocab_size")
        ctx = _int(data, "n_positions", "max_position_embeddings", default=1024)
        d_head = d // n_heads
        n_kv = n_heads
        tied = bool(data.get("tie_word_embeddings", True))
        gated = parallel = False
        embed = vocab * d + ctx * d
        matmul = d * 3 * d + d * d + 2 * d * d_mlp
        layer = matmul + 3 * d + d + d_mlp + d + 4 * d  # biases and two LayerNorms
        head = 2 * d
    elif spec.name == "gpt_neox":
        d = _int(data, "hidden_size")
        n_layers = _int(data, "num_hidden_layers")
        n_heads = _int(data, "num_attention_heads")
        d_mlp = _int(data, "intermediate_size", default=4 * d)
        vocab = _int(data, "vocab_size")
        ctx = _int(data, "max_position_embeddings", default=2048)
        d_head = d // n_heads
        n_kv = n_heads
        tied = bool(data.get("tie_word_embeddings", False))
        gated = False
        parallel = bool(data.get("use_parallel_residual", True))
        embed = vocab * d
        matmul = d * 3 * d + d * d + 2 * d * d_mlp
        layer = matmul + 3 * d + d + d_mlp + d + 4 * d
        head = 2 * d
    else:  # the Llama family: llama, mistral, qwen2
        d = _int(data, "hidden_size")
        n_layers = _int(data, "num_hidden_layers")
        n_heads = _int(data, "num_attention_heads")
        n_kv = _int(data, "num_key_value_heads", default=n_heads)
        d_head = _int(data, "head_dim", default=d // n_heads)
        d_mlp = _int(data, "intermediate_size")
        vocab = _int(data, "vocab_size")
        ctx = _int(data, "max_position_embeddings", default=2048)
        tied = bool(data.get("tie_word_embeddings", False))
        gated, parallel = True, False
        qkv_bias = model_type == "qwen2" or bool(data.get("attention_bias", False))
        o_bias = model_type != "qwen2" and bool(data.get("attention_bias", False))
        mlp_bias = bool(data.get("mlp_bias", False))
        embed = vocab * d
        matmul = d * n_heads * d_head + 2 * d * n_kv * d_head + n_heads * d_head * d
        matmul += 3 * d * d_mlp
        layer = matmul + 2 * d
        layer += (n_heads + 2 * n_kv) * d_head if qkv_bias else 0
        layer += d if o_bias else 0
        layer += 2 * d_mlp + d if mlp_bias else 0
        head = d
    if min(d, n_layers, n_heads, d_mlp, vocab, d_head) < 1:
        raise UserError(f"config.json of {name or 'the model'} has a size below 1")
    if not tied:
        head += vocab * d
    return ModelShape(
        name=name,
        model_type=model_type,
        architecture=spec.name,
        n_layers=n_layers,
        d_model=d,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_head=d_head,
        d_mlp=d_mlp,
        d_vocab=vocab,
        max_context=ctx,
        gated_mlp=gated,
        tied_embeddings=tied,
        parallel_residual=parallel,
        embed_params=embed,
        layer_params=layer,
        layer_matmul_params=matmul,
        head_params=head,
        dtype=str(data.get("torch_dtype") or data.get("dtype") or "float32"),
    )
