"""Command line: parses options, calls the library, turns its errors into one line.

Only this module configures logging and prints. A `LookuplensError` (bad input) becomes
one line on stderr and exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from lookuplens import __version__
from lookuplens.errors import LookuplensError, UserError

app = typer.Typer(
    name="lookuplens",
    help=(
        "Find next-token neurons in a Hugging Face causal LM and the attention heads that "
        "look up context to switch them on."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

err_console = Console(stderr=True)
_state = {"debug": False, "quiet": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lookuplens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and debug logs on errors.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only print results and errors.")
    ] = False,
) -> None:
    _state["debug"], _state["quiet"] = debug, quiet
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=debug, show_time=False)],
        force=True,
    )
    # third-party chatter (transformers' download and loading bars) stays out of our output
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for noisy in ("transformers", "huggingface_hub", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="A hub id (gpt2, EleutherAI/pythia-160m, ...) or a local folder written by "
        "save_pretrained. Default: the bundled storyworld model.",
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
DtypeOpt = Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")]


def default_model() -> str:
    """The bundled storyworld model's folder."""
    from lookuplens.zoo import default_model_path

    return str(default_model_path())


@app.command()
def inspect(
    model: ModelOpt = "",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
) -> None:
    """Load a model and print its architecture as lookuplens sees it."""
    from rich.table import Table

    from lookuplens.model import load_model

    lm = load_model(model or default_model(), device=device, dtype=dtype)
    t = Table(title=f"{lm.name}", show_header=False)
    rows = {
        "family": lm.spec.name,
        "model_type": lm.config.model_type,
        "layers": lm.n_layers,
        "heads (kv heads)": f"{lm.n_heads} ({lm.n_kv_heads})",
        "d_model / d_head": f"{lm.d_model} / {lm.d_head}",
        "d_mlp (neurons per layer)": lm.d_mlp,
        "vocabulary": lm.d_vocab,
        "context": lm.max_context,
        "parallel residual": lm.parallel_residual,
        "norm": lm.spec.norm,
        "gated MLP": lm.spec.mlp_up is not None,
        "device / dtype": f"{lm.device} / {str(lm.dtype).removeprefix('torch.')}",
    }
    for k, v in rows.items():
        t.add_row(k, str(v))
    Console().print(t)


class RichReporter:
    """Progress bars on stderr for the pipeline's long stages."""

    def __init__(self, quiet: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskID,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err_console,
            disable=quiet,
            transient=True,
        )
        self.task: TaskID | None = None

    def start(self, stage: str, total: int | None, unit: str) -> None:
        if self.task is None:
            self.progress.start()
        self.task = self.progress.add_task(stage, total=total, info="")

    def update(self, done: int, total: int | None = None, info: str = "") -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=done, total=total, info=info)

    def finish(self, summary: str = "") -> None:
        if self.task is not None:
            t = next(t for t in self.progress.tasks if t.id == self.task)
            self.progress.remove_task(self.task)
            if not self.quiet:
                err_console.print(
                    f"[green]done[/] {t.description:<10} {summary} [dim]({t.elapsed or 0:.1f}s)[/]",
                    highlight=False,
                )

    def close(self) -> None:
        if self.task is not None:
            self.progress.stop()


def _csv_ints(value: str) -> tuple[int, ...] | None:
    if not value.strip():
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise UserError(
            f"--layers takes comma-separated integers such as 9,10,11; got {value!r}"
        ) from None


def _csv_tokens(value: str) -> tuple[str, ...]:
    """Split on commas, keeping each token's leading space (" an, juniper" -> " an", " juniper")."""
    if not value:
        return ()
    return tuple(t.rstrip() for t in value.split(",") if t.strip())


def _none_if_zero(v: object) -> object:
    return v or None


@dataclass(frozen=True)
class _Option:
    """A run option: the RunConfig fields it sets (dotted) and how its value converts."""

    paths: tuple[str, ...]
    to_config: Callable[[Any], object] = lambda v: v
    """The command-line value as the config's value."""
    to_cli: Callable[[Any], object] = lambda v: v
    """The config's default as the command line shows it."""


