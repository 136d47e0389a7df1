"""Train the bundled real-English model: a small GPT-2 on the Debian-packaged English
corpus of `lookuplens.zoo.english`, on CPU.

``lookuplens zoo train-english --out DIR`` runs it; the defaults of `EnglishConfig` are
the recipe of the shipped checkpoint (``bundled:english``). The folder gets the model,
its byte-level BPE tokenizer, ``recipe.json``, ``MODEL_CARD.md`` (held-out loss, the
a/an choice against the majority rate, copying of earlier words) and ``heldout.jsonl``,
the held-out documents of the public-domain sources, the corpus a run on the bundled
model scans by default. Interrupted training resumes from its last saved state.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from lookuplens.model.padding import pad_rows
from lookuplens.zoo.english import SOURCES, Document, documents
from lookuplens.zoo.fit import FitSettings, fit
from lookuplens.zoo.training import (
    gpt2_model,
    package_versions,
    partial_path,
    prepare_out_dir,
    publish_folder,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnglishConfig:
    """Everything that decides the English model. The defaults are the shipped recipe."""

    seed: int = 0
    """Seeds the initial weights and the batch order."""
    max_words: int = 160
    """Words per document (passages are cut at sentence ends where possible)."""
    vocab_size: int = 4096
    """Byte-level BPE vocabulary, trained on the training documents."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads per block."""
    d_model: int = 128
    """Residual stream width."""
    d_mlp: int = 512
    """MLP neurons per layer."""
    n_positions: int = 256
    """Context length (a 160-word passage is about 200 tokens)."""
    steps: int = 2_000
    """Optimizer steps."""
    batch_size: int = 32
    """Documents per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to `min_lr_ratio`)."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of `lr`."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.1
    """AdamW weight decay on weight matrices."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    num_threads: int = 2
    """Torch CPU threads."""
    log_every: int = 50
    """Steps between progress lines."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "d_mlp", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head")


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE with ``<|endoftext|>`` as every special token (tokens
    carry their leading space; BOS is prepended by callers, the project-wide rule): the
    byte-level tokenizer `lookuplens.model.tiny.build_tokenizer` trains."""
    from lookuplens.model.tiny import build_tokenizer

    return build_tokenizer(texts, vocab_size, kind="byte_level")  # type: ignore[no-any-return]


def encode(tokenizer: Any, docs: Sequence[Document], n_positions: int) -> list[list[int]]:
    bos = int(tokenizer.bos_token_id)
    if not docs:
        return []
    enc = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    return [[bos, *ids][:n_positions] for ids in enc]


@dataclass(frozen=True)
class EnglishEvaluation:
    """What the model card reports, measured on held-out documents."""

    loss: float
    """Mean cross-entropy per predicted token (nats)."""
    tokens: int
    article_correct: int
    """Positions followed by " a" or " an" where the model gives the right one more
    probability than the other."""
    article_total: int
    article_majority: float
    """Accuracy of always choosing the more frequent article."""
    article_auroc: float
    """How well logit(" an") - logit(" a") ranks the " an" places above the " a" ones
    (0.5: no knowledge of the coming word)."""
    n_an: int
    repeat_loss: float
    """Mean loss on word tokens that already occurred in the document."""
    first_loss: float
    """Mean loss on word tokens at their first occurrence in the document."""

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def _auroc(scored: Sequence[tuple[float, bool]]) -> float:
    """Probability that a positive outranks a negative (ties count half)."""
    from scipy.stats import rankdata

    if not scored or all(y for _, y in scored) or not any(y for _, y in scored):
        return float("nan")
    ranks = rankdata([s for s, _ in scored])
    pos = np.array([y for _, y in scored])
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def evaluate(
    model: GPT2LMHeadModel, tokenizer: Any, seqs: Sequence[Sequence[int]]
) -> EnglishEvaluation:
    """Held-out loss, the a/an choice and copying (see `EnglishEvaluation`)."""
    a = int(tokenizer.convert_tokens_to_ids("\u0120a"))
    an = int(tokenizer.convert_tokens_to_ids("\u0120an"))
    word = np.zeros(len(tokenizer), dtype=bool)
    for piece, i in tokenizer.get_vocab().items():
        word[i] = piece.startswith("\u0120") and piece[1:].isalpha() and len(piece) > 3
    bos = int(tokenizer.bos_token_id)
    total, n = 0.0, 0
    art_ok = art_n = n_an = 0
    margins: list[tuple[float, bool]] = []
    rep: list[float] = []
    first: list[float] = []
    model.eval()
    with torch.no_grad():
        for s in range(0, len(seqs), 32):
            batch = [list(x) for x in seqs[s : s + 32]]
            ids, mask = pad_rows(batch, bos, torch.bool)
            logits = model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1].float()
            ce = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            m = mask[:, 1:]
            total += float((ce * m).sum())
            n += int(m.sum())
            for r, seq in enumerate(batch):
                seen: set[int] = set()
                for t in range(1, len(seq)):
                    tok = seq[t]
                    if tok in (a, an):
                        art_n += 1
                        n_an += tok == an
                        other = an if tok == a else a
                        art_ok += bool(logits[r, t - 1, tok] > logits[r, t - 1, other])
                        margin = float(logits[r, t - 1, an] - logits[r, t - 1, a])
                        margins.append((margin, tok == an))
                    if word[tok]:
                        (rep if tok in seen else first).append(float(ce[r, t - 1]))
                        seen.add(tok)
    return EnglishEvaluation(
        loss=total / max(n, 1),
        tokens=n,
        article_correct=art_ok,
        article_total=art_n,
        article_majority=max(n_an, art_n - n_an) / max(art_n, 1),
        article_auroc=_auroc(margins),
        n_an=n_an,
        repeat_loss=float(np.mean(rep)) if rep else float("nan"),
        first_loss=float(np.mean(first)) if first else float("nan"),
    )


