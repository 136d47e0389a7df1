"""The settings the explainers, simulators and the LLM client read: which tasks
(`TaskConfig`), the offline explainer (`OfflineConfig`) and the LLM endpoint
(`LLMConfig`). Frozen dataclasses, checked on creation; they depend on no other part of
`lookuplens.explain`, so everything may import them.

No secret is ever held here: the LLM's key is read from the environment variable named
by `LLMConfig.api_key_env` when the client is made, and never stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from lookuplens.choices import check_choices

__all__ = ["LLMConfig", "OfflineConfig", "TaskConfig", "Targets", "TokensParam"]

Targets = Literal["pairs", "neurons", "both"]
TokensParam = Literal["max_completion_tokens", "max_tokens"]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class TaskConfig:
    """Which (neuron, head) pairs and neurons are explained and scored, and how the
    non-firing contexts of a neuron are chosen. Explain and score must use the same."""

    targets: Targets = "both"
    """``pairs``: when does a head drive a neuron; ``neurons``: when does a neuron fire;
    ``both``."""
    include_baseline: bool = True
    """Also explain and score the random-baseline neurons and their pairs."""
    negative_fraction: float = 0.25
    """A context counts as non-firing for a neuron when the neuron's activation at its last
    token is at most this fraction of the median activation over the neuron's own examples."""
    negative_candidates: int = 3
    """Candidate contexts (other neurons' examples) tried per example of the neuron."""
    seed: int = 0
    """Seed of the choice of non-firing contexts."""
    batch_tokens: int = 8192
    """Padded tokens per forward pass when activations or attention are computed."""

    def __post_init__(self) -> None:
        check_choices(self)
        if not 0 <= self.negative_fraction < 1:
            raise ValueError(
                f"negative_fraction must be in [0, 1), got {self.negative_fraction}; 0.25 keeps "
                "contexts where the neuron reaches at most a quarter of its typical activation"
            )
        if self.negative_candidates < 1:
            raise ValueError("negative_candidates must be at least 1 (3 is a good start)")
        if self.batch_tokens < 1:
            raise ValueError("batch_tokens must be positive")

    @property
    def pairs(self) -> bool:
        return self.targets in ("pairs", "both")

    @property
    def neurons(self) -> bool:
        return self.targets in ("neurons", "both")


@dataclass(frozen=True)
class OfflineConfig:
    """The offline explainer: token and n-gram cues that separate active from inactive
    training prompts, ranked by smoothed log-odds, chosen greedily, and what the head
    attends to from the last token."""

    modulation_min_group: int = 8
    """Least firing prompts sharing a trigger (last token) for the modulation analysis."""
    modulation_min_z: float = 2.0
    """z-score a word needs to be named as raising the activation after a trigger."""
    modulation_skip_last: int = 3
    """Tokens at the end of a prompt that the modulation analysis leaves out (the trigger
    phrase, "she packed her"); words the explanation already names are left out too."""
    modulation_max_words: int = 3
    """Words named as raising the activation (0: no modulation sentence)."""
    max_ngram: int = 3
    """Longest token n-gram considered as a cue."""
    min_count: int = 2
    """A cue must occur in at least this many training prompts."""
    prior_strength: float = 2.0
    """Strength (pseudo-prompts) of the informative Beta prior: each class's rate of a cue
    is pulled toward the cue's rate over all prompts of the run."""
    min_z: float = 1.5
    """Smallest |z| (log-odds over its standard error) for a cue to be a candidate."""
    max_candidates: int = 40
    """Candidates (highest |z| first) offered to the greedy selection."""
    max_features: int = 4
    """Most cues in one explanation."""
    min_gain: float = 0.02
    """A cue is added only if it raises the training balanced accuracy by this much."""
    attention_min_mass: float = 0.05
    """A cue counts as looked up when the head's attention from the last token to it
    averages at least this much on active prompts ..."""
    attention_min_ratio: float = 1.5
    """... and at least this many times a uniform share (1 / prompt length)."""
    n_attended_tokens: int = 3
    """How many of the head's most attended source tokens the explanation names."""
    lookup_fraction: float = 0.5
    """For a pair, the tokens whose look-up score (`lookuplens.explain.lookup`: what the
    head writes into the neuron's input when it attends to the token) is at least this
    fraction of the best token's form one candidate cue, "contains one of them"; 0 turns
    the cue off."""
    lookup_max_tokens: int = 64
    """At most this many tokens in that cue."""
    lookup_min_attention: float = 0.1
    """A token of that cue that occurs in training prompts stays in it only if the head's
    attention to it from the last position averages at least this much there."""

    def __post_init__(self) -> None:
        if self.max_ngram < 1:
            raise ValueError("max_ngram must be at least 1")
        if self.modulation_min_group < 2 or self.modulation_skip_last < 1:
            raise ValueError("modulation_min_group must be >= 2 and modulation_skip_last >= 1")
        if self.modulation_max_words < 0 or self.modulation_min_z < 0:
            raise ValueError("modulation_max_words and modulation_min_z must be 0 or more")
        if self.min_count < 1:
            raise ValueError("min_count must be at least 1")
        if self.prior_strength <= 0:
            raise ValueError("prior_strength must be positive (2.0 is a mild prior)")
        if self.min_z < 0:
            raise ValueError("min_z must be non-negative")
        if self.max_candidates < 1 or self.max_features < 0:
            raise ValueError("max_candidates must be >= 1 and max_features >= 0")
        if not 0 <= self.min_gain < 1:
            raise ValueError("min_gain must be in [0, 1)")
        if not 0 <= self.lookup_fraction <= 1 or self.lookup_max_tokens < 1:
            raise ValueError("lookup_fraction must be in [0, 1] and lookup_max_tokens >= 1")
        if not 0 <= self.attention_min_mass <= 1 or self.attention_min_ratio < 0:
            raise ValueError("attention_min_mass must be in [0, 1], attention_min_ratio >= 0")
        if self.n_attended_tokens < 0:
            raise ValueError("n_attended_tokens must be non-negative")


