"""Train the storyworld tokenizer and a small GPT-2 from scratch on CPU.

The defaults of :class:`TrainConfig` are the recipe of the shipped checkpoint
(``lookuplens.zoo.default_model_path()``). Run it with ``lookuplens zoo train --out DIR``
or ``python -m lookuplens.zoo.train --out DIR``. The GPT-2, the batches and the output
folder come from `lookuplens.zoo.training`, shared with the other bundled models' trainers.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (  # type: ignore[attr-defined]
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    PreTrainedTokenizerBase,
)

from lookuplens.errors import UserError
from lookuplens.model.padding import pad_rows
from lookuplens.zoo.card import write_model_card
from lookuplens.zoo.evaluate import Evaluation, evaluate
from lookuplens.zoo.mechanism import (
    HeadFinding,
    NeuronFinding,
    find_mechanism,
    top_token_neurons,
)
from lookuplens.zoo.storyworld import (
    BOS_TOKEN,
    Document,
    check_tokenizer,
    endoftext_id,
    generate_corpus,
    single_token_words,
)
from lookuplens.zoo.training import (
    gpt2_model,
    length_batches,
    package_versions,
    partial_path,
    prepare_out_dir,
    publish_folder,
)

if TYPE_CHECKING:
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

logger = logging.getLogger(__name__)

CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained model. The defaults are the shipped recipe."""

    seed: int = 0
    """Seeds the corpus, the tokenizer's corpus, the initial weights and the batch order."""
    n_train_docs: int = 40_000
    """Stories generated for training (``split="train"``); the tokenizer is trained on them."""
    n_eval_docs: int = 2_000
    """Held-out stories (``split="heldout"``) measured for the model card."""
    n_mechanism_docs: int = 500
    """Held-out stories used to locate the " an" neuron and the look-up heads."""
    vocab_size: int = 2048
    """Upper bound on the BPE vocabulary; the storyworld needs about 1,100 tokens."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads per block."""
    d_model: int = 128
    """Residual stream width (GPT-2's ``n_embd``)."""
    d_mlp: int = 512
    """MLP hidden width (GPT-2's ``n_inner``): the number of neurons per layer."""
    n_positions: int = 256
    """Context length; stories are at most about 170 tokens."""
    dropout: float = 0.0
    """Dropout on embeddings and residual writes (``embd_pdrop``, ``resid_pdrop``)."""
    attn_dropout: float = 0.0
    """Dropout on attention probabilities (``attn_pdrop``)."""
    steps: int = 3_500
    """Optimizer steps."""
    batch_size: int = 32
    """Stories per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate (after warm-up; cosine decay afterwards)."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of ``lr``."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.1
    """AdamW weight decay on weight matrices (not on biases or LayerNorm)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.98
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    num_threads: int = 2
    """Torch CPU threads (the shipped checkpoint was trained with 1, two runs sharing 2 cores)."""
    planted_weight: float = 20.0
    """Loss weight of the planted targets, and of the recall articles that an adjective
    decided (so that p(" an") learns the adjective's share rather than saturating), 1.0
    meaning plain language modelling. Planted look-ups are about 2% of tokens and need
    attention to form; weighting them is a curriculum that makes them form within the
    CPU budget."""
    act_l1: float = 3e-4
    """L1 penalty on the MLP activations (post-GELU, summed over neurons, averaged over
    tokens). It makes neurons fire sparsely, so that a next-token neuron's strongest
    firings are the contexts it predicts for; 0 turns it off."""
    echo_share: float = 0.0
    """Echo sequences added to the training set, as a share of ``n_train_docs``: a random
    run of 8 to 32 word tokens said two or three times (the articles " a" and " an" never
    appear in them). Their repeats can only be predicted by copying, a curriculum aimed at
    induction heads, which name recall needs. Off in the shipped recipe: at 0.25 no
    induction head formed (1% of repeated tokens predicted at step 3,000) and held-out
    name recall after 3,500 steps was 0.718, below the 0.738 of the same recipe without
    them (both on the earlier arbitrary-role name task). 0 turns them off."""
    log_every: int = 50
    """Steps between progress log lines."""
    probe_every: int = 500
    """Steps between planted-accuracy probes on 200 held-out stories (0: never)."""

    def __post_init__(self) -> None:
        positive = (
            "n_train_docs",
            "n_layer",
            "n_head",
            "d_model",
            "d_mlp",
            "n_positions",
            "steps",
            "batch_size",
            "num_threads",
            "log_every",
            "vocab_size",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_eval_docs < 0 or self.n_mechanism_docs < 0:
            raise ValueError("n_eval_docs and n_mechanism_docs must be 0 or more")
        if self.d_model % self.n_head:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head}); "
                "pick e.g. d_model=128 with n_head=4"
            )
        if self.vocab_size < 300:
            raise ValueError("vocab_size must be at least 300 (256 bytes plus merges)")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.attn_dropout < 1.0):
            raise ValueError("dropout and attn_dropout must be in [0, 1)")
        if self.lr <= 0 or not (0.0 <= self.min_lr_ratio <= 1.0):
            raise ValueError("lr must be positive and min_lr_ratio in [0, 1]")
        if self.probe_every < 0:
            raise ValueError("probe_every must be 0 or more (0 turns probes off)")
        if not 0.0 <= self.echo_share <= 1.0:
            raise ValueError("echo_share must be in [0, 1] (0 turns echo sequences off)")
        if self.act_l1 < 0:
            raise ValueError("act_l1 must be 0 or more (0 turns the penalty off)")
        if self.planted_weight < 0:
            raise ValueError("planted_weight must be 0 or more (1.0 means no extra weight)")
        if self.warmup_steps < 0:
            raise ValueError("warmup_steps must be 0 or more")

    @classmethod
    def from_json(cls, data: dict[str, object]) -> TrainConfig:
        """Build from a recipe's ``config`` mapping, ignoring unknown keys."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})  # type: ignore[arg-type]


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` produced."""

    out_dir: Path
    seconds: float
    """Wall time of the optimisation loop."""
    final_loss: float
    """Mean training loss over the last ``log_every`` steps."""
    evaluation: Evaluation | None
    neurons: tuple[NeuronFinding, ...]
    heads: tuple[HeadFinding, ...]


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> GPT2TokenizerFast:
    """A GPT-2-style byte-level BPE trained on ``texts``; ``<|endoftext|>`` is every special.

    Tokens carry their leading space (``" an"``); no BOS is added automatically: callers
    prepend it (the project-wide rule). Every planted target and cue word of the
    storyworld is guaranteed to be one token (a lexicon of them is trained on too).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The lexicon makes every planted word a single token even on a tiny corpus.
    lexicon = " " + " ".join(w.strip() for w in single_token_words())
    tok.train_from_iterator([*texts, *([lexicon] * 100)], trainer)
    fast = GPT2TokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=BOS_TOKEN,
        unk_token=BOS_TOKEN,
        pad_token=BOS_TOKEN,
        add_prefix_space=False,
    )
    check_tokenizer(fast)
    return fast


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def echo_sequences(tokenizer: PreTrainedTokenizerBase, n: int, seed: int) -> list[list[int]]:
    """``n`` BOS-prefixed echo sequences: a random run of 8 to 32 word tokens (a leading
    space and letters, not " a" or " an") repeated two or three times. Deterministic."""
    bos = endoftext_id(tokenizer)
    skip = {" a", " an"}
    pool = sorted(
        i
        for t, i in tokenizer.get_vocab().items()
        if t.startswith("\u0120")
        and t[1:].isalpha()
        and tokenizer.convert_tokens_to_string([t]) not in skip
    )
    if not pool:
        return []
    rng = np.random.default_rng([seed, 0xEC40])
    out = []
    for _ in range(n):
        run = rng.choice(pool, size=int(rng.integers(8, 33))).tolist()
        out.append([bos, *(run * int(rng.integers(2, 4)))])
    return out


def _planted_predict_positions(
    doc: Document, offsets: Sequence[tuple[int, int]], n_positions: int
) -> tuple[int, ...]:
    """Positions (BOS at 0) whose next token is a planted target or an article slot
    (:attr:`Document.article_slots`), within the context."""
    starts = [s for s, _ in offsets]
    out = []
    for char in sorted([a.target_char for a in doc.annotations] + list(doc.article_slots)):
        t = bisect.bisect_right(starts, char + 1) - 1  # token holding the target
        if 0 <= t and t + 1 < n_positions:
            out.append(t)  # the target is at t + 1 after BOS; it is predicted at t
    return tuple(out)


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.lr * (
        cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    )


def build_model(cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 for ``cfg`` (weights depend on the torch seed)."""
    return gpt2_model(
        len(tokenizer), endoftext_id(tokenizer), n_positions=cfg.n_positions, d_model=cfg.d_model,
        n_layer=cfg.n_layer, n_head=cfg.n_head, d_mlp=cfg.d_mlp, dropout=cfg.dropout,
        attn_dropout=cfg.attn_dropout,
    )  # fmt: skip