def _join(v: object) -> str:
    return ",".join(str(x) for x in v) if v else ""  # type: ignore[attr-defined]


_OPTIONS: dict[str, _Option] = {
    "model": _Option(("model",), str),
    "corpus": _Option(("corpus.source",), str),
    "text_field": _Option(("corpus.text_field",), str),
    "max_docs": _Option(("corpus.max_docs",), _none_if_zero, lambda v: v or 0),
    "max_tokens": _Option(("corpus.max_tokens",), _none_if_zero, lambda v: v or 0),
    "max_context": _Option(("corpus.max_context",), _none_if_zero, lambda v: v or 0),
    "storyworld_docs": _Option(("corpus.storyworld_docs",), int),
    "device": _Option(("device",), str),
    "dtype": _Option(("dtype",), str),
    "seed": _Option(("seed", "neurons.seed", "examples.seed", "attribute.seed"), int),
    "layers": _Option(("neurons.layers",), lambda v: _csv_ints(str(v)), _join),
    "top_n": _Option(("neurons.top_n",), int),
    "tokens": _Option(("neurons.tokens",), lambda v: _csv_tokens(str(v)), _join),
    "token_filter": _Option(("neurons.token_filter",), str),
    "k": _Option(("scan.k",), int),
    "batch_tokens": _Option(("scan.batch_tokens",), int),
    "shard_docs": _Option(("scan.shard_docs",), int),
    "methods": _Option(
        ("attribute.methods",), lambda v: tuple(m.strip() for m in str(v).split(",")), _join
    ),
    "label_rule": _Option(("attribute.label_rule",), str),
    "backend": _Option(("backend",), str),
    "ray_address": _Option(("ray.address",), lambda v: str(v) or None, lambda v: v or ""),
    "workers": _Option(("ray.workers",), lambda v: int(v) or None, lambda v: v or 0),
}
"""CLI option -> the RunConfig fields it sets. Its default is read from `RunConfig`, and a
value given on the command line always wins over a preset and a config file."""


def _given(ctx: Any, names: Iterable[str]) -> list[str]:
    """The options the user set on the command line (or through the environment)."""
    out = []
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            out.append(name)
    return out


def run_overrides(opts: dict[str, object], given: Iterable[str]) -> dict[str, object]:
    """The dotted RunConfig settings of the given options, each checked against its choices."""
    from lookuplens.pipeline import check_setting

    out: dict[str, object] = {}
    for name in given:
        opt = _OPTIONS[name]
        value = opt.to_config(opts[name])
        for path in opt.paths:
            check_setting(path, value, "--" + name.replace("_", "-"))
            out[path] = value
    return out


def build_config(opts: dict[str, object], given: Iterable[str]) -> Any:
    """RunConfig: defaults < --preset < --config file < the options given on the command line."""
    from lookuplens.pipeline import build_config as build

    return build(
        preset=str(opts.get("preset") or ""),
        config_file=str(opts["config"]) if opts.get("config") else None,
        overrides=run_overrides(opts, given),
    )


def _run_stages(until: str | None, opts: dict[str, object], given: Iterable[str]) -> None:
    from lookuplens.pipeline import run_pipeline

    cfg = build_config(opts, given)
    name = str(opts["name"]) or _default_name(cfg.model, cfg.corpus.source)
    run_dir = Path(str(opts["out"])) if opts["out"] else Path("runs") / name
    reporter = RichReporter(quiet=bool(_state["quiet"]))
    try:
        run = run_pipeline(
            cfg, run_dir, until=until, overwrite=str(opts["overwrite"]) or None, reporter=reporter
        )
    finally:
        reporter.close()
    print_summary(run)


