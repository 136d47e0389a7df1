"""Train the bundled tripworld model (`lookuplens.zoo.tripworld`): a small GPT-2 with a
word-level tokenizer, on CPU.

``lookuplens zoo train-tripworld --out DIR`` runs it; the defaults of `TripConfig` are the
recipe of the shipped checkpoint (``bundled:tripworld``). The folder gets the model, its
tokenizer, ``recipe.json``, ``MODEL_CARD.md`` (what the model learned, measured on
held-out trips) and ``heldout.jsonl``, the held-out trips a run on the bundled model
scans by default. Interrupted training resumes from its last saved state.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import GPT2LMHeadModel

from lookuplens.errors import UserError
from lookuplens.zoo.fit import FitSettings, fit
from lookuplens.zoo.training import (
    gpt2_model,
    package_versions,
    partial_path,
    prepare_out_dir,
    publish_folder,
)
from lookuplens.zoo.tripworld import (
    CUE_P,
    ITEMS,
    Document,
    check_tokenizer,
    encode_document,
    generate_corpus,
    item_for,
    replacement,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TripConfig:
    """Everything that decides the tripworld model. The defaults are the shipped recipe."""

    seed: int = 0
    """Seeds the corpus, the initial weights and the batch order."""
    n_train_docs: int = 30_000
    """Trips generated for training (split "train"); the tokenizer is built from them."""
    n_eval_docs: int = 1_000
    """Held-out trips measured for the model card and shipped as ``heldout.jsonl``."""
    n_layer: int = 3
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads per block."""
    d_model: int = 128
    """Residual stream width."""
    d_mlp: int = 128
    """MLP neurons per layer. 128 rather than 512: with 512 the heads wrote most of the
    season's item directly and the item neurons that the congruence selects were not
    decided by the season (1 of 4 was); with 128 the selected item neurons that fire are
    (measured in the model card and the ground-truth comparison)."""
    n_positions: int = 128
    """Context length (a trip is at most about 90 tokens)."""
    attn_dropout: float = 0.1
    """Dropout on attention probabilities: no single head can be relied on, so several
    learn to read the cue."""
    steps: int = 6_000
    """Optimizer steps (the conjunction forms late: at 3,000 steps the item was still at
    chance)."""
    batch_size: int = 32
    """Trips per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of `lr`."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.1
    """AdamW weight decay on weight matrices."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    planted_weight: float = 10.0
    """Loss weight of every packed item (annotated or not): a curriculum that makes the
    look-up form within the CPU budget."""
    act_l1: float = 3e-4
    """L1 penalty on MLP activations, for sparse next-token neurons."""
    num_threads: int = 2
    """Torch CPU threads."""
    log_every: int = 50
    """Steps between progress lines."""

    def __post_init__(self) -> None:
        for name in ("n_train_docs", "n_layer", "n_head", "d_model", "d_mlp", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head")
        if not 0.0 <= self.attn_dropout < 1.0:
            raise ValueError("attn_dropout must be in [0, 1)")


def build_tokenizer(docs: list[Document]) -> Any:
    """The word-level tokenizer: every word and punctuation mark of the trips one token."""
    from lookuplens.model.tiny import build_tokenizer as build

    tok = build([d.text for d in docs], 0, kind="word_level")
    check_tokenizer(tok)
    return tok


def _item_position(doc: Document, tokenizer: Any) -> int:
    """The position predicting the packed item (index of "her"/"his" before it)."""
    enc = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True)
    for i, (s, _e) in enumerate(enc["offset_mapping"]):
        if s == doc.item_char + 1:
            return i  # BOS shifts the item to i + 1; it is predicted at i
    raise UserError(f"trip {doc.doc_id}: the packed item is not a token")


# --------------------------------------------------------------------------------------
# Measuring the model (the model card)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TripEvaluation:
    """What the model card reports, measured on held-out trips."""

    loss: float
    """Mean cross-entropy per predicted token (nats)."""
    cue_accuracy: float
    """Trips naming a season: share where the item that the season and the trigger decide
    is the most likely of the four after the trigger."""
    cue_accuracy_with_distractor: float
    """... among those that also name a distracting season later."""
    follows_distractor: float
    """Trips with a distractor: share where the distractor's item is the most likely."""
    p_item_cue: float
    """Mean p(season's item) after the trigger when a season is named (the generator's
    rate: `CUE_P` + (1 - `CUE_P`) / 4)."""
    p_item_no_cue: float
    """Mean p(each item) after the trigger when no season is named (generator: 0.25)."""
    p_items_near_miss: float
    """Mean total p(items) after "sold her" (generator: 0)."""
    cue_decides: float
    """Share of annotated items whose p halves or more when the season is swapped."""
    neurons: list[dict[str, object]]
    """Per item, the neuron most congruent with it (beyond the items' mean) and the share
    of its activation at the trigger that the matching season adds (swapping the season
    removes it)."""
    heads: list[dict[str, object]]
    """Heads whose output, patched from the season-swapped run, removes at least a fifth
    of the drop in log p(item) that swapping the season causes."""
    n_trips: int

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def _forward(model: Any, seqs: list[list[int]], pad: int) -> torch.Tensor:
    from lookuplens.model.padding import pad_rows

    ids, mask = pad_rows(seqs, pad, torch.bool)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask.long()).logits.float()


