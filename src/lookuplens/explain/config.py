"""Settings of the explain and score stages: frozen dataclasses, checked on creation.

No secret is ever held here: the LLM's key is read from the environment variable named
by `LLMConfig.api_key_env` when the client is made, and never stored.

`ExplainConfig` and `ScoreConfig` name a registered explainer and scorer; the settings
they hold (`TaskConfig`, `OfflineConfig`, `LLMConfig`) live in `lookuplens.explain.settings`
and are importable from here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lookuplens.choices import check_choices
from lookuplens.explain.registry import explainer_names, scorer_names
from lookuplens.explain.settings import (
    LLMConfig,
    OfflineConfig,
    Targets,
    TaskConfig,
    TokensParam,
)

__all__ = [
    "ExplainConfig",
    "LLMConfig",
    "OfflineConfig",
    "ScoreConfig",
    "Scheme",
    "Targets",
    "TaskConfig",
    "TokensParam",
]

Scheme = Literal["batched", "per_prompt"]


@dataclass(frozen=True)
class ExplainConfig:
    """The explain stage."""

    explainer: str = "offline"
    """Registered explainer: ``offline`` (no network) or ``llm``."""
    tasks: TaskConfig = field(default_factory=TaskConfig)
    """What is explained."""
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    """Settings of the offline explainer."""
    llm: LLMConfig = field(default_factory=LLMConfig)
    """Settings of the LLM explainer."""

    def __post_init__(self) -> None:
        names = explainer_names()
        if self.explainer not in names:
            raise ValueError(
                f"unknown explainer {self.explainer!r}; choose one of {', '.join(names)}"
            )


@dataclass(frozen=True)
class ScoreConfig:
    """The score stage: simulate each explanation on held-out prompts."""

    explainer: str = "offline"
    """Whose explanations (from ``explanations.parquet``) are scored."""
    scorer: str | None = None
    """Registered simulator: ``offline`` (needs offline explanations) or ``llm``; ``None``
    uses the one named like the explainer."""
    tasks: TaskConfig = field(default_factory=TaskConfig)
    """What is scored (the same as the explain stage's)."""
    llm: LLMConfig = field(default_factory=LLMConfig)
    """Settings of the LLM simulator."""
    scheme: Scheme = "batched"
    """``batched``: many held-out prompts in one request with a JSON answer; ``per_prompt``:
    the paper's one request per prompt with a Yes/No answer (for comparison)."""
    batch_size: int = 25
    """Held-out prompts per request in the batched scheme."""
    good_threshold: float = 0.8
    """The statistics report the share of explanations scoring at least this."""
    seed: int = 0
    """Seed of the order in which held-out prompts are shown, and of the control's draws."""
    mismatched_control: bool | None = None
    """Also score every pair with the explanation of a pair of another neuron (drawn
    from the same group, selected or random-baseline), on this pair's held-out prompts
    and labels (``score_controls.parquet``): E near 0.5 there means the explanations are
    specific to their pair. ``None``: on for the offline scorer, off for the LLM scorer
    (it would double the requests)."""

    @property
    def control_on(self) -> bool:
        if self.mismatched_control is None:
            return self.scorer_name == "offline"
        return self.mismatched_control

    def __post_init__(self) -> None:
        check_choices(self)
        if self.explainer not in explainer_names():
            raise ValueError(
                f"unknown explainer {self.explainer!r}; choose one of "
                f"{', '.join(explainer_names())}"
            )
        if self.scorer is not None and self.scorer not in scorer_names():
            raise ValueError(
                f"unknown scorer {self.scorer!r}; choose one of {', '.join(scorer_names())}"
            )
        if self.scorer is None and self.explainer not in scorer_names():
            raise ValueError(
                f"no scorer is named like explainer {self.explainer!r}; set scorer to one of "
                f"{', '.join(scorer_names())}"
            )
        if self.scheme not in ("batched", "per_prompt"):
            raise ValueError(f"scheme must be batched or per_prompt, got {self.scheme!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not 0 < self.good_threshold <= 1:
            raise ValueError("good_threshold must be in (0, 1]")

    @property
    def scorer_name(self) -> str:
        return self.scorer if self.scorer is not None else self.explainer
