"""``lookuplens plan``: the cost of a run before the run (and ``run --plan``).

Reads the model's config.json only (no weights) and prints, per stage, the forward and
backward passes, tokens, FLOPs, peak memory, disk per table and time, on this machine or
on a named GPU (``--gpu``); ``--json`` for tools. The library side is `lookuplens.plan`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from lookuplens.cli.params import DeviceOpt, DtypeOpt, ModelOpt
from lookuplens.cli.run import (
    BatchTokOpt,
    CandidatesOpt,
    ConfigOpt,
    CorpusOpt,
    KOpt,
    LayersOpt,
    MaxTokOpt,
    MethodsOpt,
    PresetOpt,
    TopNOpt,
    with_option_defaults,
)

__all__ = ["plan_command"]


def plan_command():  # type: ignore[no-untyped-def]
    """The ``plan`` command; its run options' defaults are RunConfig's (filled in below),
    so it is built when the CLI mounts its library commands."""
    from lookuplens.run_options import OPTIONS

    def command(
        ctx: typer.Context,
        model: ModelOpt = "",
        corpus: CorpusOpt = "storyworld",
        corpus_tokens: Annotated[
            int,
            typer.Option(
                help="The corpus's size in tokens (default: read and measured where it can "
                "be; 1,000,000 for a hub dataset)."
            ),
        ] = 0,
        device: DeviceOpt = "auto",
        gpu: Annotated[
            str,
            typer.Option(
                help="Plan for this GPU instead of this machine: H100, H100-PCIe, H200, "
                "A100-40GB, A100-80GB, L40S, L4, A10G, RTX-4090."
            ),
        ] = "",
        dtype: DtypeOpt = "float32",
        max_tokens: MaxTokOpt = 0,
        layers: LayersOpt = "",
        top_n: TopNOpt = 20,
        k: KOpt = 30,
        batch_tokens: BatchTokOpt = 16384,
        methods: MethodsOpt = "direct,raw,zero_ablation,attribution_patching,path_patching",
        candidates: CandidatesOpt = 6,
        preset: PresetOpt = "",
        config: ConfigOpt = "",
        as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    ) -> None:
        """The cost of a run before the run: per stage the passes, tokens, FLOPs, peak
        memory, disk and time, from the model's config.json alone (no weights)."""
        from lookuplens.cli.click_compat import given_options
        from lookuplens.cli.plan_view import print_plan
        from lookuplens.plan import plan_run
        from lookuplens.run_options import config_from_options

        opts = {k_: v for k_, v in locals().items() if k_ != "ctx"}
        cfg = config_from_options(opts, given_options(ctx, [n for n in opts if n in OPTIONS]))
        plan = plan_run(cfg, corpus_tokens=corpus_tokens or None, gpu=gpu or None)
        print_plan(plan, as_json=as_json)

    return with_option_defaults(command)
