"""Stage 1: next-token neurons, from the weights alone.

The congruence of neuron n with token t is how strongly the neuron's output vector
W_out[n] writes along token t's unembedding. By default (``congruence="folded"``) the
weights are read the way TransformerLens folds them: the final norm's scale is folded
into W_U (``W_U' = diag(gamma) W_U``), W_U' is centred over the vocabulary (a constant
added to every logit changes nothing), and for LayerNorm models W_out is centred over
d_model (LayerNorm removes the mean of the residual stream). ``congruence="raw"`` is the
plain dot product W_out[n] . W_U[:, t].

Everything is computed in blocks of neurons times vocabulary, so a 150k-token vocabulary
times 14k neurons per layer never needs the full matrix in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from jaxtyping import Float
from torch import Tensor

from lookuplens.choices import check_choices
from lookuplens.errors import UserError
from lookuplens.model import LoadedModel
from lookuplens.model.vocab import Vocab

log = logging.getLogger(__name__)

TokenFilter = Literal["paper", "none"]


@dataclass(frozen=True)
class NeuronsConfig:
    """Which neurons the pipeline follows."""

    layers: tuple[int, ...] | None = None
    """Layers to search; ``None`` means every layer. Negative values count from the end."""
    top_n: int = 20
    """Neurons kept per layer, by congruence (the paper: 20 for GPT-2 small, 40 for large)."""
    congruence: Literal["folded", "raw"] = "folded"
    """``folded``: final-norm scale folded into W_U, W_U centred over the vocabulary, W_out
    centred for LayerNorm models. ``raw``: the paper's plain W_out . W_U."""
    token_filter: TokenFilter = "paper"
    """``paper``: the top token starts a word and its text, with the separating space, is
    longer than 2 characters (" an"), under any tokenizer convention; ``none``: any token."""
    exclude_tokens: tuple[str, ...] = ()
    """Tokens never accepted as a neuron's top token: running text with its leading space
    (" the") or the raw vocabulary entry ("▁the")."""
    min_kurtosis: float | None = None
    """Keep only neurons whose congruence over the vocabulary has at least this kurtosis."""
    tokens: tuple[str, ...] = ()
    """When given, select the top-congruence neurons for exactly these tokens instead."""
    n_baseline: int | None = None
    """Random-neuron baseline per layer; ``None`` means as many as selected in that layer."""
    seed: int = 0
    """Seed of the random-neuron baseline."""
    neuron_block: int = 4096
    """Neurons per block of the congruence computation (memory bound)."""
    vocab_block: int = 16384
    """Vocabulary entries per block of the congruence computation (memory bound)."""

    def __post_init__(self) -> None:
        check_choices(self)
        if self.top_n < 1:
            raise ValueError(f"top_n must be at least 1, got {self.top_n}")
        if self.n_baseline is not None and self.n_baseline < 0:
            raise ValueError(f"n_baseline must be >= 0, got {self.n_baseline}")
        if self.neuron_block < 1 or self.vocab_block < 1:
            raise ValueError("neuron_block and vocab_block must be positive")


@dataclass(frozen=True)
class LayerCongruence:
    """Per-neuron congruence statistics of one layer (arrays of length d_mlp)."""

    layer: int
    top_token: np.ndarray
    top_value: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    skew: np.ndarray
    kurtosis: np.ndarray
    """Excess kurtosis is not used: this is the plain fourth standardised moment (3 for a
    Gaussian), as Gurnee et al. report it."""
    token_value: np.ndarray | None = field(default=None)
    """Congruence with each requested token, ``[d_mlp, n_tokens]``, when tokens were asked."""


def resolve_layers(lm: LoadedModel, layers: tuple[int, ...] | None) -> list[int]:
    """Validate layer indices (negative counts from the end) and sort them."""
    if layers is None:
        return list(range(lm.n_layers))
    out = []
    for layer in layers:
        idx = layer + lm.n_layers if layer < 0 else layer
        if not 0 <= idx < lm.n_layers:
            raise UserError(
                f"layer {layer} is out of range: the model has {lm.n_layers} layers "
                f"(0 to {lm.n_layers - 1}, or negative to count from the end)"
            )
        out.append(idx)
    return sorted(set(out))


def unembed_matrix(
    lm: LoadedModel, mode: Literal["folded", "raw"]
) -> Float[Tensor, "d_model d_vocab"]:
    """W_U as the congruence reads it (float32)."""
    w_u = lm.W_U.detach().float()
    if mode == "raw":
        return w_u
    gamma = lm.norm_params(lm.final_norm).weight.detach().float()
    w_u = gamma[:, None] * w_u
    return w_u - w_u.mean(dim=1, keepdim=True)