def evaluate(model: Any, tokenizer: Any, docs: list[Document]) -> TripEvaluation:
    """Measure loss, the look-up, distractors, near-misses, neurons and heads."""
    import torch.nn.functional as F

    bos = int(tokenizer.bos_token_id)
    item_ids = {it: int(tokenizer.convert_tokens_to_ids(it)) for it in ITEMS}
    seqs = [encode_document(d, tokenizer) for d in docs]
    losses: list[float] = []
    p_at: list[np.ndarray] = []
    near: list[float] = []
    sold = int(tokenizer.convert_tokens_to_ids("sold"))
    for s in range(0, len(seqs), 64):
        part = seqs[s : s + 64]
        logits = _forward(model, part, bos)
        for r, seq in enumerate(part):
            n = len(seq)
            lp = F.log_softmax(logits[r, : n - 1], -1)
            tgt = torch.tensor(seq[1:])
            losses += (-lp[torch.arange(n - 1), tgt]).tolist()
            doc = docs[s + r]
            t = _item_position(doc, tokenizer)
            p_at.append(lp[t].exp()[[item_ids[i] for i in ITEMS]].numpy())
            for j in range(n - 2):
                if seq[j] == sold:
                    near.append(float(lp[j + 1].exp()[list(item_ids.values())].sum()))
    cued = [k for k, d in enumerate(docs) if d.cue is not None]
    with_d = [k for k in cued if docs[k].distractors]
    best = [ITEMS[int(np.argmax(p))] for p in p_at]
    idx = {it: i for i, it in enumerate(ITEMS)}

    def season(k: int) -> str:
        return item_for(str(docs[k].cue), docs[k].trigger)

    def rate(ks: list[int], f: Any) -> float:
        return float(np.mean([f(k) for k in ks])) if ks else float("nan")

    neurons, heads, decides = _mechanism(model, tokenizer, docs, item_ids)
    return TripEvaluation(
        loss=float(np.mean(losses)),
        cue_accuracy=rate(cued, lambda k: best[k] == season(k)),
        cue_accuracy_with_distractor=rate(with_d, lambda k: best[k] == season(k)),
        follows_distractor=rate(
            with_d, lambda k: best[k] == item_for(docs[k].distractors[0], docs[k].trigger)
        ),
        p_item_cue=rate(cued, lambda k: p_at[k][idx[season(k)]]),
        p_item_no_cue=rate(
            [k for k, d in enumerate(docs) if d.cue is None], lambda k: float(p_at[k].mean())
        ),  # fmt: skip
        p_items_near_miss=float(np.mean(near)) if near else float("nan"),
        cue_decides=decides,
        neurons=neurons,
        heads=heads,
        n_trips=len(docs),
    )


def _swapped_pairs(
    tokenizer: Any, docs: list[Document]
) -> list[tuple[list[int], list[int], int, str]]:
    """(prompt, season-swapped prompt, item id, item) for each annotated trip."""
    rng = random.Random(7)
    out = []
    for d in docs:
        if not d.annotations:
            continue
        ann = d.annotations[0]
        word = replacement(ann.cue_word, d.text, rng)
        if word is None:
            continue
        seq = encode_document(d, tokenizer)
        t = _item_position(d, tokenizer)
        cue_id = int(tokenizer.convert_tokens_to_ids(ann.cue_word))
        at = [i for i in range(t) if seq[i] == cue_id]
        swapped = list(seq[: t + 1])
        swapped[at[0]] = int(tokenizer.convert_tokens_to_ids(word))
        out.append((seq[: t + 1], swapped, int(tokenizer.convert_tokens_to_ids(d.item)), d.item))
    return out


