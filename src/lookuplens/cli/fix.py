"""``lookuplens fix``: from a finding to an edited model, ranked by effect, side effects
measured."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from lookuplens.cli.app import err_console, state
from lookuplens.cli.params import DeviceOpt, DtypeOpt, ModelOpt
from lookuplens.errors import UserError


def fix_cmd(
    target: Annotated[str, typer.Option(help='The token to act on, as typed (" an", "▁an").')],
    prompts: Annotated[
        str,
        typer.Option(
            help="Prompts, one per line (or JSONL with a 'prompt' field); the target is "
            "measured at each one's last position."
        ),
    ],
    out: Annotated[str, typer.Option(help="New folder for fix.json, model/ and report.html.")],
    model: ModelOpt = "",
    contrast: Annotated[
        str, typer.Option(help="Measure the logit difference against this token instead.")
    ] = "",
    goal: Annotated[
        str, typer.Option(help="decrease (stop the prediction) or increase (steer towards it).")
    ] = "decrease",
    controls: Annotated[
        str,
        typer.Option(
            help='JSONL of {"prompt": ..., "expected": ...} whose answers must not change.'
        ),
    ] = "",
    corpus: Annotated[
        str,
        typer.Option(
            help="Held-out text for side effects (default: the run's corpus, the bundled "
            "model's held-out text, else the storyworld)."
        ),
    ] = "",
    run: Annotated[str, typer.Option(help="A run directory whose findings add candidates.")] = "",
    check_prompts: Annotated[
        str,
        typer.Option(help="Held-out prompts of the same look-up, measured before and after only."),
    ] = "",
    max_kl: Annotated[
        float, typer.Option(help="Side-effect budget: mean KL per held-out token, nats.")
    ] = 0.01,
    require: Annotated[
        float,
        typer.Option(
            help="What a fix must reach: the share of p(target) removed (decrease), or of "
            "prompts where the target is top / the contrast wins (see the docs)."
        ),
    ] = 0.9,
    amplify: Annotated[float, typer.Option(help="Scale of the edits when increasing.")] = 3.0,
    max_control_drop: Annotated[
        float, typer.Option(help="How much the controls' accuracy may fall (0: not at all).")
    ] = 0.0,
    max_steps: Annotated[
        int, typer.Option(help="The most candidates a greedy combination joins.")
    ] = 4,
    kinds: Annotated[
        str,
        typer.Option(help="Edit kinds to propose, comma-separated: path,neuron,head,logit."),
    ] = "path,neuron,head,logit",
    side_tokens: Annotated[int, typer.Option(help="Held-out tokens for side effects.")] = 8192,
    naive: Annotated[
        bool, typer.Option(help="Compare with zeroing each involved head or neuron.")
    ] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out folder.")] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
) -> None:
    """Turn a look-up into a weight edit: candidates measured and ranked, the best exported."""
    from lookuplens.fix.run import FixInputs, run_fix
    from lookuplens.fix.search import FixSettings

    try:
        settings = FixSettings(
            goal=goal,  # type: ignore[arg-type]
            max_kl=max_kl,
            require=require,
            amplify=amplify,
            max_control_drop=max_control_drop,
            max_steps=max_steps,
            kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()),
        )
    except ValueError as e:
        raise UserError(f"{e}") from None
    if side_tokens < 16:
        raise UserError("--side-tokens must be at least 16")
    inputs = FixInputs(
        model=model or "bundled:storyworld",
        target=target,
        prompts_file=prompts,
        out=out,
        contrast=contrast or None,
        controls_file=controls or None,
        corpus=corpus or None,
        run_dir=run or None,
        check_prompts_file=check_prompts or None,
        overwrite=overwrite,
        side_tokens=side_tokens,
        device=device,
        dtype=dtype,
        naive=naive,
    )

    def progress(msg: str) -> None:
        if not state["quiet"]:
            err_console.print(f"  {msg}", highlight=False, soft_wrap=True)

    result = run_fix(inputs, settings, progress=progress)
    _print_summary(result, out)


def _print_summary(r: dict, out: str) -> None:  # type: ignore[type-arg]
    c = Console()
    t = r["target"]
    before, after, chosen = r["before"]["target"], r["after"], r["chosen"]
    c.print(f"fix: {chosen['name']}  ({t['goal']} p({t['token']!r}))", highlight=False)
    c.print(
        f"  p(target) mean {before['mean_prob']:.4f} -> {after['target']['mean_prob']:.4f}; "
        f"requirement ({t['requirement']}): {after['achieved']:.2f} "
        f"{'met' if after['meets_requirement'] else 'NOT met'}",
        highlight=False,
    )
    se = after["side_effects"]
    c.print(
        f"  side effects: mean KL {se['kl']:.4f} nats/token (budget {t['max_kl']:g}), "
        f"loss {se['loss_change']:+.4f}"
        + (
            f"; controls {r['before']['controls_accuracy']:.2f} -> {after['controls_accuracy']:.2f}"
            if after["controls_accuracy"] is not None
            else ""
        ),
        highlight=False,
    )
    for n in r["naive"]:
        name = n["edit"]["name"]
        if n["kl_ratio"] is None:
            c.print(
                f"  naive {name}: no effect in the goal's direction to compare", highlight=False
            )
            continue
        ratio = n["kl_ratio"]
        how = f"{ratio:.1f}x" if ratio >= 1 else f"1/{1 / max(ratio, 1e-12):.1f} of"
        c.print(
            f"  naive {name}: {how} the fix's side effect at equal effect "
            f"({n['at_effect']:+.3f}; KL {n['naive_matched']['side_effects']['kl']:.4f} vs "
            f"{n['fix_matched']['side_effects']['kl']:.4f})",
            highlight=False,
        )
    if "check_prompts" in r:
        cp = r["check_prompts"]
        c.print(
            f"  held-out check prompts: mean p(target) {cp['before']['mean_prob']:.4f} -> "
            f"{cp['after']['mean_prob']:.4f} ({cp['prob_removed']:.1%} removed)",
            highlight=False,
        )
    c.print(
        f"  {len(r['candidates'])} candidates ranked; wrote {out}/fix.json, model/, report.html"
    )