def print_summary(run: Any) -> None:
    """The end-of-run table: key numbers, top pairs, where the report is."""
    from rich.table import Table

    from lookuplens.summary import key_numbers, top_pairs

    out = Console()
    k = key_numbers(run)
    bits = []
    if "neurons_selected" in k:
        bits.append(f"{k['neurons_selected']} next-token neurons (+{k['neurons_baseline']} random)")
    if "pairs_kept" in k:
        bits.append(f"{k['pairs_kept']} of {k['pairs']} (neuron, head) pairs kept")
    if k.get("mean_ks_d") is not None:
        bits.append(f"mean KS D {k['mean_ks_d']:.3f}")
    if k.get("mean_e_selected") is not None:
        base = k.get("mean_e_baseline")
        bits.append(
            f"mean E {k['mean_e_selected']:.3f}"
            + (f" vs {base:.3f} for random neurons" if base is not None else "")
            + (
                f", {k['mean_e_mismatched']:.3f} with another neuron's explanation"
                if k.get("mean_e_mismatched") is not None
                else ""
            )
        )
    status = k.get("pair_score_status")
    if isinstance(status, dict) and any(s != "ok" for s in status):
        why = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in status.items() if s != "ok")
        bits.append(f"{status.get('ok', 0)} pair explanations scored, not scored: {why}")
    if bits:
        out.print("; ".join(bits), highlight=False)
    if run.has_table("findings"):
        f = run.read_df("findings")
        f = f[~f.baseline]
        shown = "; ".join(
            f"L{r.layer}N{r.neuron} {r.token!r} <- L{r.head_layer}H{r.head} reading "
            f"{r.cue!r} ({r.median_share_removed:.0%} of the activation)"
            for r in f.head(3).itertuples()
        )
        out.print(
            f"{len(f)} headline findings (next-token neuron, head, cue) pass the source-swap "
            "test" + (f": {shown}" if shown else ""),
            highlight=False,
        )
    gt = k.get("ground_truth")
    if isinstance(gt, dict) and "precision" in gt:

        def fmt(v: object) -> str:
            return "n/a" if v is None else f"{v:.2f}"

        out.print(
            f"ground truth: precision {fmt(gt['precision'])}, recall {fmt(gt['recall'])} of "
            f"the headline findings against the planted look-ups' cue-reading heads "
            f"({gt.get('n_predicted')} findings on planted targets, "
            f"{gt.get('n_ground_truth')} true pairs; "
            "a head is cue-reading when patching it from a cue-swapped run moves the neuron)",
            highlight=False,
        )
    rows = top_pairs(run, limit=10)
    if rows:
        t = Table(title="top (neuron, head) pairs")
        cols = ("#", "neuron", "token", "head", "active", "direct", "abl dlogp", "KS D", "E")
        for col in cols:
            t.add_column(col, no_wrap=True, max_width=10 if col == "token" else None)
        for i, r in enumerate(rows, 1):
            t.add_row(
                str(i),
                r.neuron_name,
                repr(r.token),
                r.head_name,
                f"{r.active_rate:.2f}",
                f"{r.mean_direct:+.3f}",
                "" if r.ablation_delta_logprob is None else f"{r.ablation_delta_logprob:+.3f}",
                "" if r.ks_stat is None else f"{r.ks_stat:.2f}",
                "" if r.score is None else f"{r.score:.2f}",
            )
        out.print(t)
        for i, r in enumerate(rows, 1):
            if r.explanation:
                out.print(
                    f"  {i}. {r.neuron_name} <- {r.head_name}: {r.explanation}",
                    highlight=False,
                    soft_wrap=False,
                )
    report = run.path / "report.html"
    if report.is_file():
        out.print(f"report: {report}", highlight=False)
    out.print(f"run directory: {run.path}", highlight=False)


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
    reporter = RichReporter(quiet=bool(_state["quiet"]))
    try:
        run_pipeline(
            cfg, run.path, until=stage, overwrite=stage if overwrite else None, reporter=reporter
        )
    finally:
        reporter.close()
    typer.echo(f"run directory: {run.path}")


def _default_name(model: str, corpus: str) -> str:
    import re

    m = Path(model.rstrip("/")).name if model else "storyworld"
    c = "storyworld" if corpus == "storyworld" else Path(corpus.rstrip("/")).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{m}__{c}")


