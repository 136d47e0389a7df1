"""Command line: parses options, calls the library, turns its errors into one line.

Only this package configures logging and prints. A `LookuplensError` (bad input) becomes
one line on stderr and exit code 2; `--debug` shows the traceback instead.

`app` (in `lookuplens.cli.app`) holds the global options; each command lives in its own
module and is registered here, in the order ``--help`` lists them. `main` is the
console-script entry point.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from lookuplens.cli.app import app, err_console, state
from lookuplens.cli.click_compat import click_exceptions
from lookuplens.cli.fix import fix_cmd
from lookuplens.cli.inspect_cmd import inspect_cmd
from lookuplens.cli.run import STAGE_COMMANDS, stage_command
from lookuplens.cli.stages import attribute_cmd, explain_cmd, report_cmd, score_cmd, verify_cmd
from lookuplens.cli.summary_table import print_summary
from lookuplens.cli.why import why_cmd
from lookuplens.errors import LookuplensError

__all__ = ["app", "main", "print_summary"]

app.command("inspect")(inspect_cmd)
app.command("why")(why_cmd)
app.command("fix")(fix_cmd)
app.command("attribute")(attribute_cmd)
app.command("verify")(verify_cmd)
app.command("report")(report_cmd)
app.command("explain")(explain_cmd)
app.command("score")(score_cmd)


def _mount_subcommands() -> None:
    """The commands whose definition needs the library (defaults read from RunConfig);
    once per process."""
    if any(c.name == "run" for c in app.registered_commands):
        return
    from lookuplens.cli.plan import plan_command
    from lookuplens.server.cli import serve_command
    from lookuplens.zoo.cli import app as zoo_app

    for name, (until, help_text) in STAGE_COMMANDS.items():
        app.command(name)(stage_command(until, help_text))
    # the run commands right after `inspect` in --help, as before they were built lazily
    first = ["inspect", *STAGE_COMMANDS]

    def order(c: Any) -> int:
        shown = str(c.name or getattr(c.callback, "__name__", ""))
        return first.index(shown) if shown in first else len(first)

    app.registered_commands.sort(key=order)

    app.command("plan")(plan_command())
    app.command("serve")(serve_command)
    app.add_typer(zoo_app, name="zoo", help="The bundled storyworld corpus and model.")


def main() -> None:
    """Console-script entry point."""
    _mount_subcommands()
    try:
        rv = app(standalone_mode=False)
    except LookuplensError as e:
        if state["debug"]:
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
        if isinstance(e, click_exceptions()):
            e.show()  # type: ignore[attr-defined]
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        raise
    if isinstance(rv, int) and rv:
        sys.exit(rv)
