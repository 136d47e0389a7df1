"""The commands that run one stage on an existing run directory: ``attribute``,
``verify``, ``explain``, ``score``, and ``report`` (which rewrites report.html)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer
from rich.console import Console

from lookuplens.cli.app import state
from lookuplens.cli.params import DeviceOpt, RunDirArg, StageOverwriteOpt
from lookuplens.cli.progress import RichReporter

log = logging.getLogger(__name__)


def _run_dir_stage(
    stage: str, run_dir: str, overwrite: bool, overrides: dict[str, object] | None = None
) -> None:
    """Run one stage (and what it needs) on an existing run directory, with its settings.

    `overrides` maps dotted RunConfig paths to new values (e.g. explain.explainer).
    """
    from lookuplens.pipeline import RunConfig, run_pipeline, set_path
    from lookuplens.store import RunDir

    run = RunDir.open(run_dir)
    data: dict[str, Any] = dict(run.meta.get("config") or {})  # type: ignore[call-overload]
    for path, value in (overrides or {}).items():
        set_path(data, path, value)
    cfg = RunConfig.from_dict(data)
    reporter = RichReporter(quiet=bool(state["quiet"]))
    try:
        run_pipeline(
            cfg, run.path, until=stage, overwrite=stage if overwrite else None, reporter=reporter
        )
    finally:
        reporter.close()
    typer.echo(f"run directory: {run.path}")


def attribute_cmd(run_dir: RunDirArg, overwrite: StageOverwriteOpt = False) -> None:
    """Attribute each neuron's firings to upstream heads (attributions, labels, pairs)."""
    _run_dir_stage("attribute", run_dir, overwrite)


def verify_cmd(run_dir: RunDirArg, overwrite: StageOverwriteOpt = False) -> None:
    """Verify causally: neuron and head interventions, KS tests, method agreement (effects)."""
    _run_dir_stage("verify", run_dir, overwrite)


def report_cmd(
    run_dir: RunDirArg,
    no_model: Annotated[
        bool,
        typer.Option(
            "--no-model",
            help="Never load the model: a run directory made before the views table existed "
            "is then reported without activation and attention shading.",
        ),
    ] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Write (or rewrite) report.html of a run directory (from its tables alone: the model
    is loaded only for a run directory made before the views table existed)."""
    from lookuplens.model import load_model
    from lookuplens.pipeline import RunConfig
    from lookuplens.report import write_report
    from lookuplens.store import RunDir

    run = RunDir.open(run_dir)
    cfg = RunConfig.from_dict(run.meta.get("config") or {})  # type: ignore[arg-type]
    lm = None
    if not no_model and not run.has_table("views"):
        log.info(
            "report: %s has no views table (made before it existed): loading the model %s "
            "to shade the prompts",
            run.path,
            cfg.model_source,
        )
        lm = load_model(cfg.model_source, device=device, dtype=cfg.dtype)
    path = write_report(run, lm, cfg.report)
    Console().print(f"report: {path}", highlight=False)


ExplainerOpt = Annotated[
    str, typer.Option(help="offline (no network) or llm (any OpenAI-compatible endpoint).")
]
LlmModelOpt = Annotated[str, typer.Option(help="Model name at the LLM endpoint.")]
LlmUrlOpt = Annotated[
    str,
    typer.Option(
        help="Base URL of an OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp); default OpenAI."
    ),
]
LlmKeyEnvOpt = Annotated[
    str,
    typer.Option(
        help="Name of the environment variable that holds the API key (never the key itself)."
    ),
]


def _explain_overrides(
    stage: str, explainer: str, llm_model: str, llm_base_url: str, llm_key_env: str
) -> dict[str, object]:
    out: dict[str, object] = {}
    for section in ("explain", "score") if stage == "explain" else ("score",):
        if explainer:
            out[f"{section}.explainer"] = explainer
        if llm_model:
            out[f"{section}.llm.model"] = llm_model
        if llm_base_url:
            out[f"{section}.llm.base_url"] = llm_base_url
        if llm_key_env:
            out[f"{section}.llm.api_key_env"] = llm_key_env
    return out


def explain_cmd(
    run_dir: RunDirArg,
    explainer: ExplainerOpt = "",
    llm_model: LlmModelOpt = "",
    llm_base_url: LlmUrlOpt = "",
    llm_key_env: LlmKeyEnvOpt = "",
    overwrite: StageOverwriteOpt = False,
) -> None:
    """Explain when each kept head drives its neuron, and when each neuron fires."""
    _run_dir_stage(
        "explain",
        run_dir,
        overwrite,
        _explain_overrides("explain", explainer, llm_model, llm_base_url, llm_key_env),
    )


def score_cmd(
    run_dir: RunDirArg,
    explainer: ExplainerOpt = "",
    llm_model: LlmModelOpt = "",
    llm_base_url: LlmUrlOpt = "",
    llm_key_env: LlmKeyEnvOpt = "",
    overwrite: StageOverwriteOpt = False,
) -> None:
    """Score the explanations on held-out prompts (balanced accuracy E)."""
    _run_dir_stage(
        "score",
        run_dir,
        overwrite,
        _explain_overrides("score", explainer, llm_model, llm_base_url, llm_key_env),
    )
