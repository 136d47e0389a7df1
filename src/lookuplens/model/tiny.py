"""Tiny random-weight models of every supported family, for tests and benchmarks.

`build_tiny_model` writes a model and a tokenizer with `save_pretrained`, so that they
load through `load_model`, the same path users take. The tokenizer is one of the
conventions `lookuplens.model.vocab` knows: byte-level BPE trained on a few sentences
(GPT-2 style, the default), the real SentencePiece model of Mistral 7B v1 (32,000
pieces, shipped in the PyPI package ``mistral-common``), a word-level or a WordPiece
tokenizer trained on a few sentences.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

TinyFamily = Literal["gpt2", "gpt_neox", "gpt_neox_seq", "llama", "mistral", "qwen2"]
TINY_FAMILIES: tuple[str, ...] = ("gpt2", "gpt_neox", "gpt_neox_seq", "llama", "mistral", "qwen2")
TokenizerKind = Literal["byte_level", "sentencepiece", "word_level", "wordpiece"]
TOKENIZER_KINDS: tuple[str, ...] = ("byte_level", "sentencepiece", "word_level", "wordpiece")

_DEFAULT_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "She bought an apple and a pear at the market.",
    "An owl sat on an old oak tree near the river.",
    "Tom and Anna walked to the harbour to buy fish.",
    "Numbers like 12 and 345 appear in text too.",
)


def build_tokenizer(
    texts: Sequence[str] = _DEFAULT_TEXTS, vocab_size: int = 300, kind: str = "byte_level"
) -> Any:
    """A tokenizer of the given convention (see the module docstring); `texts` and
    `vocab_size` train the byte-level, word-level and WordPiece ones."""
    if kind == "sentencepiece":
        return mistral_sentencepiece_tokenizer()
    if kind == "word_level":
        return _word_level_tokenizer(texts)
    if kind == "wordpiece":
        return _wordpiece_tokenizer(texts, vocab_size)
    if kind != "byte_level":
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose from {TOKENIZER_KINDS}")
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


def mistral_sentencepiece_file() -> Path:
    """The SentencePiece model of Mistral 7B v1 as shipped by the ``mistral-common`` package
    (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("mistral_common")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "data" / "tokenizer.model.v1"
        if path.is_file():
            return path
    raise FileNotFoundError(
        "the Mistral v1 SentencePiece file comes with the mistral-common package: "
        "pip install --no-deps mistral-common (bash scripts/setup.sh --test does)"
    )


def mistral_sentencepiece_tokenizer() -> Any:
    """The real Mistral 7B v1 tokenizer (SentencePiece, "▁" word starts, byte fallback)."""
    import shutil
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(mistral_sentencepiece_file(), Path(tmp) / "tokenizer.model")
        (Path(tmp) / "tokenizer_config.json").write_text(
            '{"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", '
            '"unk_token": "<unk>", "add_bos_token": true, "add_eos_token": false, '
            '"legacy": false}'
        )
        return AutoTokenizer.from_pretrained(tmp)


def _word_level_tokenizer(texts: Sequence[str]) -> Any:
    """Every whitespace- or punctuation-separated word of `texts` one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<s>", "<unk>"], show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<s>", unk_token="<unk>", pad_token="<s>"
    )


def _wordpiece_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """BERT-style WordPiece: continuation pieces marked with "##"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[CLS]", "[UNK]"], show_progress=False
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="[CLS]",
        eos_token="[CLS]",
        unk_token="[UNK]",
        pad_token="[CLS]",
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
    tokenizer: str = "byte_level",
    **config_kwargs: int,
) -> Path:
    """Build a random-weight model of `family` and save it with its tokenizer to `out_dir`
    (`tokenizer`: one of `TOKENIZER_KINDS`)."""
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer(texts, kind=tokenizer)
    cfg = tiny_config(family, vocab_size=len(tok), **config_kwargs)
    # the tokenizer's own special ids (the Mistral tokenizer's <s> is 1, not 0)
    bos = tok.bos_token_id if tok.bos_token_id is not None else 0
    eos = tok.eos_token_id if tok.eos_token_id is not None else bos
    cfg.bos_token_id, cfg.eos_token_id = bos, eos
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    _perturb(model, seed)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