CorpusOpt = Annotated[
    str,
    typer.Option(
        "--corpus",
        "-c",
        help="A .txt/.jsonl/.parquet file, a Hugging Face dataset (hf:NAME), or "
        "'storyworld' (the bundled held-out corpus).",
    ),
]
NameOpt = Annotated[str, typer.Option(help="Run name: the run directory is runs/NAME.")]
OutOpt = Annotated[str, typer.Option("--out", help="Run directory (overrides --name).")]
LayersOpt = Annotated[
    str,
    typer.Option(
        help="Layers to search for next-token neurons, comma-separated (negative counts from the "
        "end). Default: all."
    ),
]
TopNOpt = Annotated[int, typer.Option(help="Next-token neurons kept per layer.")]
TokensOpt = Annotated[
    str,
    typer.Option(
        help='Aim at these tokens instead: comma-separated, leading spaces kept (" an, juniper"); '
        'a word start may also be written as the vocabulary has it ("▁an", "Ġan").'
    ),
]
TokenFilterOpt = Annotated[
    str,
    typer.Option(
        help="'paper': a neuron's top token must start a word and be longer than 2 characters "
        'with its leading space (" an"; "▁an" under SentencePiece); \'none\': any token.'
    ),
]
KOpt = Annotated[int, typer.Option("--k", help="Top firing prompts kept per neuron.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of every random choice.")]
MaxTokOpt = Annotated[int, typer.Option(help="Scan at most this many corpus tokens (0: all).")]
MaxDocsOpt = Annotated[int, typer.Option(help="Scan at most this many documents (0: all).")]
MaxCtxOpt = Annotated[
    int, typer.Option(help="Cut documents at this many tokens (0: the model's context).")
]
FieldOpt = Annotated[str, typer.Option(help="Text field of .jsonl/.parquet/HF corpora.")]
StoryDocsOpt = Annotated[int, typer.Option(help="Documents of the bundled storyworld corpus.")]
BatchTokOpt = Annotated[
    int, typer.Option(help="Padded tokens per forward batch (raise it on a GPU).")
]
ShardDocsOpt = Annotated[
    int,
    typer.Option(
        help="Documents per scan shard (an interrupted scan resumes at a shard boundary)."
    ),
]
MethodsOpt = Annotated[
    str,
    typer.Option(
        help="Attribution methods, comma-separated: direct, raw, zero_ablation, mean_ablation, "
        "resample_ablation, attribution_patching, path_patching."
    ),
]
LabelRuleOpt = Annotated[
    str,
    typer.Option(
        help="When a head counts as active: ablation_share (ablation_typical's test, or "
        "zeroing it removes 20% of all heads' drive on the prompt and 5% of the neuron's "
        "median top activation), "
        "ablation_typical (20% of the median top activation), mean_std (above mean + 2 sd "
        "over the candidate heads, the paper's), top_k or ablation_fraction."
    ),
]
BackendOpt = Annotated[
    str,
    typer.Option(help="local, or ray: the scan and attribution on Ray workers (identical tables)."),
]
RayAddressOpt = Annotated[
    str,
    typer.Option(
        help="Address of a running Ray cluster (default: RAY_ADDRESS, else a local cluster)."
    ),
]
WorkersOpt = Annotated[int, typer.Option(help="Ray workers (0: one per GPU, or one per CPU).")]
PresetOpt = Annotated[
    str,
    typer.Option(
        help="A settings bundle: 'paper' reproduces Neo, Cohen & Barez (2024) (top 30 prompts, "
        "0.8 trim, 20 training prompts, mean+2sd rule on the raw attribution, 25-75% filter, "
        "heads of earlier layers only). --config and explicit options apply on top."
    ),
]
ConfigOpt = Annotated[
    str,
    typer.Option(
        help="A TOML file with any RunConfig settings (sections corpus, neurons, scan, examples, "
        "attribute, verify, ...); options given on the command line win."
    ),
]
OverwriteOpt = Annotated[
    str, typer.Option(help="Redo this stage and every later one (neurons, scan, examples, ...).")
]


