"""Settings of the static HTML report."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReportConfig:
    """What the report shows and how much of it."""

    max_neurons: int = 50
    """Neurons given a section (selected ones first, then the baseline, by congruence)."""
    max_prompts: int = 8
    """Prompts shown per neuron and per (neuron, head) pair."""
    max_pairs: int = 100
    """Kept (neuron, head) pairs given a section (best first)."""
    max_heads: int = 10
    """Upstream heads listed per neuron (by mean ``direct`` attribution)."""
    n_vocab_tokens: int = 10
    """Promoted and suppressed tokens listed per neuron (needs the model)."""
    include_baseline: bool = True
    """Give the random-baseline neurons sections too (after the selected ones)."""
    load_tokenizer: bool = True
    """Without a model, load the run's tokenizer (local files only, never the network) to
    show prompts token by token; when False or when it cannot be loaded, prompts are shown
    as text."""
    batch_prompts: int = 16
    """Prompts per forward pass when the model computes activations and attention."""
    title: str | None = None
    """The page title; ``None`` uses the run directory's name."""

    def __post_init__(self) -> None:
        for name in ("max_neurons", "max_prompts", "max_pairs", "max_heads", "n_vocab_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if isinstance(self.batch_prompts, bool) or self.batch_prompts < 1:
            raise ValueError(f"batch_prompts must be at least 1, got {self.batch_prompts!r}")
