"""Settings of the dashboard server: limits on what one request may ask for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    """Limits and page sizes of the dashboard (the defaults suit a laptop CPU)."""

    device: str = "auto"
    """Where the model runs when the server loads it: auto, cpu or cuda."""
    max_prompt_tokens: int = 256
    """Longest playground prompt, in tokens (BOS included); longer ones get a 422."""
    max_prompt_chars: int = 4000
    """Longest playground prompt, in characters (checked before tokenising)."""
    max_new_tokens: int = 64
    """Longest generated continuation, in tokens; longer requests get a 422."""
    default_new_tokens: int = 16
    """Generated tokens when a request does not say."""
    top_k: int = 10
    """Next-token predictions listed, before and after an intervention."""
    max_interventions: int = 64
    """Heads that one request may switch off or scale."""
    max_scale: float = 100.0
    """Largest |scale| of a head or the neuron."""
    page_size: int = 50
    """Rows per page of the neuron and pair tables."""
    max_page_size: int = 500
    """Most rows one page may ask for."""
    max_prompts: int = 12
    """Prompts shown per neuron page, and per class on a pair page. The report stage
    stores as many per tracked neuron and kept pair in the views table
    (`lookuplens.report.views.VIEW_PROMPTS`); more are run through the model."""
    max_heads: int = 24
    """Upstream heads listed on a neuron page (by mean direct attribution)."""
    cache_entries: int = 4096
    """Model results (per-prompt activations, attention) kept in memory."""
    response_cache_entries: int = 512
    """Finished pages and API answers kept in memory (the run does not change while the
    server runs)."""

    def __post_init__(self) -> None:
        for name in (
            "max_prompt_tokens",
            "max_prompt_chars",
            "max_new_tokens",
            "top_k",
            "max_interventions",
            "page_size",
            "max_page_size",
            "max_prompts",
            "max_heads",
            "cache_entries",
            "response_cache_entries",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.default_new_tokens <= self.max_new_tokens:
            raise ValueError("default_new_tokens must lie between 0 and max_new_tokens")
        if self.page_size > self.max_page_size:
            raise ValueError("page_size must not exceed max_page_size")
        if not self.max_scale > 0:
            raise ValueError("max_scale must be positive")


__all__ = ["ServeConfig"]
