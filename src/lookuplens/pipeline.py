"""Runs the stages in order into a run directory, skipping the ones already finished.

Each stage reads what earlier stages wrote to the run directory and writes its own
tables atomically, then marks itself done in run.json. A rerun skips finished stages;
an interrupted stage is resumed (the scan from its last shard); `overwrite` redoes a
stage and every later one. Settings are checked against the ones a finished stage ran
with, so a run directory never mixes results of different settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import sys
import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from lookuplens.attribute import (
    AttributeConfig,
    attribute_examples,
    build_pairs,
    label_examples,
)
from lookuplens.choices import check_choices, check_value, field_choices
from lookuplens.corpus import CorpusSpec, corpus_meta
from lookuplens.distributed.config import RayConfig
from lookuplens.errors import UserError
from lookuplens.examples import ExamplesConfig, build_examples
from lookuplens.explain import ExplainConfig, ScoreConfig, explain_run, score_stage
from lookuplens.findings import cue_token_ids, find_findings
from lookuplens.model import LoadedModel, load_model
from lookuplens.model.adapter import DtypeName
from lookuplens.neurons import NeuronsConfig, find_neurons, tracked
from lookuplens.report import ReportConfig, write_report
from lookuplens.scan import ScanConfig, ScanProgress, count_documents, scan_corpus
from lookuplens.store import STAGES, RunDir
from lookuplens.summary import mean_kept_ks
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
    """auto, cpu, cuda or cuda:N."""
    dtype: DtypeName = "float32"
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
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    """Stage 6 settings (explainer, which pairs and neurons, the LLM endpoint)."""
    score: ScoreConfig = field(default_factory=ScoreConfig)
    """Stage 7 settings (simulator, batching). Its `tasks` must equal the explain stage's."""
    report: ReportConfig = field(default_factory=ReportConfig)
    """Report settings (how many neurons, pairs and prompts are shown)."""
    backend: Literal["local", "ray"] = "local"
    """Where the scan and attribution run: this process, or Ray workers (see
    `lookuplens.distributed`). Both give identical tables; a run may resume on the other."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Ray cluster settings (address, workers) for ``backend="ray"``."""

    def __post_init__(self) -> None:
        check_choices(self)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {self.device!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> RunConfig:
        """Rebuild a config from its `dataclasses.asdict` form (run.json, a TOML file).

        Unknown keys raise a `UserError` naming them; lists become tuples.
        """
        return _from_dict(cls, data, "config")

    @property
    def model_source(self) -> str:
        """The folder or hub id to load (``bundled:NAME`` resolved to its folder)."""
        if self.model.startswith("bundled:"):
            from lookuplens.zoo import bundled_model_path

            try:
                return str(bundled_model_path(self.model))
            except KeyError as e:
                raise UserError(str(e.args[0])) from None
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
            "explain": {"explain": dataclasses.asdict(self.explain)},
            "score": {"score": dataclasses.asdict(self.score)},
            "report": {"report": dataclasses.asdict(self.report)},
        }


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        # Neo, Cohen & Barez (2024), see shared/PAPER.md
        "neurons": {"top_n": 20, "token_filter": "paper", "congruence": "folded"},
        "scan": {"k": 30, "one_per_doc": True},  # top 30 documents per neuron
        "examples": {
            "keep_fraction": 0.8,  # trim while the activation stays >= 0.8x
            "max_prompt_tokens": 100,  # prompts of 100 tokens or more dropped
            "split": "rank",  # the February version explains with the first 20 prompts
            "n_train": 20,
            "contrast": 0,  # top prompts only, no contrast prompts
            "keep_read_word": False,  # the 0.8x rule alone
            "keep_heads": 0,
        },
        "attribute": {
            "label_method": "raw",  # head result . W_in, no norm
            "label_rule": "mean_std",  # active above mean + 2 sd over candidate heads
            "label_std": 2.0,
            "min_active_rate": 0.25,  # pairs kept when active on 25% to 75%
            "max_active_rate": 0.75,
            "include_same_layer": False,  # the paper's code: earlier layers only
        },
    },
}
"""Named settings bundles: ``--preset paper`` reproduces the paper's settings."""


