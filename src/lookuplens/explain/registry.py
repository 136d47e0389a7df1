"""Registries of explainers and scorers (simulators). Registering a name twice raises.

A factory receives the stage's `Env` and returns an object with ``explain(task)``
(explainers) or ``simulate(task, explanation)`` (scorers). The built-in factories import
their modules only when called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lookuplens.explain.base import Env, Explainer, Simulator

ExplainerFactory = Callable[["Env"], "Explainer"]
ScorerFactory = Callable[["Env"], "Simulator"]

_EXPLAINERS: dict[str, ExplainerFactory] = {}
_SCORERS: dict[str, ScorerFactory] = {}


def _check_name(name: str, table: dict[str, object], what: str) -> None:
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"{what} name {name!r} must be a non-empty word (letters, digits, _ -)")
    if name in table:
        raise ValueError(f"{what} {name!r} is already registered; pick another name")


def register_explainer(name: str, factory: ExplainerFactory) -> ExplainerFactory:
    """Add an explainer under ``name``."""
    _check_name(name, _EXPLAINERS, "explainer")  # type: ignore[arg-type]
    _EXPLAINERS[name] = factory
    return factory


def register_scorer(name: str, factory: ScorerFactory) -> ScorerFactory:
    """Add a scorer (simulator) under ``name``."""
    _check_name(name, _SCORERS, "scorer")  # type: ignore[arg-type]
    _SCORERS[name] = factory
    return factory


def explainer_names() -> list[str]:
    return sorted(_EXPLAINERS)


def scorer_names() -> list[str]:
    return sorted(_SCORERS)


def get_explainer(name: str) -> ExplainerFactory:
    from lookuplens.explain.errors import ExplainConfigError

    try:
        return _EXPLAINERS[name]
    except KeyError:
        raise ExplainConfigError(
            f"unknown explainer {name!r}; choose one of {', '.join(explainer_names())}"
        ) from None


def get_scorer(name: str) -> ScorerFactory:
    from lookuplens.explain.errors import ExplainConfigError

    try:
        return _SCORERS[name]
    except KeyError:
        raise ExplainConfigError(
            f"unknown scorer {name!r}; choose one of {', '.join(scorer_names())}"
        ) from None


def _offline_explainer(env: Env) -> Explainer:
    from lookuplens.explain.offline import OfflineExplainer

    return OfflineExplainer(env)


def _offline_scorer(env: Env) -> Simulator:
    from lookuplens.explain.offline import OfflineSimulator

    return OfflineSimulator(env)


def _llm_explainer(env: Env) -> Explainer:
    from lookuplens.explain.llm import LLMExplainer

    return LLMExplainer(env)


def _llm_scorer(env: Env) -> Simulator:
    from lookuplens.explain.llm import LLMSimulator

    return LLMSimulator(env)


register_explainer("offline", _offline_explainer)
register_explainer("llm", _llm_explainer)
register_scorer("offline", _offline_scorer)
register_scorer("llm", _llm_scorer)