def _card(recipe: dict[str, Any], ev: EnglishEvaluation) -> str:
    cfg = recipe["config"]
    corpus = recipe["corpus"]
    rows = "\n".join(
        f"| `{s['package']}` | {s['name']} | {s['licence']} | {s['train_docs']} | "
        f"{s['heldout_docs']} | {'yes' if s['shipped'] else 'no'} |"
        for s in corpus["sources"]
    )
    acc = ev.article_correct / max(ev.article_total, 1)
    return f"""# bundled:english

A small GPT-2 trained by lookuplens on real English prose from Debian's text packages,
the real-text test bed of the pipeline (`lookuplens run --model bundled:english`). It is
a tiny model of a narrow corpus (mostly the World English Bible), not a general language
model.

## Data

| Debian package | source | licence | training docs | held-out docs | held-out shipped |
| --- | --- | --- | --- | --- | --- |
{rows}

Documents are passages of at most {cfg["max_words"]} words; one in ten of each source is
held out by a hash of its text. `heldout.jsonl` beside this card holds the held-out
documents of the public-domain sources ({corpus["shipped_heldout_docs"]} documents); a run
on this model scans it unless `--corpus` says otherwise. Rebuild with
`lookuplens zoo train-english --out DIR` (needs the packages above).

## Recipe

- GPT-2 architecture: {cfg["n_layer"]} layers, {cfg["n_head"]} heads, d_model
  {cfg["d_model"]}, {cfg["d_mlp"]} MLP neurons per layer, context {cfg["n_positions"]},
  byte-level BPE of {corpus["vocab"]} tokens trained on the training documents;
  {recipe["parameters"]:,} parameters.
- AdamW, lr {cfg["lr"]} (warm-up {cfg["warmup_steps"]} steps, cosine to
  {cfg["min_lr_ratio"]}x), weight decay {cfg["weight_decay"]}, grad clip {cfg["grad_clip"]};
  {cfg["steps"]} steps of {cfg["batch_size"]} documents ({recipe["train_tokens_seen"]:,}
  tokens seen, {corpus["train_tokens"]:,} training tokens), seed {cfg["seed"]}.
- Training time: {recipe["training_seconds"]} s on {recipe["torch_threads"]} CPU threads;
  final training loss {recipe["final_train_loss"]:.3f}.

## Measured on held-out documents ({ev.tokens:,} tokens, all sources)

- Loss {ev.loss:.3f} nats per token (perplexity {math.exp(ev.loss):.1f}).
- Articles: where the next token is " a" or " an" ({ev.article_total} places, {ev.n_an}
  of them " an"), the model gives the right one more probability than the other in
  {acc:.1%}; always choosing the more frequent one is right in {ev.article_majority:.1%}.
  The margin logit(" an") - logit(" a") ranks the " an" places above the " a" ones with
  AUROC {ev.article_auroc:.3f} (0.5 would be no knowledge of the coming word).
- Copying: a word token that already occurred in the passage costs {ev.repeat_loss:.2f}
  nats, at its first occurrence {ev.first_loss:.2f} (a look-up of the earlier word).
"""


