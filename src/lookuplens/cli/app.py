"""The Typer app, its global options (--version, --debug, --quiet) and the logging setup.

The commands live in their own modules; `lookuplens.cli` registers them on `app`.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from lookuplens import __version__

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
state = {"debug": False, "quiet": False}
"""The global options of this invocation (set by the root callback)."""


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
    state["debug"], state["quiet"] = debug, quiet
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