def _save_state(
    partial: Path,
    cfg: TrainConfig,
    model: GPT2LMHeadModel,
    opt: torch.optim.Optimizer,
    step: int,
    seen_tokens: int,
    window: list[float],
    seconds: float,
) -> None:
    """Atomically write the training state after ``step`` steps."""
    partial.mkdir(parents=True, exist_ok=True)
    state = {
        "config": asdict(cfg),
        "step": step,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "seen_tokens": seen_tokens,
        "window": window,
        "seconds": seconds,
    }
    tmp = partial / "state.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, partial / "state.pt")
    logger.debug("saved training state at step %d", step)


def _load_state(partial: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """The saved state for ``cfg``, or ``None`` when there is none."""
    path = partial / "state.pt"
    if not path.is_file():
        return None
    state: dict[str, Any] = torch.load(path, weights_only=False)
    if state.get("config") != asdict(cfg):
        raise UserError(
            f"{partial} holds an interrupted training with another configuration; "
            "pass the same options to resume it, or --restart to discard it"
        )
    return state


def _probe(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizerBase,
    docs: Sequence[Document],
    step: int,
) -> None:
    """Log planted accuracy and the ' an' neurons during training."""
    ev = evaluate(model, tokenizer, docs)
    found = [f"L{lay}N{n}(#{r})" for lay, n, r in top_token_neurons(model, tokenizer, " an")]
    logger.info(
        "probe at step %d: %s a %.3f an %.3f; ' an' neurons %s",
        step,
        " ".join(f"{k} {ev.rate(k):.3f}" for k in ev.accuracy),
        *(c / max(t, 1) for c, t in (ev.by_target[" a"], ev.by_target[" an"])),
        " ".join(found[:4]) or "none",
    )


def train(
    cfg: TrainConfig,
    out_dir: Path,
    overwrite: bool = False,
    save_every: int = 250,
    restart: bool = False,
) -> TrainResult:
    """Generate the corpus, train tokenizer and model, measure them, and save everything.

    ``out_dir`` receives ``config.json``, ``model.safetensors``, the tokenizer files,
    ``recipe.json`` and ``MODEL_CARD.md``. The folder is written in a temporary sibling
    and moved into place at the end, so an interrupted run leaves nothing half-written.
    Raises :class:`~lookuplens.errors.UserError` if ``out_dir`` is not empty and
    ``overwrite`` is false.

    Every ``save_every`` steps (0: never) the training state is saved next to ``out_dir``
    (``.NAME.partial/``); a later call with the same config resumes from it and gives the
    same weights as an uninterrupted run on the same number of threads. ``restart``
    discards that state. It is removed once the checkpoint is written.
    """
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, overwrite)
    torch.set_num_threads(cfg.num_threads)
    _seed_everything(cfg.seed)

    t0 = time.perf_counter()
    docs = generate_corpus(cfg.n_train_docs, cfg.seed, "train")
    tokenizer = train_tokenizer([d.text for d in docs], cfg.vocab_size)
    bos = endoftext_id(tokenizer)
    encoded = tokenizer(
        [d.text for d in docs], add_special_tokens=False, return_offsets_mapping=True
    )
    seqs = [[bos, *ids][: cfg.n_positions] for ids in encoded["input_ids"]]
    planted = [
        _planted_predict_positions(doc, offsets, cfg.n_positions)
        for doc, offsets in zip(docs, encoded["offset_mapping"], strict=True)
    ]
    echoes = echo_sequences(tokenizer, round(cfg.echo_share * cfg.n_train_docs), cfg.seed)
    seqs += [e[: cfg.n_positions] for e in echoes]
    planted += [()] * len(echoes)
    n_tokens = sum(len(s) for s in seqs)
    logger.info(
        "corpus: %d stories and %d echo sequences, %d tokens, vocab %d (%.1fs)",
        len(docs),
        len(echoes),
        n_tokens,
        len(tokenizer),
        time.perf_counter() - t0,
    )

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("model: %d parameters", n_params)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
    )
    batches = length_batches(
        [len(s) for s in seqs], cfg.batch_size, np.random.default_rng(cfg.seed)
    )

    probe_docs = generate_corpus(200, cfg.seed + 1, "heldout") if cfg.probe_every else []
    partial = partial_path(out_dir)
    first_step, seen_tokens, window, prior_seconds = 0, 0, [], 0.0
    if restart and partial.exists():
        shutil.rmtree(partial)
    state = _load_state(partial, cfg)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        first_step, seen_tokens = int(state["step"]), int(state["seen_tokens"])
        window, prior_seconds = list(state["window"]), float(state["seconds"])
        for _ in range(first_step):  # the batch order continues where it stopped
            next(batches)
        logger.info("resuming from step %d (state in %s)", first_step, partial)
    model.train()
    mlp_acts: list[torch.Tensor] = []
    if cfg.act_l1 > 0:
        for block in cast("Iterable[GPT2Block]", model.transformer.h):
            block.mlp.act.register_forward_hook(
                lambda m, _i, out: mlp_acts.append(out) if m.training else None
            )
    start = time.perf_counter()
    for step in range(first_step, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        idx = next(batches)
        ids, mask = pad_rows([seqs[i] for i in idx], bos, torch.bool)
        mlp_acts.clear()
        logits = model(input_ids=ids, attention_mask=mask.long()).logits
        ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        weight = mask[:, 1:].float()
        for row, i in enumerate(idx):
            weight[row, list(planted[i])] = cfg.planted_weight
        n_real = mask[:, 1:].sum()
        loss = (ce * mask[:, 1:]).sum() / n_real  # plain LM loss, for the log
        objective = (ce * weight).sum() / n_real
        if mlp_acts:
            l1 = sum((a.abs().sum(-1) * mask).sum() for a in mlp_acts) / mask.sum()
            objective = objective + cfg.act_l1 * l1
        opt.zero_grad(set_to_none=True)
        objective.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        seen_tokens += int(mask.sum())
        window.append(loss.item())
        window = window[-cfg.log_every :]
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            elapsed = prior_seconds + time.perf_counter() - start
            eta = elapsed / done * (cfg.steps - done)
            logger.info(
                "step %d/%d loss %.4f lr %.2e %.0f tok/s eta %.0fs",
                done,
                cfg.steps,
                sum(window) / len(window),
                _lr_at(step, cfg),
                seen_tokens / elapsed,
                eta,
            )
        if cfg.probe_every and done % cfg.probe_every == 0 and done < cfg.steps:
            probe_start = time.perf_counter()
            _probe(model, tokenizer, probe_docs, done)
            start += time.perf_counter() - probe_start  # probes do not count as training
        if save_every and done % save_every == 0 and done < cfg.steps:
            save_start = time.perf_counter()
            _save_state(partial, cfg, model, opt, done, seen_tokens, window,
                        prior_seconds + save_start - start)  # fmt: skip
            start += time.perf_counter() - save_start
    seconds = prior_seconds + time.perf_counter() - start
    final_loss = sum(window) / max(len(window), 1)
    model.eval()

    evaluation, neurons, heads = measure(model, tokenizer, cfg)
    recipe = {
        "config": asdict(cfg),
        "seed": cfg.seed,
        "corpus": {
            "generator": "lookuplens.zoo.storyworld",
            "train_docs": len(docs),
            "echo_sequences": len(echoes),
            "train_tokens": n_tokens,
            "eval_docs": cfg.n_eval_docs,
            "eval_split": "heldout",
            "vocab": len(tokenizer),
        },
        "parameters": n_params,
        "train_tokens_seen": seen_tokens,
        "training_seconds": round(seconds, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "final_train_loss": final_loss,
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
        "evaluation": evaluation.as_json() if evaluation else None,
        "mechanism": {
            "neurons": [n.as_json() for n in neurons[:5]],
            "heads": [h.as_json() for h in heads if h.kind == "article"][:5],
        },
    }

    publish_folder(
        out_dir, partial, model, tokenizer, recipe,
        lambda tmp: write_model_card(tmp, recipe, evaluation, neurons, heads),
    )  # fmt: skip
    logger.info("saved %s (%.1fs training)", out_dir, seconds)
    return TrainResult(out_dir, seconds, final_loss, evaluation, tuple(neurons), tuple(heads))


def measure(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerBase, cfg: TrainConfig
) -> tuple[Evaluation | None, list[NeuronFinding], list[HeadFinding]]:
    """Held-out accuracy and the " an" mechanism, as reported on the model card."""
    heldout: list[Document] = generate_corpus(cfg.n_eval_docs, cfg.seed, "heldout")
    evaluation = evaluate(model, tokenizer, heldout) if heldout else None
    if evaluation:
        logger.info(
            "held-out: %s, ordinary loss %.4f",
            {k: f"{evaluation.rate(k):.3f}" for k in evaluation.accuracy},
            evaluation.ordinary_loss,
        )
    neurons, heads = find_mechanism(model, tokenizer, heldout[: cfg.n_mechanism_docs])
    for n in neurons[:3]:
        logger.info("' an' neuron %s: %s", n.label, n)
    for h in [h for h in heads if h.kind == "article"][:3]:
        logger.info("article head %s: %s", h.label, h)
    return evaluation, neurons, heads
