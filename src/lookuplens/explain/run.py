"""The explain and score stages over a run directory.

`explain_run` and `score_run` read ``examples``, ``neurons``, and for pairs ``labels``
and ``pairs`` (and `score_run` the ``explanations`` table) from the run directory and
return tables; the caller writes them (``run.write_table``). Tasks come in a fixed order
and LLM answers are cached on disk, so an interrupted stage reruns at no LLM cost.

Every task gets a row, also when it could not be explained or scored: ``status`` says
why (``one_class``, ``malformed``, ``request_failed``, ``budget``, ``no_explanation``,
``unsupported``, ``silent``: the neuron never fires on its prompts) and ``note`` gives the
detail; such rows have a null explanation or a
null balanced accuracy. Neuron tasks have null ``head_layer`` and ``head``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lookuplens.explain.base import (
    Env,
    ExplanationResult,
    SimulationResult,
    StoredExplanation,
    Task,
    silent_note,
)
from lookuplens.explain.config import ExplainConfig, OfflineConfig, ScoreConfig
from lookuplens.explain.errors import ExplainConfigError
from lookuplens.explain.metrics import auroc, confusion, score_statistics
from lookuplens.explain.registry import get_explainer, get_scorer
from lookuplens.explain.tasks import load_tasks
from lookuplens.model import LoadedModel
from lookuplens.store import RunDir

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

_I64, _F64, _STR, _BOOL = pa.int64(), pa.float64(), pa.string(), pa.bool_()

EXPLANATIONS_SCHEMA = pa.schema(
    [
        ("layer", _I64),
        ("neuron", _I64),
        ("head_layer", _I64),
        ("head", _I64),
        ("explainer", _STR),
        ("explanation", _STR),
        ("llm_model", _STR),
        ("prompt_tokens", _I64),
        ("completion_tokens", _I64),
        ("target", _STR),
        ("baseline", _BOOL),
        ("status", _STR),
        ("note", _STR),
        ("features", _STR),
        ("n_train", _I64),
        ("n_train_active", _I64),
        ("requests", _I64),
        ("cached_requests", _I64),
    ]
)
"""Columns of ``explanations.parquet`` as written here: the required ones, then ``target``
(``pair`` or ``neuron``), ``baseline``, ``status``, ``note``, ``features`` (JSON of the
offline explainer's rule; null for the LLM's), training counts, and LLM requests."""

SCORES_SCHEMA = pa.schema(
    [
        ("layer", _I64),
        ("neuron", _I64),
        ("head_layer", _I64),
        ("head", _I64),
        ("explainer", _STR),
        ("scorer", _STR),
        ("n_test", _I64),
        ("tp", _I64),
        ("fp", _I64),
        ("tn", _I64),
        ("fn", _I64),
        ("balanced_accuracy", _F64),
        ("auroc", _F64),
        ("baseline", _BOOL),
        ("target", _STR),
        ("status", _STR),
        ("note", _STR),
        ("n_test_active", _I64),
        ("scheme", _STR),
        ("llm_model", _STR),
        ("requests", _I64),
        ("cached_requests", _I64),
        ("prompt_tokens", _I64),
        ("completion_tokens", _I64),
    ]
)
"""Columns of ``scores.parquet`` as written here: the required ones (``tp`` ... ``fn``,
``balanced_accuracy`` and ``auroc`` null when not scored), then ``target``, ``status``,
``note``, ``n_test_active``, the simulation ``scheme`` (null for offline), and LLM usage."""

CONTROLS_SCHEMA = pa.schema(
    [
        ("layer", _I64),
        ("neuron", _I64),
        ("head_layer", _I64),
        ("head", _I64),
        ("baseline", _BOOL),
        ("donor_layer", _I64),
        ("donor_neuron", _I64),
        ("donor_head_layer", _I64),
        ("donor_head", _I64),
        ("explainer", _STR),
        ("scorer", _STR),
        ("n_test", _I64),
        ("n_test_active", _I64),
        ("tp", _I64),
        ("fp", _I64),
        ("tn", _I64),
        ("fn", _I64),
        ("balanced_accuracy", _F64),
        ("auroc", _F64),
        ("status", _STR),
        ("note", _STR),
        ("llm_model", _STR),
        ("requests", _I64),
        ("cached_requests", _I64),
        ("prompt_tokens", _I64),
        ("completion_tokens", _I64),
    ]
)
"""Columns of ``score_controls.parquet``: one row per pair scored with another pair's
explanation (the mismatched-explanation control): the pair, the donor pair whose
explanation was used, and the same counts, E, status and usage as ``scores``."""


def _progress(on_progress: Progress | None, done: int, total: int) -> None:
    if on_progress is not None:
        on_progress(done, total)


def explain_run(
    lm: LoadedModel,
    run: RunDir,
    cfg: ExplainConfig,
    on_progress: Progress | None = None,
) -> pa.Table:
    """Explain every task of the run directory (see the module docstring)."""
    tasks = load_tasks(lm, run, cfg.tasks)
    env = Env(lm, run, cfg.tasks, cfg.offline, cfg.llm)
    explainer = get_explainer(cfg.explainer)(env)
    rows: list[dict[str, Any]] = []
    _progress(on_progress, 0, len(tasks))
    for i, task in enumerate(tasks):
        silent = silent_note(task)
        res = (
            ExplanationResult(None, "silent", note=silent)
            if silent is not None
            else explainer.explain(task)
        )
        rows.append(_explanation_row(task, cfg.explainer, res))
        _progress(on_progress, i + 1, len(tasks))
    _log_done("explain", rows, env)
    return pa.Table.from_pylist(rows, schema=EXPLANATIONS_SCHEMA)


def _explanation_row(task: Task, explainer: str, res: ExplanationResult) -> dict[str, Any]:
    return {
        "layer": task.layer,
        "neuron": task.neuron,
        "head_layer": task.head_layer,
        "head": task.head,
        "explainer": explainer,
        "explanation": res.text if res.status == "ok" else None,
        "llm_model": res.llm_model,
        "prompt_tokens": res.usage.prompt_tokens,
        "completion_tokens": res.usage.completion_tokens,
        "target": task.kind,
        "baseline": task.baseline,
        "status": res.status,
        "note": res.note,
        "features": res.features if res.status == "ok" else None,
        "n_train": len(task.train),
        "n_train_active": sum(it.active for it in task.train),
        "requests": res.usage.requests,
        "cached_requests": res.usage.cached,
    }


def _log_done(stage: str, rows: list[dict[str, Any]], env: Env) -> None:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    log.info("%s: %d tasks, %s", stage, len(rows), counts)
    client = env.client_if_made
    if client is not None:
        u = client.usage
        log.info(
            "%s: %d LLM requests sent (%d answers from the cache), %d prompt and %d completion "
            "tokens",
            stage,
            u.requests,
            u.cached,
            u.prompt_tokens,
            u.completion_tokens,
        )
        if client.exhausted:
            log.warning(
                "%s: the LLM budget was spent; tasks without an answer have status "
                "'budget' (rerun with a larger budget to finish them)",
                stage,
            )


def read_explanations(
    run: RunDir, explainer: str
) -> dict[tuple[int, int, int | None, int | None], StoredExplanation]:
    """The usable explanations of one explainer, by task key."""
    table = run.read_table("explanations")
    table = table.filter(pc.equal(table.column("explainer"), explainer))
    if table.num_rows == 0:
        raise ExplainConfigError(
            f"{run.path} has no explanations by the {explainer!r} explainer; run "
            f"`lookuplens explain --explainer {explainer}` first"
        )
    cols = table.to_pydict()
    out = {}
    for i in range(table.num_rows):
        text = cols["explanation"][i]
        status = cols["status"][i] if "status" in cols else "ok"
        if text is None or status != "ok":
            continue
        key = (
            int(cols["layer"][i]),
            int(cols["neuron"][i]),
            None if cols["head_layer"][i] is None else int(cols["head_layer"][i]),
            None if cols["head"][i] is None else int(cols["head"][i]),
        )
        feats = cols["features"][i] if "features" in cols else None
        out[key] = StoredExplanation(explainer, str(text), feats)
    return out


@dataclass(frozen=True)
class ScoreOutputs:
    scores: pa.Table
    controls: pa.Table
    """The mismatched-explanation control (``CONTROLS_SCHEMA``); empty when it is off."""
    stats: dict[str, object]


def score_run(
    lm: LoadedModel,
    run: RunDir,
    cfg: ScoreConfig,
    on_progress: Progress | None = None,
) -> tuple[pa.Table, dict[str, object]]:
    """Simulate every task's explanation on its held-out prompts; the scores table and its
    statistics (`score_statistics`, JSON-serialisable, for run.json and the report; with
    the mismatched-explanation control's figures when it is on). `score_stage` also
    returns the control's rows."""
    out = score_stage(lm, run, cfg, on_progress)
    return out.scores, out.stats


def score_stage(
    lm: LoadedModel,
    run: RunDir,
    cfg: ScoreConfig,
    on_progress: Progress | None = None,
) -> ScoreOutputs:
    """`score_run`, plus the mismatched-explanation control's table."""
    explanations = read_explanations(run, cfg.explainer)
    tasks = load_tasks(lm, run, cfg.tasks)
    env = Env(lm, run, cfg.tasks, OfflineConfig(), cfg.llm, score=cfg)
    scorer = cfg.scorer_name
    if (
        scorer == "offline"
        and explanations
        and all(e.features is None for e in explanations.values())
    ):
        raise ExplainConfigError(
            f"the offline scorer applies the cues stored by the offline explainer, and the "
            f"{cfg.explainer!r} explanations have none; score them with --scorer llm"
        )
    sim = get_scorer(scorer)(env)
    scheme = cfg.scheme if scorer == "llm" else None
    controls_for = mismatched_donors(tasks, set(explanations), cfg.seed) if cfg.control_on else []
    rows: list[dict[str, Any]] = []
    _progress(on_progress, 0, len(tasks) + len(controls_for))
    for i, task in enumerate(tasks):
        n_pos = sum(it.active for it in task.test)
        row: dict[str, Any] = {
            "layer": task.layer,
            "neuron": task.neuron,
            "head_layer": task.head_layer,
            "head": task.head,
            "explainer": cfg.explainer,
            "scorer": scorer,
            "n_test": len(task.test),
            "baseline": task.baseline,
            "target": task.kind,
            "n_test_active": n_pos,
            "scheme": scheme,
        }
        expl = explanations.get(task.key)
        silent = silent_note(task)
        if silent is not None:
            row |= {"status": "silent", "note": silent}
        elif n_pos == 0 or n_pos == len(task.test):
            what = "active" if n_pos else "inactive"
            row |= {
                "status": "one_class",
                "note": f"all {len(task.test)} held-out prompts are {what}; E is undefined",
            }
        elif expl is None:
            row |= {"status": "no_explanation", "note": "the explain stage gave no explanation"}
        else:
            row |= _score_row(task, sim.simulate(task, expl))
        rows.append(row)
        _progress(on_progress, i + 1, len(tasks) + len(controls_for))
    _log_done("score", rows, env)
    table = pa.Table.from_pylist(rows, schema=SCORES_SCHEMA)
    controls = []
    for j, (task, donor) in enumerate(controls_for):
        ctl: dict[str, Any] = {
            "layer": task.layer,
            "neuron": task.neuron,
            "head_layer": task.head_layer,
            "head": task.head,
            "baseline": task.baseline,
            "donor_layer": donor.layer,
            "donor_neuron": donor.neuron,
            "donor_head_layer": donor.head_layer,
            "donor_head": donor.head,
            "explainer": cfg.explainer,
            "scorer": scorer,
            "n_test": len(task.test),
            "n_test_active": sum(it.active for it in task.test),
        }
        ctl |= _score_row(task, sim.simulate(task, explanations[donor.key]))
        controls.append(ctl)
        _progress(on_progress, len(tasks) + j + 1, len(tasks) + len(controls_for))
    control_table = pa.Table.from_pylist(controls, schema=CONTROLS_SCHEMA)
    return ScoreOutputs(
        table, control_table, score_statistics(table, cfg.good_threshold, control_table)
    )


def mismatched_donors(
    tasks: list[Task], explained: Collection[tuple[int, int, int | None, int | None]], seed: int
) -> list[tuple[Task, Task]]:
    """For the mismatched-explanation control: each pair task with both classes among its
    held-out prompts and an explanation of its own, with a donor drawn at random (seeded,
    in task order) from the pair tasks of another neuron in the same group (selected or
    random baseline) that have an explanation. Tasks with no such donor are left out."""
    rng = np.random.default_rng(seed)
    pairs = [t for t in tasks if t.kind == "pair" and t.key in explained]
    out = []
    for t in pairs:
        n_pos = sum(it.active for it in t.test)
        if n_pos == 0 or n_pos == len(t.test):
            continue
        donors = [
            u
            for u in pairs
            if u.baseline == t.baseline and (u.layer, u.neuron) != (t.layer, t.neuron)
        ]
        if donors:
            out.append((t, donors[int(rng.integers(len(donors)))]))
    return out


def _score_row(task: Task, res: SimulationResult) -> dict[str, Any]:
    row: dict[str, Any] = {
        "status": res.status,
        "note": res.note,
        "llm_model": res.llm_model,
        "requests": res.usage.requests,
        "cached_requests": res.usage.cached,
        "prompt_tokens": res.usage.prompt_tokens,
        "completion_tokens": res.usage.completion_tokens,
    }
    if res.status != "ok" or res.predicted is None:
        return row
    actual = [it.active for it in task.test]
    c = confusion(res.predicted, actual)
    row |= {
        "tp": c.tp,
        "fp": c.fp,
        "tn": c.tn,
        "fn": c.fn,
        "balanced_accuracy": c.balanced_accuracy,
        "auroc": auroc(res.scores, actual) if res.scores is not None else None,
    }
    return row
