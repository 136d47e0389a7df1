"""lookuplens: next-token neurons and the attention heads that look up context for them.

Importing the package does nothing but define names: no downloads, no global state, and
no torch. The public API below is imported on first use of each name::

    from lookuplens import RunConfig, run_pipeline

    run = run_pipeline(RunConfig(model="gpt2", corpus=...), "runs/gpt2")
    run.read_df("pairs")

- the pipeline: `run_pipeline`, `RunConfig`, `build_config` (defaults < preset < TOML
  file < overrides), the run directory `RunDir`;
- the model: `load_model`, `LoadedModel`;
- one prediction explained (``lookuplens why``): `explain_prediction`, `WhyConfig`;
- the stages, in pipeline order: `find_neurons`, `scan_corpus`, `build_examples`,
  `attribute_examples`, `label_examples`, `build_pairs`, `verify_run`, `find_findings`,
  `explain_run`, `score_stage`, `write_report`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "run_pipeline": "lookuplens.pipeline",
    "RunConfig": "lookuplens.run_config",
    "build_config": "lookuplens.run_config",
    "RunDir": "lookuplens.store",
    "load_model": "lookuplens.model",
    "LoadedModel": "lookuplens.model",
    "explain_prediction": "lookuplens.why",
    "WhyConfig": "lookuplens.why",
    "find_neurons": "lookuplens.neurons",
    "scan_corpus": "lookuplens.scan",
    "build_examples": "lookuplens.examples",
    "attribute_examples": "lookuplens.attribute",
    "label_examples": "lookuplens.attribute",
    "build_pairs": "lookuplens.attribute",
    "verify_run": "lookuplens.verify",
    "find_findings": "lookuplens.findings",
    "explain_run": "lookuplens.explain",
    "score_stage": "lookuplens.explain",
    "write_report": "lookuplens.report",
}
"""Public name -> the module that defines it (imported when the name is first used)."""

__all__ = [
    "__version__",
    "run_pipeline",
    "RunConfig",
    "build_config",
    "RunDir",
    "load_model",
    "LoadedModel",
    "explain_prediction",
    "WhyConfig",
    "find_neurons",
    "scan_corpus",
    "build_examples",
    "attribute_examples",
    "label_examples",
    "build_pairs",
    "verify_run",
    "find_findings",
    "explain_run",
    "score_stage",
    "write_report",
]
"""The public API: `__version__` and the names of `_EXPORTS`."""

if TYPE_CHECKING:
    from lookuplens.attribute import attribute_examples, build_pairs, label_examples
    from lookuplens.examples import build_examples
    from lookuplens.explain import explain_run, score_stage
    from lookuplens.findings import find_findings
    from lookuplens.model import LoadedModel, load_model
    from lookuplens.neurons import find_neurons
    from lookuplens.pipeline import run_pipeline
    from lookuplens.report import write_report
    from lookuplens.run_config import RunConfig, build_config
    from lookuplens.scan import scan_corpus
    from lookuplens.store import RunDir
    from lookuplens.verify import verify_run
    from lookuplens.why import WhyConfig, explain_prediction


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lookuplens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