def out_matrix(
    lm: LoadedModel, layer: int, mode: Literal["folded", "raw"]
) -> Float[Tensor, "d_mlp d_model"]:
    """W_out of a layer as the congruence reads it (float32)."""
    w = lm.W_out(layer).detach().float()
    if mode == "folded" and lm.spec.norm == "layernorm":
        w = w - w.mean(dim=1, keepdim=True)
    return w


def layer_congruence(
    lm: LoadedModel,
    layer: int,
    cfg: NeuronsConfig,
    w_u: Float[Tensor, "d_model d_vocab"] | None = None,
    token_ids: list[int] | None = None,
) -> LayerCongruence:
    """Top token, its congruence and the moments of each neuron's congruence over the vocabulary."""
    if w_u is None:
        w_u = unembed_matrix(lm, cfg.congruence)
    w_out = out_matrix(lm, layer, cfg.congruence).to(w_u.device)
    d_mlp, vocab = w_out.shape[0], w_u.shape[1]
    top_val = np.empty(d_mlp, dtype=np.float64)
    top_tok = np.empty(d_mlp, dtype=np.int64)
    moments = np.zeros((4, d_mlp), dtype=np.float64)
    tok_vals = None
    if token_ids:
        idx = torch.tensor(token_ids, device=w_u.device)
        tok_vals = (w_out @ w_u[:, idx]).double().cpu().numpy()
    for n0 in range(0, d_mlp, cfg.neuron_block):
        block = w_out[n0 : n0 + cfg.neuron_block]
        best_v = torch.full((block.shape[0],), -torch.inf, dtype=torch.float64)
        best_t = torch.zeros(block.shape[0], dtype=torch.long)
        sums = torch.zeros(4, block.shape[0], dtype=torch.float64)
        for v0 in range(0, vocab, cfg.vocab_block):
            c = (block @ w_u[:, v0 : v0 + cfg.vocab_block]).double().cpu()
            v, t = c.max(dim=1)
            better = v > best_v  # strict: the lowest token id wins ties, as in one argmax
            best_v = torch.where(better, v, best_v)
            best_t = torch.where(better, t + v0, best_t)
            p = c
            for k in range(4):
                sums[k] += p.sum(dim=1)
                p = p * c
        top_val[n0 : n0 + len(best_v)] = best_v.numpy()
        top_tok[n0 : n0 + len(best_t)] = best_t.numpy()
        moments[:, n0 : n0 + len(best_v)] = sums.numpy()
    m1, m2, m3, m4 = (moments[k] / vocab for k in range(4))
    var = np.maximum(m2 - m1**2, 1e-30)
    std = np.sqrt(var)
    c3 = m3 - 3 * m1 * m2 + 2 * m1**3
    c4 = m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4
    return LayerCongruence(
        layer=layer,
        top_token=top_tok,
        top_value=top_val,
        mean=m1,
        std=std,
        skew=c3 / std**3,
        kurtosis=c4 / var**2,
        token_value=tok_vals,
    )


def token_passes(vocab: Vocab, token_id: int, cfg: NeuronsConfig) -> bool:
    """The token filter on a neuron's top token, under the tokenizer's convention.

    ``paper``: the token starts a word and its running text, separating space included,
    is longer than 2 characters (" an", " apple"; not " a", not a continuation piece),
    the paper's rule for GPT-2 read the same way under SentencePiece ("▁an"), WordPiece
    and word-level tokenizers. Special tokens never pass.
    """
    text = vocab.text(token_id)
    if text in cfg.exclude_tokens or vocab.piece(token_id) in cfg.exclude_tokens:
        return False
    if cfg.token_filter == "paper":
        return vocab.starts_word(token_id) and len(text) > 2 and text.strip() != ""
    return True


def resolve_tokens(lm: LoadedModel, tokens: tuple[str, ...]) -> list[int]:
    """Map each requested token string (" an", "an", "▁an") to its single token id, or say
    which one is not a token (see `Vocab.resolve`)."""
    return [lm.resolve_token(t, "token") for t in tokens]


def find_neurons(
    lm: LoadedModel,
    cfg: NeuronsConfig,
    on_layer: Callable[[int, int], None] | None = None,
) -> pa.Table:
    """Congruence statistics of every neuron in the chosen layers, with the selection.

    Returns the `neurons` table of the run directory: one row per neuron of each chosen
    layer, ``selected`` marking the next-token neurons the pipeline follows and
    ``baseline`` the seeded random-neuron baseline drawn from the same layers.
    """
    layers = resolve_layers(lm, cfg.layers)
    token_ids = resolve_tokens(lm, cfg.tokens) if cfg.tokens else None
    if token_ids:
        log.info(
            "aiming at %s",
            ", ".join(
                f"{typed!r} -> {lm.token_str(t)!r} (id {t})"
                for typed, t in zip(cfg.tokens, token_ids, strict=True)
            ),
        )
    w_u = unembed_matrix(lm, cfg.congruence)
    vocab = lm.vocab
    rng = np.random.default_rng(cfg.seed)
    cols: dict[str, list[np.ndarray]] = {
        k: []
        for k in (
            "layer",
            "neuron",
            "token_id",
            "congruence",
            "congruence_z",
            "vocab_kurtosis",
            "vocab_skew",
            "vocab_mean",
            "vocab_std",
            "selected",
            "baseline",
            "target_token_id",
        )
    }
    tokens_col: list[str] = []
    for i, layer in enumerate(layers):
        lc = layer_congruence(lm, layer, cfg, w_u, token_ids)
        d_mlp = len(lc.top_value)
        z = (lc.top_value - lc.top_value.mean()) / max(lc.top_value.std(), 1e-12)
        target = np.full(d_mlp, -1, dtype=np.int64)
        selected = np.zeros(d_mlp, dtype=bool)
        if token_ids and lc.token_value is not None:
            # per requested token, the top_n neurons of this layer by congruence with it
            for j, tid in enumerate(token_ids):
                order = np.lexsort((np.arange(d_mlp), -lc.token_value[:, j]))
                kept = 0
                for n in order:
                    if kept == cfg.top_n:
                        break
                    if selected[n]:
                        continue
                    if cfg.min_kurtosis is not None and lc.kurtosis[n] < cfg.min_kurtosis:
                        continue
                    selected[n], target[n] = True, tid
                    kept += 1
        else:
            order = np.lexsort((np.arange(d_mlp), -lc.top_value))
            kept = 0
            for n in order:
                if kept == cfg.top_n:
                    break
                if not token_passes(vocab, int(lc.top_token[n]), cfg):
                    continue
                if cfg.min_kurtosis is not None and lc.kurtosis[n] < cfg.min_kurtosis:
                    continue
                selected[n], target[n] = True, lc.top_token[n]
                kept += 1
        n_base = int(selected.sum()) if cfg.n_baseline is None else cfg.n_baseline
        pool = np.flatnonzero(~selected)
        baseline = np.zeros(d_mlp, dtype=bool)
        if n_base and len(pool):
            baseline[rng.choice(pool, size=min(n_base, len(pool)), replace=False)] = True
        for n in np.flatnonzero(baseline):
            target[n] = lc.top_token[n]
        cols["layer"].append(np.full(d_mlp, layer, dtype=np.int64))
        cols["neuron"].append(np.arange(d_mlp, dtype=np.int64))
        cols["token_id"].append(lc.top_token)
        cols["congruence"].append(lc.top_value)
        cols["congruence_z"].append(z)
        cols["vocab_kurtosis"].append(lc.kurtosis)
        cols["vocab_skew"].append(lc.skew)
        cols["vocab_mean"].append(lc.mean)
        cols["vocab_std"].append(lc.std)
        cols["selected"].append(selected)
        cols["baseline"].append(baseline)
        cols["target_token_id"].append(target)
        tokens_col.extend(vocab.text(int(t)) for t in lc.top_token)
        log.debug("layer %d: %d selected, %d baseline", layer, selected.sum(), baseline.sum())
        if on_layer is not None:
            on_layer(i + 1, len(layers))
    data = {k: np.concatenate(v) for k, v in cols.items()}
    table = pa.table(
        {
            "layer": data["layer"],
            "neuron": data["neuron"],
            "token_id": data["token_id"],
            "token": pa.array(tokens_col, pa.string()),
            "congruence": data["congruence"],
            "congruence_z": data["congruence_z"],
            "vocab_kurtosis": data["vocab_kurtosis"],
            "vocab_skew": data["vocab_skew"],
            "selected": data["selected"],
            "baseline": data["baseline"],
            "vocab_mean": data["vocab_mean"],
            "vocab_std": data["vocab_std"],
            "target_token_id": data["target_token_id"],
        }
    )
    return table


def neuron_tokens(table: pa.Table, neurons: list[tuple[int, int]]) -> list[int]:
    """The token each of `neurons` pushes: ``target_token_id`` (the token asked for with
    ``tokens``) where the table has it, else its top token ``token_id``."""
    df = table.to_pandas().set_index(["layer", "neuron"])
    col = df.token_id
    if "target_token_id" in df:
        col = df.target_token_id.where(df.target_token_id.notna(), df.token_id)
    return [int(col.loc[key]) for key in neurons]


def tracked(table: pa.Table) -> list[tuple[int, int]]:
    """The (layer, neuron) pairs later stages follow: selected first, then baseline."""
    layer = table.column("layer").to_numpy()
    neuron = table.column("neuron").to_numpy()
    sel = table.column("selected").to_numpy(zero_copy_only=False)
    base = table.column("baseline").to_numpy(zero_copy_only=False)
    out = [(int(a), int(b)) for a, b, s in zip(layer, neuron, sel, strict=True) if s]
    out += [(int(a), int(b)) for a, b, s in zip(layer, neuron, base, strict=True) if s]
    return out
