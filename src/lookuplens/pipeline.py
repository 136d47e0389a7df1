"""Runs the stages in order into a run directory, skipping the ones already finished.

Each stage reads what earlier stages wrote to the run directory and writes its own
tables atomically, then marks itself done in run.json. A rerun skips finished stages;
an interrupted stage is resumed (the scan from its last shard); `overwrite` redoes a
stage and every later one. Settings are checked against the ones a finished stage ran
with, so a run directory never mixes results of different settings.

The settings themselves, `RunConfig` and how one is built from defaults, presets, TOML
files and overrides, live in `lookuplens.run_config`; they are importable from here too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from lookuplens.attribute import attribute_examples, build_pairs, label_examples
from lookuplens.corpus import corpus_meta
from lookuplens.errors import UserError
from lookuplens.examples import build_examples
from lookuplens.explain import explain_run, score_stage
from lookuplens.findings import cue_token_ids, find_findings
from lookuplens.model import LoadedModel, load_model
from lookuplens.neurons import find_neurons, neuron_tokens, tracked
from lookuplens.report import build_views, stored_scope, write_report
from lookuplens.report.data import load_run
from lookuplens.run_config import (
    PRESETS,
    RunConfig,
    build_config,
    bundled_model,
    check_setting,
    load_toml,
    set_path,
    setting_choices,
)
from lookuplens.scan import ScanProgress, count_documents, scan_corpus
from lookuplens.store import STAGES, RunDir
from lookuplens.store.means import attribution_means, top_example_ids
from lookuplens.summary import mean_kept_ks
from lookuplens.verify import method_agreement, verify_run

log = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "STAGE_FUNCS",
    "Context",
    "Reporter",
    "RunConfig",
    "SilentReporter",
    "available_stages",
    "build_config",
    "bundled_model",
    "check_setting",
    "load_toml",
    "run_pipeline",
    "set_path",
    "setting_choices",
]


class Reporter(Protocol):
    """Progress of long stages (the CLI draws bars; the library only calls these)."""

    def start(self, stage: str, total: int | None, unit: str) -> None: ...

    def update(self, done: int, total: int | None = None, info: str = "") -> None: ...

    def finish(self, summary: str = "") -> None: ...


class SilentReporter:
    """A reporter that reports nothing."""

    def start(self, stage: str, total: int | None, unit: str) -> None:
        pass

    def update(self, done: int, total: int | None = None, info: str = "") -> None:
        pass

    def finish(self, summary: str = "") -> None:
        pass


@dataclass
class Context:
    """What the stages share while a run goes on (the model is loaded once, lazily)."""

    cfg: RunConfig
    run: RunDir
    reporter: Reporter
    _lm: LoadedModel | None = None
    _lm32: LoadedModel | None = None

    @property
    def lm(self) -> LoadedModel:
        if self._lm is None:
            self._lm = load_model(
                self.cfg.model_source, device=self.cfg.device, dtype=self.cfg.dtype
            )
        return self._lm

    @property
    def lm32(self) -> LoadedModel:
        """The model in float32, for the decompositions that must close exactly: the model
        itself when it is in float32, else the checkpoint loaded again in float32 (held
        beside the model until `drop_lm32`)."""
        if self.lm.dtype == torch.float32:
            return self.lm
        if self._lm32 is None:
            log.info("loading %s in float32 for the attribute stage", self.cfg.model_source)
            self._lm32 = load_model(self.cfg.model_source, device=self.cfg.device, dtype="float32")
        return self._lm32

    def drop_lm32(self) -> None:
        """Free the float32 copy (the stages after attribute use the model's own dtype)."""
        if self._lm32 is None:
            return
        self._lm32 = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _stage_neurons(ctx: Context) -> str:
    lm = ctx.lm
    ctx.reporter.start("neurons", None, "layers")
    table = find_neurons(lm, ctx.cfg.neurons, on_layer=lambda i, n: ctx.reporter.update(i, n))
    ctx.run.write_table("neurons", table)
    ctx.run.update_meta(
        model={
            "name": ctx.cfg.model or "bundled:storyworld",
            "path": lm.name,
            "architecture": lm.spec.name,
            "model_type": lm.config.model_type,
            "n_layers": lm.n_layers,
            "n_heads": lm.n_heads,
            "d_model": lm.d_model,
            "d_mlp": lm.d_mlp,
            "d_vocab": lm.d_vocab,
        }
    )
    sel = table.column("selected").to_pylist()
    base = table.column("baseline").to_pylist()
    if not any(sel):
        raise UserError(
            "no neuron was selected: no top token passed the token filter "
            f"({ctx.cfg.neurons.token_filter!r}) in the layers searched; pass --token-filter "
            "none, search more --layers, or aim at tokens with --tokens"
        )
    summary = f"{sum(sel)} next-token neurons selected, {sum(base)} baseline neurons"
    ctx.reporter.finish(summary)
    return summary


def _stage_scan(ctx: Context) -> str:
    table = ctx.run.read_table("neurons")
    neurons = tracked(table)
    tokens = neuron_tokens(table, neurons)
    ctx.reporter.start("scan", None, "docs")

    def progress(p: ScanProgress) -> None:
        rate = p.tokens / max(p.seconds, 1e-9)
        ctx.reporter.update(p.docs, p.total_docs, f"{rate:,.0f} tok/s")

    if ctx.cfg.backend == "ray":
        from lookuplens.distributed import scan_corpus_ray

        result = scan_corpus_ray(
            ctx.cfg.model_source,
            neurons,
            ctx.cfg.corpus,
            ctx.cfg.scan,
            ctx.cfg.ray,
            device=ctx.cfg.device,
            dtype=ctx.cfg.dtype,
            shards=ctx.run.shards("scan"),
            on_progress=progress,
            tokens=tokens,
        )
    else:
        result = scan_corpus(
            ctx.lm,
            neurons,
            ctx.cfg.corpus,
            ctx.cfg.scan,
            shards=ctx.run.shards("scan"),
            on_progress=progress,
            tokens=tokens,
        )
    ctx.run.write_table("firings", result.topk)
    ctx.run.write_table("activation_stats", result.stats)
    ctx.run.update_meta(corpus=corpus_meta(ctx.cfg.corpus, result.corpus))
    summary = (
        f"scanned {result.corpus.documents:,} documents, {result.corpus.tokens:,} tokens "
        f"for {len(neurons)} neurons"
    )
    ctx.reporter.finish(summary)
    return summary


def _stage_examples(ctx: Context) -> str:
    ctx.reporter.start("examples", None, "firings")
    table = build_examples(
        ctx.lm,
        ctx.run.read_table("firings"),
        ctx.cfg.corpus,
        ctx.cfg.examples,
        on_progress=lambda d, n: ctx.reporter.update(d, n),
    )
    ctx.run.write_table("examples", table)
    summary = f"{table.num_rows} trimmed prompts"
    ctx.reporter.finish(summary)
    return summary


def _stage_attribute(ctx: Context) -> str:
    cfg = ctx.cfg.attribute
    examples = ctx.run.read_table("examples")
    ctx.reporter.start("attribute", None, "batches")
    if ctx.cfg.backend == "ray":
        from lookuplens.distributed import attribute_examples_ray

        att = attribute_examples_ray(
            ctx.cfg.model_source,
            examples,
            cfg,
            ctx.cfg.ray,
            device=ctx.cfg.device,
            shards=ctx.run.shards("attribute"),
            on_progress=lambda d, n: ctx.reporter.update(d, n),
        )
    else:
        try:
            att = attribute_examples(
                ctx.lm32,  # float32: the decompositions must close
                examples,
                cfg,
                shards=ctx.run.shards("attribute"),
                on_progress=lambda d, n: ctx.reporter.update(d, n),
            )
        finally:
            ctx.drop_lm32()
    labels = label_examples(att, examples, cfg)
    pairs = build_pairs(att, labels, ctx.run.read_table("neurons"), cfg, examples)
    ctx.run.write_table("attributions", att)
    # what the report and the dashboard read of the attributions, so that they never
    # read them whole (a run on a 7-8B model holds tens of millions of rows)
    ctx.run.write_table("attribution_means", attribution_means(att, top_example_ids(examples)))
    ctx.run.write_table("labels", labels)
    ctx.run.write_table("pairs", pairs)
    kept = sum(pairs.column("kept").to_pylist())
    summary = f"{att.num_rows:,} attributions, {kept} of {pairs.num_rows} (neuron, head) pairs kept"
    ctx.reporter.finish(summary)
    return summary


def _stage_verify(ctx: Context) -> str:
    run = ctx.run
    ctx.reporter.start("verify", None, "forwards")
    effects, pairs = verify_run(
        ctx.lm,
        run.read_table("examples"),
        run.read_table("neurons"),
        run.read_table("activation_stats"),
        run.read_table("labels"),
        run.read_table("pairs"),
        ctx.cfg.verify,
        on_progress=lambda d, n: ctx.reporter.update(d, n),
    )
    run.write_table("effects", effects)
    run.write_table("pairs", pairs)
    examples = run.read_table("examples")
    cue_text = {t: ctx.lm.token_str(t) for t in cue_token_ids(effects, examples)}
    findings = find_findings(effects, examples, run.read_table("neurons"), pairs, cue_text)
    run.write_table("findings", findings)
    agreement = method_agreement(run.read_table("attributions"))
    run.update_meta(method_agreement=_finite(agreement))
    df = pairs.to_pandas()
    tested = df.ks_stat.notna()
    n_kept = int((tested & df.kept).sum())
    mean = mean_kept_ks(df)
    mean_ks = f", mean KS D {mean:.3f} over {n_kept} kept pairs" if mean is not None else ""
    if int(tested.sum()) > n_kept:
        mean_ks += f" ({int(tested.sum())} pairs KS-tested with the neurons' top heads)"
    summary = (
        f"{effects.num_rows:,} intervention effects{mean_ks}; {findings.num_rows} findings "
        "(neuron, head, cue) pass the cue-swap test"
    )
    ctx.reporter.finish(summary)
    return summary


def _stage_explain(ctx: Context) -> str:
    ctx.reporter.start("explain", None, "items")
    table = explain_run(
        ctx.lm, ctx.run, ctx.cfg.explain, on_progress=lambda d, n: ctx.reporter.update(d, n)
    )
    ctx.run.write_table("explanations", table)
    status = table.column("status").to_pylist() if "status" in table.schema.names else []
    ok = sum(1 for s in status if s == "ok")
    summary = f"{ok} of {table.num_rows} explanations ({ctx.cfg.explain.explainer})"
    ctx.reporter.finish(summary)
    return summary


def _stage_score(ctx: Context) -> str:
    ctx.reporter.start("score", None, "items")
    out = score_stage(
        ctx.lm, ctx.run, ctx.cfg.score, on_progress=lambda d, n: ctx.reporter.update(d, n)
    )
    stats = out.stats
    ctx.run.write_table("scores", out.scores)
    ctx.run.write_table("score_controls", out.controls)
    ctx.run.update_meta(score_stats=_finite(stats))
    summary = _score_summary(stats)
    ctx.reporter.finish(summary)
    return summary


def _stage_report(ctx: Context) -> str:
    ctx.reporter.start("report", None, "sections")
    world = _planted_world(ctx.cfg)
    if world is not None:
        # a bundled planted model on its own corpus: compare with the planted mechanisms
        from lookuplens.zoo.ground_truth import compare

        ctx.run.update_meta(ground_truth=_finite(compare(ctx.run, ctx.lm, world=world)))
    # what the report and the dashboard show from the model, stored so that the run
    # directory renders without it
    tables = load_run(ctx.run)
    scope = stored_scope(tables, ctx.cfg.report)
    views = build_views(
        ctx.lm, tables, scope, ctx.cfg.report.batch_prompts, ctx.cfg.neurons.congruence
    )
    ctx.run.write_table("views", views)
    path = write_report(ctx.run, ctx.lm, ctx.cfg.report)
    ctx.reporter.finish(str(path))
    return str(path)


def _planted_world(cfg: RunConfig) -> str | None:
    """The planted world whose ground truth applies: a bundled planted model scanning its
    own corpus."""
    from lookuplens.zoo import bundled_corpus

    if cfg.corpus.source == "storyworld" and cfg.model in ("", "bundled:storyworld"):
        return "storyworld"
    if cfg.model == "bundled:tripworld" and cfg.corpus.source == bundled_corpus("tripworld"):
        return "tripworld"
    return None


def _score_summary(stats: Mapping[str, Any]) -> str:
    def mean(group: str, which: str) -> str:
        g = stats.get(group, {}).get(which, {}) if isinstance(stats.get(group), dict) else {}
        m = g.get("mean") if isinstance(g, dict) else None
        n = g.get("n") if isinstance(g, dict) else None
        return "n/a" if m is None else f"{m:.3f} (n={n})"

    line = (
        f"mean E of pairs {mean('pairs', 'selected')} vs random-neuron baseline "
        f"{mean('pairs', 'baseline')}"
    )
    if isinstance(stats.get("mismatched"), dict):
        line += f"; scored with another neuron's explanation {mean('mismatched', 'selected')}"
    return line


def _finite(obj: object) -> object:
    """NaN and infinities become None (run.json is strict JSON)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    return obj


StageFn = Callable[[Context], str]

STAGE_FUNCS: dict[str, StageFn] = {
    "neurons": _stage_neurons,
    "scan": _stage_scan,
    "examples": _stage_examples,
    "attribute": _stage_attribute,
    "verify": _stage_verify,
    "explain": _stage_explain,
    "score": _stage_score,
    "report": _stage_report,
}
"""The stages that exist so far, in pipeline order."""


def available_stages() -> list[str]:
    return [s for s in STAGES if s in STAGE_FUNCS]


def run_pipeline(
    cfg: RunConfig,
    run_dir: str | Path,
    until: str | None = None,
    overwrite: str | None = None,
    reporter: Reporter | None = None,
) -> RunDir:
    """Run the stages up to and including `until` (default: all that exist)."""
    stages = available_stages()
    if until is not None and until not in stages:
        raise UserError(f"unknown stage {until!r}; stages: {', '.join(stages)}")
    if overwrite is not None and overwrite not in STAGES:
        raise UserError(f"--overwrite takes a stage name: {', '.join(STAGES)}")
    todo = stages if until is None else stages[: stages.index(until) + 1]
    path = Path(run_dir)
    meta = {"config": dataclasses.asdict(cfg), "seed": cfg.seed}
    if (path / "run.json").is_file():
        run = RunDir.open(path)
    else:
        # validate the model before anything is written
        run = None
    ctx_reporter = reporter or SilentReporter()
    if run is None:
        # bad input fails here, before the run directory exists
        if "scan" in todo:
            count_documents(cfg.corpus)  # a missing, empty or unreadable corpus
        ctx = Context(cfg, None, ctx_reporter)  # type: ignore[arg-type]
        _ = ctx.lm  # a bad model, device or dtype
        if cfg.neurons.layers is not None or cfg.neurons.tokens:
            from lookuplens.neurons import resolve_layers, resolve_tokens

            resolve_layers(ctx.lm, cfg.neurons.layers)
            resolve_tokens(ctx.lm, cfg.neurons.tokens)
        run = RunDir.create(path, meta)
        ctx.run = run
    else:
        ctx = Context(cfg, run, ctx_reporter)
    if overwrite is not None:
        run.reset_from(overwrite)
    run.check_config(cfg.stage_configs())
    run.update_meta(config=dataclasses.asdict(cfg), seed=cfg.seed)
    needs_ray = cfg.backend == "ray" and any(
        s in ("scan", "attribute") and not run.is_done(s) for s in todo
    )
    if needs_ray:
        from lookuplens.distributed import ray_session

        session: contextlib.AbstractContextManager[object] = ray_session(cfg.ray)
    else:
        session = contextlib.nullcontext()
    with session:
        for stage in todo:
            if run.is_done(stage):
                log.info("%s: already done, skipped", stage)
                continue
            t0 = time.perf_counter()
            summary = STAGE_FUNCS[stage](ctx)
            run.mark_done(stage, time.perf_counter() - t0)
            log.debug("%s: %s (%.1fs)", stage, summary, time.perf_counter() - t0)
    return run
