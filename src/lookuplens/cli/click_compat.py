"""What the CLI needs from click beneath typer: its exception classes (wherever this typer
version keeps them) and where an option's value came from."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import typer


def click_exceptions() -> tuple[type[BaseException], ...]:
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


def given_options(ctx: Any, names: Iterable[str]) -> list[str]:
    """The options the user set on the command line (or through the environment)."""
    out = []
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            out.append(name)
    return out
