"""Options and arguments that several commands share, and the default model."""

from __future__ import annotations

from typing import Annotated

import typer

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
RunDirArg = Annotated[str, typer.Argument(help="A run directory written by lookuplens.")]
StageOverwriteOpt = Annotated[bool, typer.Option(help="Redo the stage and every later one.")]


def default_model() -> str:
    """The bundled storyworld model's folder."""
    from lookuplens.zoo import default_model_path

    return str(default_model_path())
