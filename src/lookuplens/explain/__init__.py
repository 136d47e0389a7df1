"""Explain when a head drives a neuron (or when a neuron fires), and score the explanations.

Explainers (registry): ``offline`` (token cues and the head's attention, no network) and
``llm`` (any OpenAI-compatible endpoint). Scorers simulate an explanation on held-out
prompts: ``offline`` (applies the offline explanation's stored rule) and ``llm`` (many
prompts per request, JSON answer). The score is the balanced accuracy E = (TPR + TNR) / 2.

    table = explain_run(lm, run, ExplainConfig())
    run.write_table("explanations", table)
    scores, stats = score_run(lm, run, ScoreConfig())
"""

from lookuplens.explain.base import (
    Env,
    Explainer,
    ExplanationResult,
    Item,
    SimulationResult,
    Simulator,
    StoredExplanation,
    Task,
    Usage,
)
from lookuplens.explain.config import (
    ExplainConfig,
    LLMConfig,
    OfflineConfig,
    ScoreConfig,
    TaskConfig,
)
from lookuplens.explain.errors import (
    BudgetExhausted,
    ExplainConfigError,
    ExplainError,
    LLMConfigError,
    LLMRequestError,
    MalformedAnswerError,
)
from lookuplens.explain.metrics import auroc, confusion, score_statistics, summarize
from lookuplens.explain.registry import (
    explainer_names,
    register_explainer,
    register_scorer,
    scorer_names,
)
from lookuplens.explain.run import (
    CONTROLS_SCHEMA,
    EXPLANATIONS_SCHEMA,
    SCORES_SCHEMA,
    ScoreOutputs,
    explain_run,
    mismatched_donors,
    read_explanations,
    score_run,
    score_stage,
)
from lookuplens.explain.tasks import load_tasks

__all__ = [
    "CONTROLS_SCHEMA",
    "EXPLANATIONS_SCHEMA",
    "SCORES_SCHEMA",
    "BudgetExhausted",
    "Env",
    "ExplainConfig",
    "ExplainConfigError",
    "ExplainError",
    "Explainer",
    "ExplanationResult",
    "Item",
    "LLMConfig",
    "LLMConfigError",
    "LLMRequestError",
    "MalformedAnswerError",
    "OfflineConfig",
    "ScoreConfig",
    "ScoreOutputs",
    "SimulationResult",
    "Simulator",
    "StoredExplanation",
    "Task",
    "TaskConfig",
    "Usage",
    "auroc",
    "confusion",
    "explain_run",
    "explainer_names",
    "load_tasks",
    "mismatched_donors",
    "read_explanations",
    "register_explainer",
    "register_scorer",
    "score_run",
    "score_stage",
    "score_statistics",
    "scorer_names",
    "summarize",
]