@dataclass(frozen=True)
class LLMConfig:
    """An OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp server) used
    through the official ``openai`` client, with a response cache, retries and a budget."""

    model: str = "gpt-4o-mini"
    """Model name as the endpoint knows it (part of the cache key)."""
    base_url: str | None = None
    """Endpoint, e.g. ``http://127.0.0.1:8000/v1`` for vLLM; ``None`` is OpenAI's."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """Name of the environment variable holding the key (never the key itself); ``None``
    for a local server that needs no key."""
    temperature: float | None = 0.0
    """Sampling temperature; ``None`` leaves it to the endpoint (some models refuse 0)."""
    seed: int | None = 0
    """Seed sent with each request where the endpoint supports it; ``None`` sends none."""
    json_mode: bool = True
    """Ask for a JSON object (``response_format``) in batched simulation requests."""
    tokens_param: TokensParam = "max_completion_tokens"
    """Name of the completion-length parameter; older servers know only ``max_tokens``."""
    max_explanation_tokens: int = 200
    """Completion tokens allowed for one explanation."""
    answer_tokens_per_prompt: int = 24
    """Completion tokens allowed per prompt in a batched simulation (plus a margin of 32)."""
    max_examples_per_class: int = 10
    """Active and inactive examples shown to the explainer, each."""
    max_prompt_chars: int = 600
    """Longer example texts keep only their end (where the firing token is)."""
    timeout_s: float = 60.0
    """Seconds before a request counts as timed out (and is retried)."""
    max_retries: int = 5
    """Retries after 429, 5xx, timeouts and connection errors."""
    backoff_initial_s: float = 1.0
    """First retry delay; it doubles on each retry (a Retry-After header is honoured)."""
    backoff_max_s: float = 60.0
    """Longest delay between retries."""
    max_requests: int | None = None
    """Stop sending after this many requests (cached answers are free); ``None``: no cap."""
    max_tokens: int | None = None
    """Stop sending once prompt plus completion tokens reach this; ``None``: no cap."""
    cache_dir: str | None = None
    """Response cache folder; ``None`` is ``llm_cache/`` in the run directory."""
    use_cache: bool = True
    """Read and write the response cache."""

    def __post_init__(self) -> None:
        check_choices(self)
        if not self.model:
            raise ValueError("model must name the LLM, e.g. gpt-4o-mini or the vLLM model id")
        if self.api_key_env is not None and not _ENV_NAME.match(self.api_key_env):
            raise ValueError(
                f"api_key_env must be the NAME of an environment variable (like "
                f"OPENAI_API_KEY), got {self.api_key_env[:4]!r}...; put the key itself in "
                "that variable, never in the config"
            )
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if self.tokens_param not in ("max_completion_tokens", "max_tokens"):
            raise ValueError("tokens_param must be max_completion_tokens or max_tokens")
        if self.max_explanation_tokens < 1 or self.answer_tokens_per_prompt < 1:
            raise ValueError("max_explanation_tokens and answer_tokens_per_prompt must be >= 1")
        if self.max_examples_per_class < 1 or self.max_prompt_chars < 20:
            raise ValueError("max_examples_per_class must be >= 1 and max_prompt_chars >= 20")
        if self.timeout_s <= 0 or self.max_retries < 0:
            raise ValueError("timeout_s must be positive and max_retries non-negative")
        if self.backoff_initial_s < 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("need 0 <= backoff_initial_s <= backoff_max_s")
        if self.max_requests is not None and self.max_requests < 0:
            raise ValueError("max_requests must be non-negative (or None for no cap)")
        if self.max_tokens is not None and self.max_tokens < 0:
            raise ValueError("max_tokens must be non-negative (or None for no cap)")
