"""Runs the stages in order into a run directory, skipping the ones already finished.

Each stage reads what earlier stages wrote to the run directory and writes its own
tables atomically, then marks itself done in run.json. A rerun skips finished stages;
an interrupted stage is resumed (the scan from its last shard); `overwrite` redoes a
stage and every later one. Settings are checked against the ones a finished stage ran
with, so a run directory never mixes results of different settings.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lookuplens.attribute import (
    AttributeConfig,
    attribute_examples,
    build_pairs,
    label_examples,
)
from lookuplens.corpus import CorpusSpec, corpus_meta
from lookuplens.errors import UserError
from lookuplens.examples import ExamplesConfig, build_examples
from lookuplens.model import LoadedModel, load_model
from lookuplens.neurons import NeuronsConfig, find_neurons, tracked
from lookuplens.scan import ScanConfig, ScanProgress, count_documents, scan_corpus
from lookuplens.store import STAGES, RunDir
from lookuplens.verify import VerifyConfig, method_agreement, verify_run

log = logging.getLogger(__name__)


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


def bundled_model() -> str:
    """The bundled storyworld model's folder."""
    from lookuplens.zoo import default_model_path

    return str(default_model_path())


@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on. Mirrors the CLI options and the TOML config file."""

    model: str = ""
    """Hub id or local folder; empty means the bundled storyworld model."""
    corpus: CorpusSpec = field(default_factory=lambda: CorpusSpec("storyworld"))
    """The corpus scanned for firing prompts."""
    device: str = "auto"
    """auto, cpu or cuda."""
    dtype: str = "float32"
    """float32, bfloat16, float16 or auto."""
    seed: int = 0
    """Seed of every random choice (baseline neurons, splits)."""
    neurons: NeuronsConfig = field(default_factory=NeuronsConfig)
    """Stage 1 settings."""
    scan: ScanConfig = field(default_factory=ScanConfig)
    """Stage 2 settings."""
    examples: ExamplesConfig = field(default_factory=ExamplesConfig)
    """Stage 3 settings."""
    attribute: AttributeConfig = field(default_factory=AttributeConfig)
    """Stage 4 settings (attribution methods, activity labels, pair filter)."""
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    """Stage 5 settings (interventions)."""

    @property
    def model_source(self) -> str:
        return self.model or bundled_model()

    def stage_configs(self) -> dict[str, object]:
        """The settings each stage's output depends on (for the resume guard)."""
        return {
            "neurons": {
                "model": self.model or "bundled:storyworld",
                "dtype": self.dtype,
                "neurons": dataclasses.asdict(self.neurons),
                "seed": self.seed,
            },
            "scan": {
                "corpus": dataclasses.asdict(self.corpus),
                "scan": dataclasses.asdict(self.scan),
            },
            "examples": {"examples": dataclasses.asdict(self.examples)},
            "attribute": {"attribute": dataclasses.asdict(self.attribute)},
            "verify": {"verify": dataclasses.asdict(self.verify)},
        }


@dataclass
class Context:
    """What the stages share while a run goes on (the model is loaded once, lazily)."""

    cfg: RunConfig
    run: RunDir
    reporter: Reporter
    _lm: LoadedModel | None = None

    @property
    def lm(self) -> LoadedModel:
        if self._lm is None:
            self._lm = load_model(
                self.cfg.model_source, device=self.cfg.device, dtype=self.cfg.dtype
            )
        return self._lm


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
    summary = f"{sum(sel)} next-token neurons selected, {sum(base)} baseline neurons"
    ctx.reporter.finish(summary)
    return summary


def _stage_scan(ctx: Context) -> str:
    lm = ctx.lm
    neurons = tracked(ctx.run.read_table("neurons"))
    ctx.reporter.start("scan", None, "docs")

    def progress(p: ScanProgress) -> None:
        rate = p.tokens / max(p.seconds, 1e-9)
        ctx.reporter.update(p.docs, p.total_docs, f"{rate:,.0f} tok/s")

    result = scan_corpus(
        lm,
        neurons,
        ctx.cfg.corpus,
        ctx.cfg.scan,
        shards=ctx.run.shards("scan"),
        on_progress=progress,
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
    att = attribute_examples(
        ctx.lm,
        examples,
        cfg,
        shards=ctx.run.shards("attribute"),
        on_progress=lambda d, n: ctx.reporter.update(d, n),
    )
    labels = label_examples(att, examples, cfg)
    pairs = build_pairs(att, labels, ctx.run.read_table("neurons"), cfg)
    ctx.run.write_table("attributions", att)
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
    agreement = method_agreement(run.read_table("attributions"))
    run.update_meta(method_agreement=_finite(agreement))
    ks = [v for v in pairs.column("ks_stat").to_pylist() if v == v]
    mean_ks = f", mean KS D {sum(ks) / len(ks):.3f} over {len(ks)} pairs" if ks else ""
    summary = f"{effects.num_rows:,} intervention effects{mean_ks}"
    ctx.reporter.finish(summary)
    return summary


def _finite(obj: object) -> object:
    """NaN and infinities become None (run.json is strict JSON)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
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
    for stage in todo:
        if run.is_done(stage):
            log.info("%s: already done, skipped", stage)
            continue
        t0 = time.perf_counter()
        summary = STAGE_FUNCS[stage](ctx)
        run.mark_done(stage, time.perf_counter() - t0)
        log.debug("%s: %s (%.1fs)", stage, summary, time.perf_counter() - t0)
    return run