def refresh_card(folder: Path) -> EnglishEvaluation:
    """Measure a trained checkpoint again on the held-out documents and rewrite its
    ``recipe.json`` evaluation and ``MODEL_CARD.md`` (the weights are not touched)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    recipe = json.loads((folder / "recipe.json").read_text())
    cfg = EnglishConfig(**recipe["config"])
    model = GPT2LMHeadModel.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    held = [d for d in documents(cfg.max_words) if d.split == "heldout"]
    ev = evaluate(model, tokenizer, encode(tokenizer, held, cfg.n_positions))
    recipe["evaluation"] = ev.as_json()
    (folder / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    (folder / "MODEL_CARD.md").write_text(_card(recipe, ev))
    return ev


def train_english(
    cfg: EnglishConfig, out_dir: Path, overwrite: bool = False, save_every: int = 250
) -> Path:
    """Read the corpus, train tokenizer and model, measure them, and write `out_dir`
    atomically; resumable from ``.NAME.partial/`` (same config) every `save_every` steps."""
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, overwrite)
    torch.set_num_threads(cfg.num_threads)
    t0 = time.perf_counter()
    docs = documents(cfg.max_words)
    train_docs = [d for d in docs if d.split == "train"]
    held = [d for d in docs if d.split == "heldout"]
    tokenizer = train_tokenizer([d.text for d in train_docs], cfg.vocab_size)
    seqs = encode(tokenizer, train_docs, cfg.n_positions)
    held_seqs = encode(tokenizer, held, cfg.n_positions)
    n_tokens = sum(len(s) for s in seqs)
    logger.info(
        "corpus: %d training documents, %d tokens, %d held out, vocab %d (%.1fs)",
        *(len(train_docs), n_tokens, len(held), len(tokenizer), time.perf_counter() - t0),
    )
    torch.manual_seed(cfg.seed)
    bos = int(tokenizer.bos_token_id)
    model = gpt2_model(
        len(tokenizer), bos, n_positions=cfg.n_positions, d_model=cfg.d_model,
        n_layer=cfg.n_layer, n_head=cfg.n_head, d_mlp=cfg.d_mlp,
    )  # fmt: skip
    n_params = sum(p.numel() for p in model.parameters())
    partial = partial_path(out_dir)
    settings = FitSettings(
        steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, min_lr_ratio=cfg.min_lr_ratio,
        warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip, seed=cfg.seed, log_every=cfg.log_every,
    )  # fmt: skip
    result = fit(model, seqs, bos, settings, partial, asdict(cfg), save_every=save_every)
    seconds, seen = result.seconds, result.seen_tokens
    model.eval()
    ev = evaluate(model, tokenizer, held_seqs)
    logger.info("held-out: %s", ev.as_json())
    shipped = {s.name for s in SOURCES if s.shipped}
    recipe = {
        "config": asdict(cfg),
        "corpus": {
            "sources": [
                {
                    "name": s.name,
                    "package": s.package,
                    "licence": s.licence,
                    "shipped": s.shipped,
                    "train_docs": sum(d.source == s.name for d in train_docs),
                    "heldout_docs": sum(d.source == s.name for d in held),
                }
                for s in SOURCES
            ],  # fmt: skip
            "train_tokens": n_tokens,
            "vocab": len(tokenizer),
            "shipped_heldout_docs": sum(d.source in shipped for d in held),
        },
        "parameters": n_params,
        "train_tokens_seen": seen,
        "training_seconds": round(seconds, 1),
        "final_train_loss": result.final_loss,
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
        "evaluation": ev.as_json(),
    }

    def write_more(tmp: Path) -> None:
        (tmp / "MODEL_CARD.md").write_text(_card(recipe, ev))
        with open(tmp / "heldout.jsonl", "w", encoding="utf-8") as f:
            for d in held:
                if d.source in shipped:
                    f.write(json.dumps({"text": d.text, "source": d.source}) + "\n")

    publish_folder(out_dir, partial, model, tokenizer, recipe, write_more)
    logger.info("saved %s (%.0fs training)", out_dir, seconds)
    return out_dir
