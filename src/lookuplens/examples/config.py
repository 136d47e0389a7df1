"""The examples stage's settings: how top firings become prompts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lookuplens.choices import check_choices

__all__ = ["ExamplesConfig"]


@dataclass(frozen=True)
class ExamplesConfig:
    """How top firings become prompts."""

    keep_fraction: float = 0.8
    """Trim from the left while the activation stays at least this fraction (the paper: 0.8)."""
    max_prompt_tokens: int = 100
    """Drop prompts of this many tokens or more, BOS included (the paper: 100)."""
    window: int = 8
    """Candidate starts evaluated per example in each round of the batched binary search."""
    batch_tokens: int = 8192
    """Padded tokens per forward batch."""
    split: Literal["random", "rank"] = "random"
    """``random``: seeded shuffle per neuron; ``rank``: the strongest firings go to train."""
    n_train: int | None = None
    """Training examples per neuron; ``None`` uses `train_fraction`."""
    train_fraction: float = 2 / 3
    """Share of each neuron's examples used for training when `n_train` is None."""
    seed: int = 0
    """Seed of the split."""
    contrast: int = 20
    """Contrast prompts per neuron (`lookuplens.contrast`): same last token and length as
    one of its top prompts, but the neuron silent there (with the whole document as
    context). 0 turns them off (the paper's setup)."""
    contrast_fraction: float = 0.2
    """A contrast's activation is at most this fraction of the neuron's median top one."""
    contrast_search_docs: int = 5000
    """Documents read, at most, to find the contrasts."""
    keep_heads: int = 3
    """Trimming also keeps at least `keep_fraction` of the direct attribution of the
    neuron's driving heads: the (up to) this many upstream heads with the largest direct
    attribution on the untrimmed prompt that carry at least `keep_head_min` of the
    activation. A look-up that adds a modest share of the activation then keeps the word
    it reads. 0: the activation alone (the paper's rule)."""
    keep_head_min: float = 0.1
    """Least share of the activation a head's direct attribution needs to be kept."""
    keep_read_word: bool = True
    """Never trim past the word the neuron's top head reads: on the untrimmed prompt (as
    long as `max_prompt_tokens` allows), the upstream head with the largest direct
    attribution and the position it attends to most from the firing token (BOS and the
    firing token left out); the trimmed prompt starts there at the latest. False: the
    paper's rule alone."""

    def __post_init__(self) -> None:
        check_choices(self)
        if not 0 < self.keep_fraction <= 1:
            raise ValueError(f"keep_fraction must be in (0, 1], got {self.keep_fraction}")
        if self.max_prompt_tokens < 2:
            raise ValueError("max_prompt_tokens must be at least 2 (BOS and one token)")
        if self.window < 1 or self.batch_tokens < 1:
            raise ValueError("window and batch_tokens must be positive")
        if self.n_train is not None and self.n_train < 1:
            raise ValueError(f"n_train must be at least 1, got {self.n_train}")
        if not 0 < self.train_fraction < 1:
            raise ValueError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.contrast < 0 or self.contrast_search_docs < 0:
            raise ValueError("contrast and contrast_search_docs must be 0 or more")
        if self.keep_heads < 0 or not 0 <= self.keep_head_min <= 1:
            raise ValueError("keep_heads must be 0 or more and keep_head_min in [0, 1]")
        if not 0 <= self.contrast_fraction < 1:
            raise ValueError(f"contrast_fraction must be in [0, 1), got {self.contrast_fraction}")
