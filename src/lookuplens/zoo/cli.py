"""``lookuplens zoo``: train the storyworld demo model and refresh its model card."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from lookuplens.errors import LookuplensError

app = typer.Typer(
    help=(
        "The storyworld: a synthetic corpus with planted context look-ups "
        "(a/an articles, place -> item topics, role -> name recall) and the small GPT-2 "
        "trained on it, the ground truth for the rest of lookuplens."
    ),
    no_args_is_help=True,
    add_completion=False,
)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


@app.command("train")
def train_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="New folder for the checkpoint.")],
    seed: Annotated[int, typer.Option(help="Seed of corpus, weights and batch order.")] = 0,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 3_500,
    n_docs: Annotated[int, typer.Option(help="Training stories to generate.")] = 40_000,
    batch_size: Annotated[int, typer.Option(help="Stories per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 2e-3,
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps.")] = 100,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay on matrices.")] = 0.1,
    layers: Annotated[int, typer.Option(help="Transformer blocks.")] = 4,
    heads: Annotated[int, typer.Option(help="Attention heads per block.")] = 4,
    d_model: Annotated[int, typer.Option(help="Residual width.")] = 128,
    d_mlp: Annotated[int, typer.Option(help="MLP neurons per layer.")] = 512,
    n_positions: Annotated[int, typer.Option(help="Context length.")] = 256,
    dropout: Annotated[float, typer.Option(help="Embedding and residual dropout.")] = 0.0,
    attn_dropout: Annotated[float, typer.Option(help="Attention-probability dropout.")] = 0.0,
    eval_docs: Annotated[int, typer.Option(help="Held-out stories for the model card.")] = 2_000,
    mechanism_docs: Annotated[
        int, typer.Option(help="Held-out stories used to find the ' an' neuron.")
    ] = 500,
    threads: Annotated[int, typer.Option(help="Torch CPU threads.")] = 2,
    planted_weight: Annotated[
        float, typer.Option(help="Loss weight of planted targets (1.0: plain LM loss).")
    ] = 20.0,
    act_l1: Annotated[
        float, typer.Option(help="L1 penalty on MLP activations (sparse, cleaner neurons; 0: off).")
    ] = 3e-4,
    echo_share: Annotated[
        float,
        typer.Option(
            help="Echo sequences (a random word run said 2-3 times, aimed at induction "
            "heads) as a share of --n-docs (0: none)."
        ),
    ] = 0.0,
    log_every: Annotated[int, typer.Option(help="Steps between progress lines.")] = 50,
    probe_every: Annotated[
        int, typer.Option(help="Steps between planted-accuracy probes (0: never).")
    ] = 500,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace --out if it is not empty.")
    ] = False,
    save_every: Annotated[
        int, typer.Option(help="Steps between saved training states (0: never).")
    ] = 250,
    restart: Annotated[
        bool,
        typer.Option("--restart", help="Discard an interrupted training instead of resuming it."),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Train tokenizer and model from scratch on CPU and save a checkpoint in --out.

    The defaults are the recipe of the shipped checkpoint: 40,000 generated stories, a
    byte-level BPE (about 1,100 tokens), GPT-2 with 4 layers, 4 heads, d_model 128 and
    512 MLP neurons per layer, 3,500 steps of 32 stories with AdamW (lr 2e-3, 100
    warm-up steps, cosine decay to 10%, weight decay 0.1), no dropout, the planted
    targets weighted 20x in the loss, an L1 penalty of 3e-4 on the MLP activations
    (sparse neurons: the " an" neuron's top firings are then article look-ups), 2
    threads: the shipped checkpoint took 934 s of training on 2 free CPU cores.
    The folder receives config.json, model.safetensors, tokenizer files, recipe.json and
    MODEL_CARD.md (held-out accuracy of each planted look-up, and the " an" neuron with
    its look-up head). An existing non-empty --out is only replaced with --overwrite. An
    interrupted training resumes from its last saved state when run again with the same
    options (the state lives in .NAME.partial next to --out).
    """
    _setup_logging(verbose)
    from lookuplens.zoo.storyworld_train import TrainConfig, train

    try:
        cfg = TrainConfig(
            seed=seed,
            steps=steps,
            n_train_docs=n_docs,
            batch_size=batch_size,
            lr=lr,
            warmup_steps=warmup_steps,
            weight_decay=weight_decay,
            n_layer=layers,
            n_head=heads,
            d_model=d_model,
            d_mlp=d_mlp,
            n_positions=n_positions,
            dropout=dropout,
            attn_dropout=attn_dropout,
            n_eval_docs=eval_docs,
            n_mechanism_docs=mechanism_docs,
            num_threads=threads,
            log_every=log_every,
            planted_weight=planted_weight,
            act_l1=act_l1,
            echo_share=echo_share,
            probe_every=probe_every,
        )
        result = train(cfg, out, overwrite=overwrite, save_every=save_every, restart=restart)
    except (LookuplensError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    ev = result.evaluation
    summary = {k: f"{ev.rate(k):.3f}" for k in ev.accuracy} if ev else {}
    typer.echo(f"saved {result.out_dir} after {result.seconds:.0f}s training; held-out {summary}")


@app.command("train-english")
def train_english_command(
    out: Annotated[Path, typer.Option(help="Folder to write the checkpoint to.")],
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the weights and batch order.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False,
    verbose: Annotated[bool, typer.Option(help="Debug logging.")] = False,
) -> None:
    """Train the bundled real-English model on Debian's English text packages (a rerun
    after an interruption continues from the last saved step)."""
    from lookuplens.zoo.english_train import EnglishConfig, train_english

    _setup_logging(verbose)
    try:
        cfg = EnglishConfig(steps=steps, seed=seed)
        path = train_english(cfg, out, overwrite=overwrite)
    except (LookuplensError, ValueError) as e:
        raise _fail(str(e)) from None
    typer.echo(f"saved {path}")


@app.command("train-tripworld")
def train_tripworld_command(
    out: Annotated[Path, typer.Option(help="Folder to write the checkpoint to.")],
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 6000,
    train_docs: Annotated[int, typer.Option(help="Trips generated for training.")] = 30000,
    seed: Annotated[int, typer.Option(help="Seed of the trips, weights and batch order.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False,
    verbose: Annotated[bool, typer.Option(help="Debug logging.")] = False,
) -> None:
    """Train the bundled tripworld model (the second planted world: word-level tokenizer,
    a far-back cue that modulates a trigger, distractors, near-misses); a rerun after an
    interruption continues from the last saved step."""
    from lookuplens.zoo.tripworld_train import TripConfig, train_tripworld

    _setup_logging(verbose)
    try:
        cfg = TripConfig(steps=steps, seed=seed, n_train_docs=train_docs)
        path = train_tripworld(cfg, out, overwrite=overwrite)
    except (LookuplensError, ValueError) as e:
        raise _fail(str(e)) from None
    typer.echo(f"saved {path}")


@app.command("prompts")
def prompts_command(
    world: Annotated[str, typer.Option(help="storyworld or tripworld.")] = "storyworld",
    target: Annotated[str, typer.Option(help='Only this planted target, e.g. " an".')] = "",
    kind: Annotated[
        str, typer.Option(help="Only this kind (storyworld: article, topic, name).")
    ] = "",
    cue: Annotated[str, typer.Option(help="Only look-ups decided by this cue word.")] = "",
    exclude_target: Annotated[str, typer.Option(help="Leave out this planted target.")] = "",
    n: Annotated[int, typer.Option(help="Prompts to write.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the held-out documents.")] = 11,
) -> None:
    """Print held-out prompts ending right before a planted target, as JSONL
    (prompt, expected, kind, cue, doc_id): inputs for `lookuplens fix`."""
    from lookuplens.zoo.prompts import planted_prompts

    try:
        rows = planted_prompts(
            world,
            n,
            seed,
            target=target or None,
            kind=kind or None,
            cue=cue or None,
            exclude_target=exclude_target or None,
        )
    except LookuplensError as exc:
        raise _fail(str(exc)) from exc
    for r in rows:
        typer.echo(json.dumps(r))


@app.command("card")
def card_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder (from `zoo train`).")],
    eval_docs: Annotated[
        int | None, typer.Option(help="Held-out stories to measure (default: the recipe's).")
    ] = None,
    mechanism_docs: Annotated[
        int | None, typer.Option(help="Stories used to find the ' an' neuron.")
    ] = None,
    threads: Annotated[int, typer.Option(help="Torch CPU threads.")] = 2,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Re-measure a checkpoint on held-out stories and rewrite its MODEL_CARD.md.

    Updates the evaluation and mechanism entries of recipe.json too.
    """
    _setup_logging(verbose)
    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

    from lookuplens.zoo.card import read_recipe, write_model_card
    from lookuplens.zoo.storyworld_train import TrainConfig, measure

    if not (checkpoint / "config.json").is_file():
        raise _fail(f"{checkpoint} has no config.json; pass a folder written by `zoo train`")
    recipe = read_recipe(checkpoint)
    raw = recipe.get("config")
    try:
        cfg = TrainConfig.from_json(raw) if isinstance(raw, dict) else TrainConfig()
        changes: dict[str, int] = {"num_threads": threads}
        if eval_docs is not None:
            changes["n_eval_docs"] = eval_docs
        if mechanism_docs is not None:
            changes["n_mechanism_docs"] = mechanism_docs
        cfg = dataclasses.replace(cfg, **changes)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    torch.set_num_threads(cfg.num_threads)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    if not isinstance(model, GPT2LMHeadModel):
        raise _fail(f"{checkpoint} holds a {type(model).__name__}; `zoo card` needs a GPT-2")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    evaluation, neurons, found_heads = measure(model, tokenizer, cfg)
    if not recipe:
        recipe = {"config": asdict(cfg), "seed": cfg.seed}
    recipe["evaluation"] = evaluation.as_json() if evaluation else None
    recipe["mechanism"] = {
        "neurons": [n.as_json() for n in neurons[:5]],
        "heads": [h.as_json() for h in found_heads if h.kind == "article"][:5],
    }
    (checkpoint / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    path = write_model_card(checkpoint, recipe, evaluation, neurons, found_heads)
    typer.echo(f"wrote {path}")


def train_main() -> None:
    """Entry point of ``python -m lookuplens.zoo.train``: the ``train`` command alone."""
    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperGroup)
    sub = command.commands["train"]
    sub.main(prog_name="python -m lookuplens.zoo.train")
