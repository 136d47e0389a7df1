"""Tiny random-weight models of every supported family, for tests and benchmarks.

`build_tiny_model` writes a model and a byte-level BPE tokenizer with `save_pretrained`,
so that they load through `load_model`, the same path users take.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

TinyFamily = Literal["gpt2", "gpt_neox", "gpt_neox_seq", "llama", "mistral", "qwen2"]
TINY_FAMILIES: tuple[str, ...] = ("gpt2", "gpt_neox", "gpt_neox_seq", "llama", "mistral", "qwen2")

_DEFAULT_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "She bought an apple and a pear at the market.",
    "An owl sat on an old oak tree near the river.",
    "Tom and Anna walked to the harbour to buy fish.",
    "Numbers like 12 and 345 appear in text too.",
)


def build_tokenizer(texts: Sequence[str] = _DEFAULT_TEXTS, vocab_size: int = 300) -> Any:
    """A GPT-2-style byte-level BPE tokenizer (tokens carry their leading space)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def tiny_config(
    family: str,
    vocab_size: int,
    n_layers: int = 2,
    d_model: int = 32,
    n_heads: int = 4,
    d_mlp: int = 64,
    n_ctx: int = 64,
) -> Any:
    """A small config of the given family, with biases and norms non-trivial after init."""
    import transformers as tf

    if family == "gpt2":
        return tf.GPT2Config(
            vocab_size=vocab_size,
            n_positions=n_ctx,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=n_heads,
            n_inner=d_mlp,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
    if family in ("gpt_neox", "gpt_neox_seq"):
        # the config's typed __init__ lists only its fields; legacy keywords such as
        # rotary_pct are still accepted at runtime (moved into rope_parameters)
        return tf.GPTNeoXConfig(  # type: ignore[call-arg]
            vocab_size=vocab_size,
            max_position_embeddings=n_ctx,
            hidden_size=d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            intermediate_size=d_mlp,
            rotary_pct=0.25,
            use_parallel_residual=family == "gpt_neox",
            hidden_dropout=0.0,
            attention_dropout=0.0,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=0,
        )
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        max_position_embeddings=n_ctx,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        intermediate_size=d_mlp,
        num_key_value_heads=max(1, n_heads // 2),
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    if family == "llama":
        return tf.LlamaConfig(**common)
    if family == "mistral":
        return tf.MistralConfig(**common, sliding_window=None)
    if family == "qwen2":
        return tf.Qwen2Config(**common)
    raise ValueError(f"unknown tiny family {family!r}; choose from {', '.join(TINY_FAMILIES)}")


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Give norms and biases random values so that tests exercise them (init sets 1 and 0)."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def build_tiny_model(
    family: str,
    out_dir: str | Path,
    seed: int = 0,
    texts: Sequence[str] = _DEFAULT_TEXTS,
    **config_kwargs: int,
) -> Path:
    """Build a random-weight model of `family` and save it with its tokenizer to `out_dir`."""
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer(texts)
    cfg = tiny_config(family, vocab_size=len(tok), **config_kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    _perturb(model, seed)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
