"""How a plan is shown: tables (rich) or JSON; ``run --plan`` (the plan of a run command's
stages). The ``plan`` command itself is `lookuplens.cli.plan`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import typer
from rich.console import Console

__all__ = ["plan_for_run", "print_plan"]


def _si(x: float, unit: str = "", base: float = 1000.0) -> str:
    """3 significant digits with an SI prefix: 1.23 k, 45.6 M, 789 G."""
    if x == 0:
        return f"0 {unit}".strip()
    prefixes = ["", "k", "M", "G", "T", "P", "E"]
    i = 0
    while abs(x) >= 999.5 and i < len(prefixes) - 1:
        x /= base
        i += 1
    text = f"{x:.3g}" if abs(x) >= 1 or i == 0 else f"{x:.2f}"
    return f"{text} {prefixes[i]}{unit}".strip()


def _count(x: float) -> str:
    return "-" if x == 0 else (f"{x:,.0f}" if x < 1e5 else _si(x))


def _bytes(x: float) -> str:
    return "-" if x == 0 else _si(x, "B")


def _flops(x: float) -> str:
    return "-" if x == 0 else _si(x, "FLOP")


def _time(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    if s < 86400 * 2:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def print_plan(plan: Any, stages: Iterable[str] | None = None, as_json: bool = False) -> None:
    """The plan as tables (rich) or as JSON (`Plan.to_dict`), limited to `stages`."""
    from rich.table import Table

    wanted = list(stages) if stages is not None else [s.stage for s in plan.stages]
    shown = [s for s in plan.stages if s.stage in wanted]
    out = Console()
    if as_json:
        data = plan.to_dict()
        data["stages"] = [s for s in data["stages"] if s["stage"] in wanted]
        data["total"]["seconds"] = plan.load_seconds + sum(s.seconds for s in shown)
        typer.echo(json.dumps(data, indent=2))
        return
    m = plan.model
    out.print(
        f"[bold]Plan[/] for {m.name} ({m.params / 1e9:.3g}B parameters, {m.model_type}) on "
        f"{plan.machine.name}, {plan.dtype}; corpus {plan.corpus.tokens:,} tokens",
        highlight=False,
    )
    t = Table(show_lines=False)
    for col in ("stage", "forward", "backward", "tokens", "FLOPs", "peak memory", "disk", "time"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    t.add_row(
        "model load",
        "",
        "",
        "",
        "",
        _bytes(m.params * _dtype_bytes(plan.dtype)),
        "",
        _time(plan.load_seconds),
    )
    for s in shown:
        t.add_row(
            s.stage,
            _count(s.forward_passes),
            _count(s.backward_passes),
            _count(s.tokens),
            _flops(s.flops),
            _bytes(s.peak_memory),
            _bytes(sum(s.disk.values())),
            _time(s.seconds),
        )
    total = plan.load_seconds + sum(s.seconds for s in shown)
    t.add_row(
        "[bold]total[/]",
        _count(sum(s.forward_passes for s in shown)),
        _count(sum(s.backward_passes for s in shown)),
        _count(sum(s.tokens for s in shown)),
        _flops(sum(s.flops for s in shown)),
        _bytes(max((s.peak_memory for s in shown), default=0)),
        _bytes(sum(sum(s.disk.values()) for s in shown)),
        f"[bold]{_time(total)}[/]",
    )
    out.print(t)
    tables = Table(title="tables written (uncompressed)", title_justify="left")
    for col in ("stage", "table", "size"):
        tables.add_column(col, justify="right" if col == "size" else "left")
    for s in shown:
        for name, size in s.disk.items():
            tables.add_row(s.stage, name, _bytes(size))
    out.print(tables)
    out.print("[bold]What decides the cost[/]")
    for s in shown:
        for knob in s.knobs:
            out.print(f"  {s.stage}: {knob}", highlight=False)
        if s.llm_requests:
            out.print(
                f"  {s.stage}: {s.llm_requests:,.0f} LLM requests, ~{_si(s.llm_tokens)} tokens",
                highlight=False,
            )
    if "attribute" in wanted:
        for what, alt in plan.alternatives.items():
            out.print(
                f"  {what}: {_time(alt['seconds'])}, {_flops(alt['flops'])}, attributions "
                f"{_bytes(alt['attributions_bytes'])}",
                highlight=False,
            )
    out.print("[bold]Assumptions[/]")
    for a in plan.assumptions:
        out.print(f"  {a}", highlight=False)


def _dtype_bytes(dtype: str) -> int:
    return 2 if dtype in ("bfloat16", "float16") else 4


def plan_for_run(cfg: Any, until: str | None, as_json: bool = False) -> None:
    """``run --plan``: the plan of the stages a run command would run; nothing is run or
    written."""
    from lookuplens.plan import plan_run
    from lookuplens.store import STAGES

    plan = plan_run(cfg)
    stages = STAGES if until is None else STAGES[: STAGES.index(until) + 1]
    print_plan(plan, stages, as_json)
    Console(stderr=True).print("--plan: nothing was run", highlight=False)
