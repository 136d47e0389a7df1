"""Right-padded batches of token id lists, and the id they are padded with.

A leaf module (torch only; `LoadedModel` is needed only for type checking), so that every
stage that runs prompts through a model pads them one way without importing another stage.
Right padding keeps every real token at its own position: position ``i`` of a row is token
``i`` of its prompt, and the last real token of row ``b`` is at ``mask[b].sum() - 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from lookuplens.model.adapter import LoadedModel

__all__ = ["pad_id", "pad_right", "pad_rows"]


def pad_id(lm: LoadedModel) -> int:
    """The id used to pad batches (the tokenizer's pad, else BOS, else 0)."""
    pad = lm.tokenizer.pad_token_id
    return int(pad if pad is not None else (lm.bos_token_id or 0))


def pad_rows(
    rows: Sequence[Sequence[int]], pad: int, mask_dtype: torch.dtype = torch.long
) -> tuple[Tensor, Tensor]:
    """Token id lists right-padded with `pad` into ``(ids, mask)``, both ``[rows, width]``.

    `ids` is int64; `mask` is 1 (True) at real tokens and 0 (False) at padding, of
    `mask_dtype` (int64 for a model's attention mask, ``torch.bool`` to index with it).
    """
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=mask_dtype)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def pad_right(lm: LoadedModel, rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Prompts right-padded with `pad_id` of `lm`: int64 ``(ids, attention mask)``."""
    return pad_rows(rows, pad_id(lm))