def load_toml(path: str | Path) -> dict[str, Any]:
    """A TOML settings file, or a `UserError` saying why it cannot be read."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a directory; pass a TOML file") from None
    except UnicodeDecodeError:
        raise UserError(
            f"config file {path} is not UTF-8 text; save it as UTF-8 TOML (sections corpus, "
            "neurons, scan, ...)"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None


def build_config(
    preset: str = "",
    config_file: str | Path | None = None,
    overrides: Mapping[str, object] | None = None,
) -> RunConfig:
    """A `RunConfig` from the built-in defaults, then a preset, then a TOML file, then
    `overrides` (dotted paths such as ``"attribute.label_rule"``), each on top of the last.

    An override always wins, also when its value equals the built-in default. Every value
    is checked (closed sets of choices included) before anything is run or written.
    """
    base: dict[str, Any] = dataclasses.asdict(RunConfig())
    if preset:
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        _merge(base, PRESETS[preset])
    if config_file:
        _merge(base, load_toml(config_file))
    for path, value in (overrides or {}).items():
        set_path(base, path, value)
    _bundled_corpus(base)
    return RunConfig.from_dict(base)


def _bundled_corpus(base: dict[str, Any]) -> None:
    """A bundled model other than the storyworld scans its own held-out text unless a
    corpus is named; ``bundled:NAME`` as a corpus is that text."""
    from lookuplens.zoo import bundled_corpus

    model = str(base.get("model") or "")
    corpus = base.get("corpus") or {}
    source = str(corpus.get("source") or "")
    try:
        if source.startswith("bundled:"):
            corpus["source"] = bundled_corpus(source)
        elif source == "storyworld" and model.startswith("bundled:"):
            corpus["source"] = bundled_corpus(model)
    except KeyError as e:
        raise UserError(str(e.args[0])) from None


def _owner(path: str) -> tuple[type, str]:
    """The config dataclass holding a dotted RunConfig setting, and the field's name."""
    cls: Any = RunConfig
    *parents, leaf = path.split(".")
    for p in parents:
        cls = typing.get_type_hints(cls)[p]
    return cls, leaf


def setting_choices(path: str) -> tuple[object, ...] | None:
    """The allowed values of a dotted RunConfig setting with a closed set of choices (from
    its ``Literal`` type), else None."""
    cls, leaf = _owner(path)
    found = field_choices(cls).get(leaf)
    return None if found is None else found[0]


def check_setting(path: str, value: object, shown: str | None = None) -> None:
    """A `UserError` naming `shown` (default: the path) when `value` is not one of a
    dotted setting's closed set of choices."""
    cls, leaf = _owner(path)
    try:
        check_value(leaf, value, cls, shown or path)
    except ValueError as e:
        raise UserError(str(e)) from None


def set_path(d: dict[str, Any], path: str, value: object) -> None:
    """Set ``d["a"]["b"] = value`` for ``path="a.b"``, making the tables on the way."""
    *parents, leaf = path.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[leaf] = value


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _from_dict(cls: type, data: Mapping[str, object], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise UserError(f"{where} must be a table of settings, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(
            f"unknown setting(s) {', '.join(unknown)} in {where}; known: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, object] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, f"{where}.{name}")  # type: ignore[arg-type]
            continue
        try:
            check_value(name, value, cls)
        except ValueError as e:
            raise UserError(f"{where}.{e}") from None
        kwargs[name] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {e}") from None


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
        """The model in float32, for the decompositions that must close exactly."""
        if self.lm.dtype == torch.float32:
            return self.lm
        if self._lm32 is None:
            self._lm32 = load_model(self.cfg.model_source, device=self.cfg.device, dtype="float32")
        return self._lm32


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
    neurons = tracked(ctx.run.read_table("neurons"))
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
        )
    else:
        result = scan_corpus(
            ctx.lm,
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
        att = attribute_examples(
            ctx.lm32,  # float32: the direct decomposition must close
            examples,
            cfg,
            shards=ctx.run.shards("attribute"),
            on_progress=lambda d, n: ctx.reporter.update(d, n),
        )
    labels = label_examples(att, examples, cfg)
    pairs = build_pairs(att, labels, ctx.run.read_table("neurons"), cfg, examples)
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
