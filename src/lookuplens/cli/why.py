"""``lookuplens why``: which neurons pushed a prediction, and which heads switched them on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lookuplens.cli.params import DeviceOpt, DtypeOpt, ModelOpt, default_model
from lookuplens.cli.why_tree import print_why
from lookuplens.errors import UserError


def why_cmd(
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
        from lookuplens.why import text_token_ids
        from lookuplens.why_html import render_why

        page = render_why(result, text_token_ids(lm, prompt))
        atomic_write_bytes(Path(html), page)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    print_why(result)
    if html:
        Console().print(f"html: {html}", highlight=False)
