"""The JSON API's request and response models (they make its OpenAPI schema)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lookuplens.server.worker import GenerateResult, PlaygroundResult

__all__ = [
    "HARD_MAX_PROMPT_CHARS",
    "MAX_FIX_PROMPTS",
    "MAX_ID",
    "ControlIn",
    "FixIn",
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
MAX_FIX_PROMPTS = 1000
"""Most prompts (and most controls) one fix request may measure."""


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


Prompt = Annotated[str, Field(max_length=HARD_MAX_PROMPT_CHARS)]


class ControlIn(BaseModel):
    """A prompt whose answer (the top next token) the fix must not change."""

    model_config = ConfigDict(extra="forbid")
    prompt: Prompt
    expected: str = Field(max_length=200)
    """The expected next token, as typed (" Paris")."""


class FixIn(BaseModel):
    """The playground's interventions as a fix candidate, and how to verify it
    (`lookuplens fix` with these edits; see `lookuplens.server.fixes`)."""

    model_config = ConfigDict(extra="forbid")
    layer: int = Field(ge=0, le=MAX_ID)
    neuron: int = Field(ge=0, le=MAX_ID)
    """The neuron being viewed: a path edit removes a head's write into its input."""
    heads: list[HeadEditIn] = Field(default_factory=list, max_length=4096)
    neuron_scale: float = Field(default=1.0, allow_inf_nan=False)
    head_edit: Literal["path", "head"] = "path"
    """How a scaled head becomes a weight edit: ``path`` scales only what it writes into
    the neuron's input (the fix `lookuplens fix` recommends), ``head`` its whole output."""
    target: str = Field(max_length=200)
    """The token the fix acts on, as typed (" an", "▁an")."""
    goal: Literal["decrease", "increase"] = "decrease"
    prompts: list[Prompt] = Field(default_factory=list, max_length=MAX_FIX_PROMPTS)
    """The target is measured at the end of each; blank ones are dropped."""
    controls: list[ControlIn] = Field(default_factory=list, max_length=MAX_FIX_PROMPTS)
    max_kl: float = Field(default=0.01, gt=0, allow_inf_nan=False)
    """Side-effect budget: mean KL per held-out token, nats."""
    require: float = Field(default=0.9, gt=0, le=1)
    side_tokens: int = Field(default=8192, ge=16, le=65_536)
    """Tokens of the run's held-out text measured for side effects."""


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
