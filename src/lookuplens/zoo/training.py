"""What the three trainers of the bundled models share: the GPT-2 they train, endless
length-bucketed batches, the package versions a recipe records, and the output folder
(refusing an occupied --out, the training state kept in ``.NAME.partial`` until the
folder is written, and the atomic write of the finished folder)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel  # type: ignore[attr-defined]

from lookuplens import __version__
from lookuplens.errors import UserError

__all__ = [
    "gpt2_model",
    "length_batches",
    "package_versions",
    "partial_path",
    "prepare_out_dir",
    "publish_folder",
]


def length_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator
) -> Iterator[list[int]]:
    """Endless batches of document indices; length-bucketed within shuffled windows."""
    n = len(lengths)
    while True:
        order = rng.permutation(n)
        window = batch_size * 50
        batches: list[list[int]] = []
        for s in range(0, n, window):
            chunk = sorted(order[s : s + window].tolist(), key=lambda i: lengths[i])
            batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
        for b in rng.permutation(len(batches)).tolist():
            yield batches[b]


def gpt2_model(
    vocab_size: int,
    bos: int,
    *,
    n_positions: int,
    d_model: int,
    n_layer: int,
    n_head: int,
    d_mlp: int,
    dropout: float = 0.0,
    attn_dropout: float = 0.0,
) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 (GELU, tied embeddings, `bos` as BOS, EOS and padding)
    of the bundled models' shape; its weights depend on the torch seed."""
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=d_model,
        n_layer=n_layer,
        n_head=n_head,
        n_inner=d_mlp,
        activation_function="gelu_new",
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=attn_dropout,
        bos_token_id=bos,
        eos_token_id=bos,
        pad_token_id=bos,
        tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(config)


def package_versions() -> dict[str, str]:
    import tokenizers
    import transformers

    return {
        "lookuplens": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an `out_dir` that is a file, or a non-empty folder unless `overwrite`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a folder; pass another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(
            f"{out_dir} is not empty; pass a new folder as --out, or --overwrite to replace it"
        )


def partial_path(out_dir: Path) -> Path:
    """Where the training state of `out_dir` is kept until the folder is written."""
    return out_dir.with_name(f".{out_dir.name}.partial")


def publish_folder(
    out_dir: Path,
    partial: Path,
    model: Any,
    tokenizer: Any,
    recipe: dict[str, Any],
    write_more: Callable[[Path], object],
) -> None:
    """Write a trained checkpoint folder atomically: model, tokenizer, ``recipe.json`` and
    what `write_more` adds, in a temporary sibling moved onto `out_dir` (replacing it);
    then the training state in `partial` is removed. Nothing is left half-written."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
        write_more(tmp)
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        if partial.exists():
            shutil.rmtree(partial)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
