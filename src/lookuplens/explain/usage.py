"""`Usage`: what LLM requests cost. A leaf record: the client counts it and the explainers'
and simulators' results carry it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Usage"]


@dataclass(frozen=True)
class Usage:
    """LLM use: requests sent, answers served from the cache, and tokens (as reported by
    the endpoint; for cached answers, what they cost when first asked)."""

    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.requests + other.requests,
            self.cached + other.cached,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )
