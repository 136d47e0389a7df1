"""Find the planted mechanism in a trained storyworld model: the " an" neuron and the
head that looks up the object noun for it.

This is the ground truth the model card documents; the pipeline stages rediscover it
their own way. Congruence follows the paper: ``W_out[n] . W_U[:, t]`` on the unembedding
with the final LayerNorm scale folded in and centred over the vocabulary.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor
from transformers import GPT2LMHeadModel, PreTrainedTokenizerBase
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

from lookuplens.model.padding import pad_rows
from lookuplens.zoo.evaluate import EncodedDocument, encode_documents
from lookuplens.zoo.storyworld import Document, Kind, endoftext_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NeuronFinding:
    """An MLP neuron whose top congruent token is a planted target."""

    layer: int
    neuron: int
    token: str
    congruence: float
    rank_in_layer: int
    """0 for the neuron with the highest max-congruence in its layer."""
    word_rank: int
    """Rank among the layer's neurons whose top token is a word (leading space, more than 2
    characters), the pipeline's default selection (it keeps ranks 0 to 19)."""
    mean_act_target: float
    """Mean post-GELU activation at the positions that predict this token."""
    mean_act_other_article: float
    """Mean activation at article positions predicting the other article."""
    mean_act_elsewhere: float
    """Mean activation at all other positions."""
    top_rate: float
    """Fraction of target positions where this neuron has the largest activation in its layer."""

    @property
    def label(self) -> str:
        return f"L{self.layer}N{self.neuron}"

    @property
    def selectivity(self) -> float:
        """Mean activation before the target minus the larger of the other two means."""
        return self.mean_act_target - max(self.mean_act_other_article, self.mean_act_elsewhere)

    def as_json(self) -> dict[str, object]:
        return {
            "neuron": self.label,
            "layer": self.layer,
            "index": self.neuron,
            "token": self.token,
            "congruence": self.congruence,
            "rank_in_layer": self.rank_in_layer,
            "word_rank": self.word_rank,
            "mean_act_target": self.mean_act_target,
            "mean_act_other_article": self.mean_act_other_article,
            "mean_act_elsewhere": self.mean_act_elsewhere,
            "top_rate": self.top_rate,
        }


@dataclass(frozen=True)
class HeadFinding:
    """How strongly a head attends from the predicting position to the cue tokens."""

    kind: Kind
    layer: int
    head: int
    cue_attention: float
    """Mean attention weight on the cue tokens, from the position before the target."""
    attribution: float | None
    """Mean of (head output . W_in[:, neuron]) at that position, for the article neuron."""

    @property
    def label(self) -> str:
        return f"L{self.layer}H{self.head}"

    def as_json(self) -> dict[str, object]:
        return {
            "head": self.label,
            "kind": self.kind,
            "layer": self.layer,
            "index": self.head,
            "cue_attention": self.cue_attention,
            "attribution": self.attribution,
        }


def _blocks(model: GPT2LMHeadModel) -> list[GPT2Block]:
    return [cast(GPT2Block, b) for b in model.transformer.h]


def single_token_id(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    """The id of ``text`` (e.g. ``" an"``); raises ``ValueError`` unless it is one token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{text!r} is not a single token of this tokenizer")
    return int(ids[0])


def folded_unembedding(model: GPT2LMHeadModel) -> Tensor:
    """``W_U`` [d_model, vocab] with the final LayerNorm scale folded in, centred over tokens."""
    w_u = (
        model.lm_head.weight.detach().float().T
        * model.transformer.ln_f.weight.detach().float()[:, None]
    )
    return w_u - w_u.mean(dim=1, keepdim=True)


def congruence(model: GPT2LMHeadModel, layer: int) -> Tensor:
    """[d_mlp, vocab] congruence of each neuron of ``layer`` with each token."""
    w_out = _blocks(model)[layer].mlp.c_proj.weight.detach().float()  # [d_mlp, d_model]
    return w_out @ folded_unembedding(model)


def word_tokens(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> Tensor:
    """[vocab] bool: tokens the paper's filter accepts as a neuron's top token (a leading
    space and more than 2 characters, e.g. ``" an"``)."""
    from lookuplens.model.vocab import Vocab

    vocab = Vocab(tokenizer, size=vocab_size)
    return torch.tensor(
        [vocab.starts_word(i) and len(vocab.text(i)) > 2 for i in range(vocab_size)]
    )


@dataclass(frozen=True)
class LayerRanks:
    """Each neuron's top token and its rank in the layer by max congruence."""

    top_token: Tensor
    top_value: Tensor
    rank: Tensor
    """0 for the neuron with the highest max congruence."""
    word_rank: Tensor
    """Rank among the neurons whose top token is a word (see :func:`word_tokens`); -1 for
    the others. The pipeline's default selection keeps word ranks 0 to 19."""


def layer_ranks(model: GPT2LMHeadModel, layer: int, words: Tensor) -> LayerRanks:
    """Top tokens and ranks of the neurons of ``layer``; ``words`` from :func:`word_tokens`."""
    best_val, best_tok = congruence(model, layer).max(dim=1)
    order = torch.argsort(best_val, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    is_word = words[best_tok]
    word_rank = torch.full_like(order, -1)
    word_order = order[is_word[order]]
    word_rank[word_order] = torch.arange(len(word_order))
    return LayerRanks(best_tok, best_val, rank, word_rank)


def top_token_neurons(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerBase, token: str
) -> list[tuple[int, int, int]]:
    """(layer, neuron, word rank) of every neuron whose top token is ``token``, best first."""
    token_id = single_token_id(tokenizer, token)
    words = word_tokens(tokenizer, model.config.vocab_size)
    found = []
    for layer in range(model.config.n_layer):
        r = layer_ranks(model, layer, words)
        for n in torch.nonzero(r.top_token == token_id).flatten().tolist():
            found.append((layer, n, int(r.word_rank[n])))
    return sorted(found, key=lambda f: f[2])


@contextmanager
def _capture(model: GPT2LMHeadModel) -> Iterator[dict[str, Tensor]]:
    """Record post-GELU MLP activations and per-head attention outputs (``z``)."""
    store: dict[str, Tensor] = {}
    handles = []
    for i, block in enumerate(_blocks(model)):

        def act_hook(_m: torch.nn.Module, _i: object, out: Tensor, i: int = i) -> None:
            store[f"act{i}"] = out.detach()

        def z_hook(_m: torch.nn.Module, args: tuple[Tensor, ...], i: int = i) -> None:
            store[f"z{i}"] = args[0].detach()

        handles.append(block.mlp.act.register_forward_hook(act_hook))
        handles.append(block.attn.c_proj.register_forward_pre_hook(z_hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def find_mechanism(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizerBase,
    docs: Sequence[Document],
    token: str = " an",
    batch_size: int = 64,
) -> tuple[list[NeuronFinding], list[HeadFinding]]:
    """Neurons whose top congruent token is ``token`` and, per kind, heads ranked by
    attention to the cue; article heads also carry their direct attribution to the best
    neuron. Lists are sorted best first."""
    model.eval()
    cfg = model.config
    n_layer, n_head = cfg.n_layer, cfg.n_head
    d_head = cfg.n_embd // n_head
    target_id = single_token_id(tokenizer, token)

    words = word_tokens(tokenizer, cfg.vocab_size)
    candidates: list[tuple[int, int, float, int, int]] = []
    for layer in range(n_layer):
        r = layer_ranks(model, layer, words)
        for n in torch.nonzero(r.top_token == target_id).flatten().tolist():
            candidates.append(
                (layer, n, float(r.top_value[n]), int(r.rank[n]), int(r.word_rank[n]))
            )

    encoded: list[EncodedDocument] = encode_documents(docs, tokenizer, cfg.n_positions)
    pad = endoftext_id(tokenizer)
    acts_t: dict[tuple[int, int], list[float]] = {(lay, n): [] for lay, n, *_ in candidates}
    acts_o: dict[tuple[int, int], list[float]] = {(lay, n): [] for lay, n, *_ in candidates}
    tops: dict[tuple[int, int], int] = {(lay, n): 0 for lay, n, *_ in candidates}
    else_sum = {(lay, n): 0.0 for lay, n, *_ in candidates}
    else_n = 0
    attn_sum: dict[tuple[Kind, int, int], float] = {}
    attn_n: dict[Kind, int] = {}
    z_target: list[Tensor] = []  # per article-target position: [n_layer, n_head, d_head]

    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with _capture(model) as store:
            for s in range(0, len(encoded), batch_size):
                batch = encoded[s : s + batch_size]
                ids, mask = pad_rows([e.ids for e in batch], pad, torch.bool)
                out = model(input_ids=ids, attention_mask=mask.long(), output_attentions=True)
                special = torch.zeros_like(mask)
                for b, e in enumerate(batch):
                    for p in e.planted:
                        q = p.predict_index
                        special[b, q] = True
                        attn_n[p.kind] = attn_n.get(p.kind, 0) + 1
                        for layer in range(n_layer):
                            w = out.attentions[layer][b, :, q, list(p.cue_indices)].sum(-1)
                            for h in range(n_head):
                                key = (p.kind, layer, h)
                                attn_sum[key] = attn_sum.get(key, 0.0) + float(w[h])
                        if p.kind != "article":
                            continue
                        is_target = p.target == token
                        for lay, n, *_ in candidates:
                            a = store[f"act{lay}"][b, q]
                            (acts_t if is_target else acts_o)[(lay, n)].append(float(a[n]))
                            if is_target and int(a.argmax()) == n:
                                tops[(lay, n)] += 1
                        if is_target:
                            z_target.append(
                                torch.stack(
                                    [
                                        store[f"z{lay}"][b, q].view(n_head, d_head)
                                        for lay in range(n_layer)
                                    ]
                                )
                            )
                elsewhere = mask & ~special
                else_n += int(elsewhere.sum())
                for lay, n, *_ in candidates:
                    else_sum[(lay, n)] += float(store[f"act{lay}"][..., n][elsewhere].sum())
    finally:
        model.set_attn_implementation(impl)

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    neurons = [
        NeuronFinding(
            layer=lay,
            neuron=n,
            token=token,
            congruence=cong,
            rank_in_layer=rank,
            word_rank=word_rank,
            mean_act_target=mean(acts_t[(lay, n)]),
            mean_act_other_article=mean(acts_o[(lay, n)]),
            mean_act_elsewhere=else_sum[(lay, n)] / max(else_n, 1),
            top_rate=tops[(lay, n)] / max(len(acts_t[(lay, n)]), 1),
        )
        for lay, n, cong, rank, word_rank in candidates
    ]
    # Best first: fires before the target, and neither before the other article nor elsewhere.
    neurons.sort(key=lambda f: f.selectivity, reverse=True)

    attribution: dict[tuple[int, int], float] = {}
    if neurons and z_target:
        best = neurons[0]
        z = torch.stack(z_target)  # [N, n_layer, n_head, d_head]
        w_in = _blocks(model)[best.layer].mlp.c_fc.weight[:, best.neuron].float()
        for lay in range(best.layer + 1):
            w_o = _blocks(model)[lay].attn.c_proj.weight.float()  # [d_model, d_model]
            for h in range(n_head):
                result = z[:, lay, h] @ w_o[h * d_head : (h + 1) * d_head]  # [N, d_model]
                attribution[(lay, h)] = float((result @ w_in).mean())

    heads = [
        HeadFinding(
            kind,
            lay,
            h,
            total / max(attn_n[kind], 1),
            attribution.get((lay, h)) if kind == "article" else None,
        )
        for (kind, lay, h), total in attn_sum.items()
    ]
    heads.sort(key=lambda f: f.cue_attention, reverse=True)
    return neurons, heads