def _stage_command(until: str | None, help_text: str):  # type: ignore[no-untyped-def]
    """A run command; its options' defaults are RunConfig's (filled in below)."""

    def command(
        ctx: typer.Context,
        model: ModelOpt = "",
        corpus: CorpusOpt = "storyworld",
        name: NameOpt = "",
        out: OutOpt = "",
        layers: LayersOpt = "",
        top_n: TopNOpt = 20,
        tokens: TokensOpt = "",
        token_filter: TokenFilterOpt = "paper",
        k: KOpt = 30,
        seed: SeedOpt = 0,
        max_tokens: MaxTokOpt = 0,
        max_docs: MaxDocsOpt = 0,
        max_context: MaxCtxOpt = 0,
        text_field: FieldOpt = "text",
        storyworld_docs: StoryDocsOpt = 2000,
        device: DeviceOpt = "auto",
        dtype: DtypeOpt = "float32",
        overwrite: OverwriteOpt = "",
        batch_tokens: BatchTokOpt = 16384,
        shard_docs: ShardDocsOpt = 256,
        config: ConfigOpt = "",
        preset: PresetOpt = "",
        methods: MethodsOpt = "direct,raw,zero_ablation,attribution_patching,path_patching",
        label_rule: LabelRuleOpt = "ablation_share",
        backend: BackendOpt = "local",
        ray_address: RayAddressOpt = "",
        workers: WorkersOpt = 0,
    ) -> None:
        opts = {k: v for k, v in locals().items() if k != "ctx"}
        _run_stages(until, opts, _given(ctx, _OPTIONS))

    import inspect as _inspect
    import typing

    sig = _inspect.signature(command)
    hints = typing.get_type_hints(command, include_extras=True)
    command.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[
            p.replace(
                annotation=hints[p.name],
                default=_option_default(p.name) if p.name in _OPTIONS else p.default,
            )
            for p in sig.parameters.values()
        ]
    )
    command.__doc__ = help_text
    return command


@functools.cache
def _config_defaults() -> dict[str, Any]:
    """`RunConfig`'s defaults as nested dicts (read once)."""
    import dataclasses

    from lookuplens.pipeline import RunConfig

    return dataclasses.asdict(RunConfig())


def _option_default(name: str) -> object:
    """An option's default as the command line shows it, read from `RunConfig`."""
    opt = _OPTIONS[name]
    value: Any = _config_defaults()
    for part in opt.paths[0].split("."):
        value = value[part]
    return opt.to_cli(value)


_STAGE_COMMANDS = {
    "run": (None, "Run every stage on a model and corpus (default: the bundled storyworld model)."),
    "neurons": ("neurons", "Find next-token neurons from the weights (writes neurons.parquet)."),
    "scan": (
        "examples",
        "Scan a corpus for the prompts that fire the neurons hardest, then trim them "
        "(writes firings, activation_stats and examples; runs the neurons stage first if needed).",
    ),
}


