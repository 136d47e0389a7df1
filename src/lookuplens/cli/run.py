"""``lookuplens run``, ``neurons`` and ``scan``: run the pipeline (up to a stage) on a model
and corpus. One option per `lookuplens.run_options.OPTIONS` entry; the defaults shown are
RunConfig's."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated

import typer

from lookuplens.cli.app import state
from lookuplens.cli.click_compat import given_options
from lookuplens.cli.params import DeviceOpt, DtypeOpt, ModelOpt
from lookuplens.cli.progress import RichReporter
from lookuplens.cli.summary_table import print_summary
from lookuplens.run_options import (
    OPTIONS,
    config_from_options,
    default_run_name,
    option_default,
)


def _run_stages(until: str | None, opts: dict[str, object], given: Iterable[str]) -> None:
    cfg = config_from_options(opts, given)
    if opts.get("plan"):
        from lookuplens.cli.plan_view import plan_for_run

        plan_for_run(cfg, until)
        return
    from lookuplens.pipeline import run_pipeline

    name = str(opts["name"]) or default_run_name(cfg.model, cfg.corpus.source)
    run_dir = Path(str(opts["out"])) if opts["out"] else Path("runs") / name
    reporter = RichReporter(quiet=bool(state["quiet"]))
    try:
        run = run_pipeline(
            cfg, run_dir, until=until, overwrite=str(opts["overwrite"]) or None, reporter=reporter
        )
    finally:
        reporter.close()
    print_summary(run)


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
CandidatesOpt = Annotated[
    int,
    typer.Option(
        help="Exact ablations only on the K upstream heads per prompt that attribution "
        "patching ranks highest, the K/2 that direct attribution ranks highest, and those "
        "--candidate-share admits; the others are labelled inactive. 0: every head (the "
        "cost grows with the heads, not K). Layers with at most 32 upstream heads are "
        "never pruned."
    ),
]
CandidateShareOpt = Annotated[
    float,
    typer.Option(
        help="Also ablate a head beyond the top K when its attribution-patching estimate "
        "reaches this share of the least effect the label rule calls active. 0: the top K only."
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
PlanOpt = Annotated[
    bool,
    typer.Option(
        "--plan",
        help="Print what the run would cost (lookuplens plan for these options: passes, "
        "FLOPs, memory, disk and time per stage) and exit without running anything.",
    ),
]
OverwriteOpt = Annotated[
    str, typer.Option(help="Redo this stage and every later one (neurons, scan, examples, ...).")
]


def stage_command(until: str | None, help_text: str):  # type: ignore[no-untyped-def]
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
        candidates: CandidatesOpt = 6,
        candidate_share: CandidateShareOpt = 0.9,
        backend: BackendOpt = "local",
        ray_address: RayAddressOpt = "",
        workers: WorkersOpt = 0,
        plan: PlanOpt = False,
    ) -> None:
        opts = {k: v for k, v in locals().items() if k != "ctx"}
        _run_stages(until, opts, given_options(ctx, OPTIONS))

    with_option_defaults(command)
    command.__doc__ = help_text
    return command


def with_option_defaults(command: Callable[..., None]) -> Callable[..., None]:
    """Give each of `command`'s parameters that is an `OPTIONS` entry its `RunConfig`
    default (and every parameter its resolved annotation), so that --help shows them."""
    import inspect as _inspect
    import typing

    sig = _inspect.signature(command)
    hints = typing.get_type_hints(command, include_extras=True)
    command.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[
            p.replace(
                annotation=hints[p.name],
                default=option_default(p.name) if p.name in OPTIONS else p.default,
            )
            for p in sig.parameters.values()
        ]
    )
    return command


STAGE_COMMANDS = {
    "run": (None, "Run every stage on a model and corpus (default: the bundled storyworld model)."),
    "neurons": ("neurons", "Find next-token neurons from the weights (writes neurons.parquet)."),
    "scan": (
        "examples",
        "Scan a corpus for the prompts that fire the neurons hardest, then trim them "
        "(writes firings, activation_stats and examples; runs the neurons stage first if needed).",
    ),
}
"""Command name -> (the last stage it runs, its help)."""