def _mechanism(
    model: Any, tokenizer: Any, docs: list[Document], item_ids: dict[str, int]
) -> tuple[list[dict[str, object]], list[dict[str, object]], float]:
    """Neurons, cue-reading heads and how often the season decides, by swapping seasons."""
    from lookuplens.interventions import Row as _Row
    from lookuplens.interventions import forward as _forward
    from lookuplens.interventions import head_edit as _head_edit
    from lookuplens.model import from_hf, hook_name, pad_right

    lm = from_hf(model, tokenizer, "tripworld")
    pairs = _swapped_pairs(tokenizer, docs)
    if not pairs:
        return [], [], float("nan")
    w_u = lm.W_U.detach()  # [d_model, vocab]
    best: dict[str, tuple[float, int, int]] = {}
    all_items = list(item_ids.values())
    for item, tid in item_ids.items():
        # item-specific: congruence with this item's unembedding beyond the items' mean
        direction = w_u[:, tid] - w_u[:, all_items].mean(1)
        for layer in range(lm.n_layers):
            w_out = lm.W_out(layer).detach()  # [d_mlp, d_model]
            cong = (w_out @ direction) / w_out.norm(dim=-1).clamp_min(1e-9)
            n = int(cong.argmax())
            if float(cong[n]) > best.get(item, (-np.inf, 0, 0))[0]:
                best[item] = (float(cong[n]), layer, n)

    def run(seqs: list[list[int]], item: str | None, edit: Any = None) -> tuple[Any, Any]:
        _, layer, n = best[item or ITEMS[0]]
        rows = [
            _Row(i, layer, n, q, p[2]) for i, (q, p) in enumerate(zip(seqs, pairs, strict=True))
        ]
        return _forward(lm, rows, edit)

    clean = [p[0] for p in pairs]
    swapped = [p[1] for p in pairs]
    neurons: list[dict[str, object]] = []
    for item in ITEMS:
        _, a = run(clean, item)
        _, b = run(swapped, item)
        k = np.array([p[3] == item for p in pairs])
        ma, mb = float(a.numpy()[k].mean()), float(b.numpy()[k].mean())
        neurons.append({
            "item": item, "neuron": f"L{best[item][1]}N{best[item][2]}",
            "congruence": round(best[item][0], 3), "activation": ma,
            "activation_season_swapped": mb, "cue_share": (ma - mb) / ma if ma > 0 else None,
        })  # fmt: skip
    tids = torch.tensor([p[2] for p in pairs])
    rows_i = torch.arange(len(pairs))
    lp_clean, _ = run(clean, None)
    lp_swap, _ = run(swapped, None)
    drop = (lp_clean[rows_i, tids] - lp_swap[rows_i, tids]).double()
    decides = float((drop >= np.log(2)).double().mean())
    ids, mask = pad_right(lm, swapped)
    names = [hook_name(layer, "attn.hook_z") for layer in range(lm.n_layers)]
    _, donor = lm.run_with_cache(ids, names, attention_mask=mask)
    heads: list[dict[str, object]] = []
    for layer in range(lm.n_layers):
        for h in range(lm.n_heads):
            edit = _head_edit([(layer, h)] * len(pairs), {layer: donor[names[layer]]})
            lp_p, _ = run(clean, None, edit)
            moved = (lp_clean[rows_i, tids] - lp_p[rows_i, tids]).double()
            share = float(moved.mean() / drop.mean()) if float(drop.mean()) > 0 else 0.0
            if share >= 0.2:
                heads.append({"head": f"L{layer}H{h}", "share_of_cue_effect": round(share, 3)})
    return neurons, heads, decides


# --------------------------------------------------------------------------------------
# Training and the shipped folder
# --------------------------------------------------------------------------------------


def _card(recipe: dict[str, Any], ev: TripEvaluation) -> str:
    cfg = recipe["config"]
    expected = CUE_P + (1 - CUE_P) / len(ITEMS)
    neurons = "\n".join(
        f"| {n['item']} | {n['neuron']} | {n['congruence']} | {n['activation']:.3f} | "
        f"{n['activation_season_swapped']:.3f} | "
        + (f"{n['cue_share']:.0%}" if n["cue_share"] is not None else "n/a")
        + " |"
        for n in ev.neurons
    )
    heads = ", ".join(f"{h['head']} ({h['share_of_cue_effect']:.0%})" for h in ev.heads)
    return f"""# Tripworld model (bundled:tripworld)

A {cfg["n_layer"]}-layer GPT-2 ({recipe["parameters"]:,} parameters, d_model {cfg["d_model"]},
{cfg["n_head"]} heads, {cfg["d_mlp"]} MLP neurons per layer) trained by
`lookuplens zoo train-tripworld` on {recipe["corpus"]["train_docs"]:,} generated trips
({recipe["corpus"]["train_tokens"]:,} tokens) for {cfg["steps"]:,} steps in
{recipe["training_seconds"]:.0f} s on {recipe["torch_threads"]} CPU threads. Word-level
tokenizer ({recipe["corpus"]["vocab"]} words). The world and what it plants:
`lookuplens.zoo.tripworld`.

## Held-out trips ({ev.n_trips:,}, split "heldout")

- Loss {ev.loss:.3f} nats per token.
- The look-up: when the first sentence names a season, the item that it and the trigger
  decide is the most likely of the four after the trigger in {ev.cue_accuracy:.1%} of trips
  (chance 25%); mean p(season's item) {ev.p_item_cue:.3f} (the generator's rate
  {expected:.3f}); without a season each item gets {ev.p_item_no_cue:.3f} (generator 0.25).
- Swapping the season for one of another item at least halves p(item) in
  {ev.cue_decides:.1%} of annotated trips: the season decides the item.
- Distractors: with a later, non-deciding season in the text the season's item still wins
  in {ev.cue_accuracy_with_distractor:.1%}; the distractor's item wins in
  {ev.follows_distractor:.1%}.
- Near-misses: after "sold her" the four items get {ev.p_items_near_miss:.3f} in total
  (the generator never writes one there).

## The item neurons (most congruent with each item's unembedding beyond the four items' mean)

Activation at the trigger on annotated trips, and with the season swapped; the share is
what the season adds.

| item | neuron | congruence | activation | season swapped | season's share |
| --- | --- | --- | --- | --- | --- |
{neurons}

## Heads that carry the season

Heads whose output, patched in from the season-swapped run, removes at least a fifth of
the drop in log p(item) that swapping the season causes: {heads or "none"}.
"""