@app.command()
def why(
    prompt: Annotated[str, typer.Argument(help="The text whose next-token prediction to explain.")],
    model: ModelOpt = "",
    target: Annotated[
        str,
        typer.Option(
            help='The token to explain, as typed (" an", or the vocabulary\'s "▁an" / "Ġan"). '
            "Default: the top prediction."
        ),
    ] = "",
    contrast: Annotated[
        str,
        typer.Option(help='Explain the logit difference against this token (" a", "▁a").'),
    ] = "",
    position: Annotated[
        int, typer.Option(help="Token position in the prompt (BOS not counted); -1 is the last.")
    ] = -1,
    top_neurons: Annotated[int, typer.Option(help="Neurons shown.")] = 5,
    top_heads: Annotated[int, typer.Option(help="Heads shown per neuron.")] = 3,
    ablate_until: Annotated[
        float,
        typer.Option(
            help="The causal check zeroes the ranked neurons, best first, until p(target) is "
            "at most this share of its value (0.5: halved)."
        ),
    ] = 0.5,
    max_ablated: Annotated[
        int, typer.Option(help="At most this many ranked neurons zeroed in that check.")
    ] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for tools.")] = False,
    html: Annotated[str, typer.Option(help="Also write a small HTML page to this file.")] = "",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
) -> None:
    """My model said X here: which neurons pushed X, and which heads switched them on?"""
    import json

    from lookuplens.model import load_model
    from lookuplens.why import WhyConfig, explain_prediction

    try:
        cfg = WhyConfig(
            target=target or None,
            contrast=contrast or None,
            position=position,
            top_neurons=top_neurons,
            top_heads=top_heads,
            ablate_until=ablate_until,
            max_ablated=max_ablated,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    lm = load_model(model or default_model(), device=device, dtype=dtype)
    result = explain_prediction(lm, prompt, cfg)
    if html:
        from lookuplens.store import atomic_write_bytes
        from lookuplens.why_html import render_why

        atomic_write_bytes(Path(html), render_why(result))
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    _print_why(result)
    if html:
        Console().print(f"html: {html}", highlight=False)


def _print_why(r: Any) -> None:
    from rich.tree import Tree

    from lookuplens.why import curve_text, diff_change

    what = repr(r.target) + (f" vs {r.contrast!r}" if r.contrast else "")
    shown = "".join(r.tokens[: r.position + 1])
    root = Tree(
        f"[bold]{what}[/] after {shown!r}: "
        f"{'logit difference' if r.contrast else 'logit'} {r.logit:+.3f}, p={r.prob:.3f} "
        f"(top prediction {r.top_prediction!r})"
    )
    others = sorted(r.terms.items(), key=lambda kv: -abs(kv[1]))[:4]
    root.add(
        f"all neurons together {r.neuron_total:+.3f}; largest other terms: "
        + ", ".join(f"{k} {v:+.3f}" for k, v in others)
    )
    for nf in r.neurons:
        node = root.add(
            f"[bold cyan]{nf.name}[/] contributes {nf.contribution:+.3f} "
            f"(activation {nf.activation:.3f}, top token {nf.top_token!r})"
        )
        for h in nf.heads:
            src = ", ".join(f"{s.token!r}@{s.position} ({s.attention:.2f})" for s in h.sources)
            node.add(
                f"[magenta]{h.name}[/] direct {h.direct:+.3f}, ablation removes "
                f"{h.zero_ablation:+.3f}; looks at {src}"
            )
    for a in r.ablations:
        root.add(
            f"[yellow]causal check[/]: {a.what}: p({r.target!r}) {a.prob_before:.3f} -> "
            f"{a.prob_after:.3f}; top prediction {a.top_before!r} -> {a.top_after!r}"
            + diff_change(a)
        )
    if r.curve:
        root.add(f"p({r.target!r}) with the top k ranked neurons zeroed: {curve_text(r.curve)}")
    if r.carrying:
        root.add(
            f"the {len(r.carrying)} neurons that carry it: "
            + ", ".join(f"{n.name} ({n.top_token!r}, {n.contribution:+.2f})" for n in r.carrying)
        )
    Console().print(root, highlight=False)


RunDirArg = Annotated[str, typer.Argument(help="A run directory written by lookuplens.")]


@app.command("attribute")
def attribute_cmd(
    run_dir: RunDirArg,
    overwrite: Annotated[bool, typer.Option(help="Redo the stage and every later one.")] = False,
) -> None:
    """Attribute each neuron's firings to upstream heads (attributions, labels, pairs)."""
    _run_dir_stage("attribute", run_dir, overwrite)


@app.command("verify")
def verify_cmd(
    run_dir: RunDirArg,
    overwrite: Annotated[bool, typer.Option(help="Redo the stage and every later one.")] = False,
) -> None:
    """Verify causally: neuron and head interventions, KS tests, method agreement (effects)."""
    _run_dir_stage("verify", run_dir, overwrite)


@app.command("report")
def report_cmd(
    run_dir: RunDirArg,
    no_model: Annotated[
        bool,
        typer.Option(
            "--no-model", help="Do not load the model (no activation or attention shading)."
        ),
    ] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Write (or rewrite) report.html of a run directory."""
    from lookuplens.model import load_model
    from lookuplens.pipeline import RunConfig
    from lookuplens.report import write_report
    from lookuplens.store import RunDir

    run = RunDir.open(run_dir)
    cfg = RunConfig.from_dict(run.meta.get("config") or {})  # type: ignore[arg-type]
    lm = None if no_model else load_model(cfg.model_source, device=device, dtype=cfg.dtype)
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


@app.command("explain")
def explain_cmd(
    run_dir: RunDirArg,
    explainer: ExplainerOpt = "",
    llm_model: LlmModelOpt = "",
    llm_base_url: LlmUrlOpt = "",
    llm_key_env: LlmKeyEnvOpt = "",
    overwrite: Annotated[bool, typer.Option(help="Redo the stage and every later one.")] = False,
) -> None:
    """Explain when each kept head drives its neuron, and when each neuron fires."""
    _run_dir_stage(
        "explain",
        run_dir,
        overwrite,
        _explain_overrides("explain", explainer, llm_model, llm_base_url, llm_key_env),
    )


@app.command("score")
def score_cmd(
    run_dir: RunDirArg,
    explainer: ExplainerOpt = "",
    llm_model: LlmModelOpt = "",
    llm_base_url: LlmUrlOpt = "",
    llm_key_env: LlmKeyEnvOpt = "",
    overwrite: Annotated[bool, typer.Option(help="Redo the stage and every later one.")] = False,
) -> None:
    """Score the explanations on held-out prompts (balanced accuracy E)."""
    _run_dir_stage(
        "score",
        run_dir,
        overwrite,
        _explain_overrides("score", explainer, llm_model, llm_base_url, llm_key_env),
    )


def _mount_subcommands() -> None:
    """The commands whose definition needs the library (defaults read from RunConfig);
    once per process."""
    if any(c.name == "run" for c in app.registered_commands):
        return
    from lookuplens.server.cli import serve_command
    from lookuplens.zoo.cli import app as zoo_app

    for name, (until, help_text) in _STAGE_COMMANDS.items():
        app.command(name)(_stage_command(until, help_text))
    # the run commands right after `inspect` in --help, as before they were built lazily
    first = ["inspect", *_STAGE_COMMANDS]

    def order(c: Any) -> int:
        shown = str(c.name or getattr(c.callback, "__name__", ""))
        return first.index(shown) if shown in first else len(first)

    app.registered_commands.sort(key=order)

    app.command("serve")(serve_command)
    app.add_typer(zoo_app, name="zoo", help="The bundled storyworld corpus and model.")


def _click_exceptions() -> tuple[type[BaseException], ...]:
    """Click's exception base classes: typer >= 0.16 vendors click as ``typer._click``
    (its exceptions derive from ``typer.exceptions.TyperException``), older typer uses
    the ``click`` package."""
    classes: list[type[BaseException]] = []
    try:
        import click

        classes.append(click.ClickException)
    except ImportError:  # pragma: no cover
        pass
    vendored = getattr(getattr(typer, "exceptions", None), "TyperException", None)
    if isinstance(vendored, type):
        classes.append(vendored)
    return tuple(classes)


def main() -> None:
    """Console-script entry point."""
    _mount_subcommands()
    try:
        rv = app(standalone_mode=False)
    except LookuplensError as e:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted; rerun the same command to continue where it stopped")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as e:  # usage errors (bad option, missing argument): exit code 2
        if isinstance(e, _click_exceptions()):
            e.show()  # type: ignore[attr-defined]
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        raise
    if isinstance(rv, int) and rv:
        sys.exit(rv)


if __name__ == "__main__":  # pragma: no cover
    main()
