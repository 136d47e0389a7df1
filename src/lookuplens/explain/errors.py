"""Typed exceptions of the explain and score stages (subclasses of `lookuplens.errors`)."""

from __future__ import annotations

from lookuplens.errors import LookuplensError, UserError


class ExplainError(LookuplensError):
    """Base class of the errors the explain and score stages raise on purpose."""


class ExplainConfigError(UserError):
    """An explainer or scorer was asked for that does not exist or cannot work here."""


class LLMConfigError(UserError):
    """The LLM endpoint cannot be used as configured (no key, wrong URL or model, no access)."""


class LLMRequestError(ExplainError):
    """A request to the LLM failed for good (after the retries, or with a client error)."""


class MalformedAnswerError(ExplainError):
    """The LLM answered, but not in the form asked for (not JSON, wrong schema, wrong ids)."""


class BudgetExhausted(ExplainError):
    """The request or token budget is spent; the stage stops and records what finished."""
