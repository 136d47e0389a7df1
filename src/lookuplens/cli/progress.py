"""Progress bars on stderr for the pipeline's long stages (a `pipeline.Reporter`)."""

from __future__ import annotations

from lookuplens.cli.app import err_console


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