def refresh_card(folder: Path) -> TripEvaluation:
    """Measure a trained folder again and rewrite its card and recipe's evaluation."""
    from transformers import AutoTokenizer

    recipe = json.loads((folder / "recipe.json").read_text())
    cfg = TripConfig(**recipe["config"])
    model = GPT2LMHeadModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ev = evaluate(model, tokenizer, generate_corpus(cfg.n_eval_docs, cfg.seed, "heldout"))
    recipe["evaluation"] = ev.as_json()
    (folder / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    (folder / "MODEL_CARD.md").write_text(_card(recipe, ev))
    return ev


def train_tripworld(
    cfg: TripConfig, out_dir: Path, overwrite: bool = False, save_every: int = 250
) -> Path:
    """Generate the trips, build the tokenizer, train, measure, and write `out_dir`
    atomically; resumable from ``.NAME.partial/`` (same config) every `save_every` steps."""
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, overwrite)
    torch.set_num_threads(cfg.num_threads)
    t0 = time.perf_counter()
    docs = generate_corpus(cfg.n_train_docs, cfg.seed, "train")
    held = generate_corpus(cfg.n_eval_docs, cfg.seed, "heldout")
    tokenizer = build_tokenizer(docs)
    bos = int(tokenizer.bos_token_id)
    seqs = [encode_document(d, tokenizer)[: cfg.n_positions] for d in docs]
    planted = [[_item_position(d, tokenizer)] for d in docs]
    n_tokens = sum(len(s) for s in seqs)
    logger.info(
        "corpus: %d trips, %d tokens, vocab %d (%.1fs)",
        len(docs), n_tokens, len(tokenizer), time.perf_counter() - t0,
    )  # fmt: skip
    torch.manual_seed(cfg.seed)
    model = gpt2_model(
        len(tokenizer), bos, n_positions=cfg.n_positions, d_model=cfg.d_model,
        n_layer=cfg.n_layer, n_head=cfg.n_head, d_mlp=cfg.d_mlp, attn_dropout=cfg.attn_dropout,
    )  # fmt: skip
    n_params = sum(p.numel() for p in model.parameters())
    settings = FitSettings(
        steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, min_lr_ratio=cfg.min_lr_ratio,
        warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
        seed=cfg.seed, log_every=cfg.log_every, planted_weight=cfg.planted_weight,
        act_l1=cfg.act_l1,
    )  # fmt: skip
    partial = partial_path(out_dir)
    result = fit(model, seqs, bos, settings, partial, asdict(cfg), planted, save_every)
    ev = evaluate(model, tokenizer, held)
    logger.info("held-out: %s", json.dumps(ev.as_json()))
    recipe = {
        "config": asdict(cfg),
        "corpus": {
            "generator": "lookuplens.zoo.tripworld",
            "train_docs": len(docs),
            "train_tokens": n_tokens,
            "eval_docs": len(held),
            "vocab": len(tokenizer),
        },
        "parameters": n_params,
        "train_tokens_seen": result.seen_tokens,
        "training_seconds": round(result.seconds, 1),
        "final_train_loss": result.final_loss,
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
        "evaluation": ev.as_json(),
    }

    def write_more(tmp: Path) -> None:
        (tmp / "MODEL_CARD.md").write_text(_card(recipe, ev))
        with open(tmp / "heldout.jsonl", "w", encoding="utf-8") as f:
            for d in held:
                f.write(json.dumps({"text": d.text, "doc_id": d.doc_id}) + "\n")

    publish_folder(out_dir, partial, model, tokenizer, recipe, write_more)
    logger.info("saved %s (%.0fs training)", out_dir, result.seconds)
    return out_dir
