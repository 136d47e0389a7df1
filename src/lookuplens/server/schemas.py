"""The JSON API's request and response models (they make its OpenAPI schema)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lookuplens.server.worker import GenerateResult, PlaygroundResult

__all__ = [
    "HARD_MAX_PROMPT_CHARS",
    "MAX_ID",
    "GenerateIn",
    "GenerateOut",
    "HeadEditIn",
    "HtmlOut",
    "PlaygroundIn",
    "PlaygroundOut",
    "PromptView",
    "PromptsOut",
    "TableOut",
    "WhyIn",
]

MAX_ID = 2**31 - 1
"""Largest id (layer, neuron, head, example) a request may name."""
HARD_MAX_PROMPT_CHARS = 100_000
"""Prompts longer than this are refused by validation, before the server's own limit."""


class HeadEditIn(BaseModel):
    """Scale one head's output at every position (0 switches it off)."""

    model_config = ConfigDict(extra="forbid")
    layer: int = Field(ge=0, le=MAX_ID)
    head: int = Field(ge=0, le=MAX_ID)
    scale: float = Field(default=0.0, allow_inf_nan=False)


class PlaygroundIn(BaseModel):
    """A typed prompt, the neuron to watch, and the intervention."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=HARD_MAX_PROMPT_CHARS)
    layer: int = Field(ge=0, le=MAX_ID)
    neuron: int = Field(ge=0, le=MAX_ID)
    position: int = Field(default=-1, ge=-100_000, le=100_000)
    """Token position (BOS not counted); negative counts from the end."""
    heads: list[HeadEditIn] = Field(default_factory=list, max_length=4096)
    neuron_scale: float = Field(default=1.0, allow_inf_nan=False)
    """Multiply the neuron's activation at every position (0 ablates, 2 amplifies)."""


class GenerateIn(PlaygroundIn):
    """A playground request and how many tokens to generate greedily."""

    max_new_tokens: int | None = Field(default=None, ge=0, le=100_000)
    """Tokens to generate; None: the server's default."""


class WhyIn(BaseModel):
    """What `lookuplens why` explains: the prediction after `position`."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=HARD_MAX_PROMPT_CHARS)
    target: str | None = Field(default=None, max_length=200)
    """The token to explain, as typed (" an", "▁an"); empty: the top prediction."""
    position: int = Field(default=-1, ge=-100_000, le=100_000)
    top_neurons: int = Field(default=5, ge=1, le=20)
    top_heads: int = Field(default=3, ge=1, le=10)


class TableOut(BaseModel):
    """One page of the neuron or pair table."""

    rows: list[dict[str, Any]]
    total: int
    page: int
    per_page: int
    pages: int
    sort: str
    order: str


class PromptView(BaseModel):
    example_id: int
    tokens: list[str]
    values: list[float]
    html: str


class PromptsOut(BaseModel):
    """Per-token values of a neuron's or a pair's prompts, with the shaded markup."""

    kind: Literal["activation", "attention"]
    scale: float | None
    prompts: list[PromptView]


class HtmlOut(BaseModel):
    data: dict[str, Any]
    html: str


@dataclasses.dataclass(frozen=True)
class PlaygroundOut:
    """The playground's result and the shaded prompt, clean and intervened."""

    result: PlaygroundResult
    scale: float
    html_clean: str
    html_patched: str


@dataclasses.dataclass(frozen=True)
class GenerateOut:
    result: GenerateResult
