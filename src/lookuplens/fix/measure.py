"""What `lookuplens fix` measures for every candidate: the target on the prompts, the
controls' answers, and side effects on held-out text.

All of it is a plain forward pass of the (edited) model: the final residual stream of
every sequence, unembedded at the positions that are read. Side effects compare the
next-token distribution at every position of the held-out text with the original
model's, over every token but the target (`rest_kl`), and report the plain KL and the
change of the text's loss too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from lookuplens.errors import UserError
from lookuplens.interventions import final_residual
from lookuplens.model import LoadedModel, pad_right

__all__ = [
    "Controls",
    "PromptSet",
    "SideEffects",
    "TargetResult",
    "encode_prompts",
    "final_logprobs",
    "measure_target",
]

_BATCH_TOKENS = 4096
_CACHE_BYTES = 512 * 2**20
"""The original model's held-out log-probs are kept in memory up to this size; beyond
it they are computed again, batch by batch, with the original weights."""


def encode_prompts(lm: LoadedModel, texts: Sequence[str], what: str) -> list[list[int]]:
    """Each text's tokens (BOS first when the tokenizer has one); one clear error for an
    empty text or one longer than the model's context."""
    out = []
    for i, t in enumerate(texts, 1):
        if not t.strip():
            raise UserError(f"{what} {i} is empty; remove the blank line or entry")
        ids = lm.to_tokens(t)[0].tolist()
        if len(ids) > lm.max_context:
            raise UserError(
                f"{what} {i} is {len(ids)} tokens long, more than the model's context of "
                f"{lm.max_context}; shorten it"
            )
        out.append([int(x) for x in ids])
    return out


def _batches(seqs: Sequence[Sequence[int]], max_tokens: int = _BATCH_TOKENS) -> list[list[int]]:
    """Index batches of at most `max_tokens` padded tokens (or one sequence), longest first."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = len(seqs[cur[0]]) if cur else len(seqs[i])
        if cur and (len(cur) + 1) * width > max_tokens:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def final_logprobs(lm: LoadedModel, seqs: Sequence[Sequence[int]]) -> Tensor:
    """Next-token log-probs at each sequence's last position, ``[n, d_vocab]`` float64."""
    out = torch.empty(len(seqs), lm.d_vocab, dtype=torch.float64)
    for idx in _batches(seqs):
        ids, mask = pad_right(lm, [list(seqs[i]) for i in idx])
        pos = (mask.sum(1) - 1).to(lm.device)
        resid = final_residual(lm, ids, mask)
        logits = lm.unembed(resid[torch.arange(len(idx), device=resid.device), pos])
        out[torch.tensor(idx)] = torch.log_softmax(logits.double(), -1).cpu()
    return out


@dataclass(frozen=True)
class PromptSet:
    """The prompts the fix is about, and the token measured at each one's last position."""

    texts: list[str]
    ids: list[list[int]]
    target_id: int
    target: str
    contrast_id: int | None = None
    contrast: str | None = None


@dataclass(frozen=True)
class TargetResult:
    """The target on every prompt: p(target), log p(target), the logit difference against
    the contrast token (if any) and the top prediction."""

    prob: list[float]
    logprob: list[float]
    diff: list[float] | None
    top: list[str]
    top_is_target: list[bool]
    contrast_wins: list[bool] | None
    """With a contrast token: whether its logit is above the target's."""
    rest_kl: list[float] | None = None
    """Against the unedited model: per prompt, how much what the model predicts instead of
    the target changed (`rest_kl`; None for the unedited model itself)."""

    @property
    def score(self) -> float:
        """The quantity a fix moves: mean log p(target), or mean logit difference."""
        return float(np.mean(self.diff if self.diff is not None else self.logprob))

    @property
    def mean_prob(self) -> float:
        return float(np.mean(self.prob))

    def to_dict(self) -> dict[str, object]:
        return {
            "score": self.score,
            "mean_prob": self.mean_prob,
            "prob": self.prob,
            "logprob": self.logprob,
            "logit_diff": self.diff,
            "top": self.top,
            "top_is_target": self.top_is_target,
            "contrast_wins": self.contrast_wins,
            "rest_kl": self.rest_kl,
            "mean_rest_kl": None if self.rest_kl is None else float(np.mean(self.rest_kl)),
        }


def measure_target(
    lm: LoadedModel, prompts: PromptSet, base: Tensor | None = None
) -> tuple[TargetResult, Tensor]:
    """The target on every prompt, and the log-probs it was read from; with `base` (the
    unedited model's log-probs) also the change of everything else (`rest_kl`)."""
    lp = final_logprobs(lm, prompts.ids)
    t = lp[:, prompts.target_id]
    top_ids = lp.argmax(-1).tolist()
    diff = wins = None
    if prompts.contrast_id is not None:
        c = lp[:, prompts.contrast_id]
        diff = (t - c).tolist()
        wins = [bool(x) for x in (c > t).tolist()]
    exclude = [prompts.target_id] + ([] if prompts.contrast_id is None else [prompts.contrast_id])
    rk = None if base is None else rest_kl(base, lp, exclude).double().tolist()
    result = TargetResult(
        prob=t.exp().tolist(),
        logprob=t.tolist(),
        diff=diff,
        top=[lm.token_str(int(i)) for i in top_ids],
        top_is_target=[int(i) == prompts.target_id for i in top_ids],
        contrast_wins=wins,
        rest_kl=rk,
    )
    return result, lp


@dataclass(frozen=True)
class Controls:
    """Prompts whose answers must not change: the expected next token of each."""

    texts: list[str]
    ids: list[list[int]]
    expected_ids: list[int]
    expected: list[str]

    def answers(self, lm: LoadedModel) -> list[str]:
        if not self.ids:
            return []
        top = final_logprobs(lm, self.ids).argmax(-1).tolist()
        return [lm.token_str(int(i)) for i in top]

    def accuracy(self, answers: Sequence[str]) -> float | None:
        if not answers:
            return None
        return float(np.mean([a == e for a, e in zip(answers, self.expected, strict=True)]))


@dataclass
class SideEffects:
    """Held-out text and the original model's next-token distribution over it."""

    seqs: list[list[int]]
    exclude: tuple[int, ...]
    """The target (and the contrast token): their own change is the fix, not a side effect."""
    base_loss: float = float("nan")
    on_target_tokens: int = 0
    """Scored positions where the original model predicts the target (left out of ``kl``)."""
    _cache: list[Tensor] | None = field(default=None, repr=False)
    _batches: list[list[int]] = field(default_factory=list, repr=False)

    @property
    def n_tokens(self) -> int:
        """Positions whose next token is scored (all but each sequence's last)."""
        return sum(len(s) - 1 for s in self.seqs)

    def _logprobs(self, lm: LoadedModel, idx: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        """Log-probs ``[b, p, V]`` (float32), the next tokens and the mask of scored positions."""
        ids, mask = pad_right(lm, [self.seqs[i] for i in idx])
        resid = final_residual(lm, ids, mask)
        lp = torch.log_softmax(lm.unembed(resid[:, :-1]).float(), -1).cpu()
        scored = mask[:, 1:].bool() & mask[:, :-1].bool()
        return lp, ids[:, 1:].cpu(), scored.cpu()

    def prepare(self, lm: LoadedModel) -> None:
        """Measure the original model (call with the weights unedited)."""
        # a batch's log-probs over the vocabulary stay under about 256 MiB
        self._batches = _batches(self.seqs, max(256, min(_BATCH_TOKENS, 2**26 // lm.d_vocab)))
        nll, n = 0.0, 0
        self.on_target_tokens = 0
        cache: list[Tensor] = []
        size = self.n_tokens * lm.d_vocab * 4
        for idx in self._batches:
            lp, nxt, scored = self._logprobs(lm, idx)
            nll -= float(lp.gather(-1, nxt[..., None])[..., 0][scored].double().sum())
            n += int(scored.sum())
            self.on_target_tokens += int(((lp.argmax(-1) == self.exclude[0]) & scored).sum())
            if size <= _CACHE_BYTES:
                cache.append(lp)
        self.base_loss = nll / max(n, 1)
        self._cache = cache if size <= _CACHE_BYTES else None

    def measure(self, lm: LoadedModel, original: LoadedModel | None = None) -> dict[str, float]:
        """Side effects (see `rest_kl`): ``kl``, the mean per token of KL(original ||
        edited) over every token but the target (and contrast), its 95th percentile
        ``kl_p95``; ``kl_all``, the mean of the plain KL; the loss and its change.

        Without a cache (large vocabularies), `original` must be an unedited model of the
        same weights (it may be `lm` itself only when nothing is edited)."""
        if not self._batches:
            raise RuntimeError("SideEffects.prepare must run on the original model first")
        rest: list[Tensor] = []
        plain: list[Tensor] = []
        nll, n = 0.0, 0
        for b, idx in enumerate(self._batches):
            lp, nxt, scored = self._logprobs(lm, idx)
            if self._cache is not None:
                base = self._cache[b]
            else:
                if original is None:
                    raise RuntimeError("no cached original log-probs: pass the original model")
                base, _, _ = self._logprobs(original, idx)
            plain.append(((base.exp() * (base - lp)).sum(-1).clamp_min(0))[scored].double())
            rest.append(rest_kl(base, lp, self.exclude)[scored].double())
            nll -= float(lp.gather(-1, nxt[..., None])[..., 0][scored].double().sum())
            n += int(scored.sum())
        restkl, allkl = torch.cat(rest), torch.cat(plain)
        return {
            "kl": float(restkl.mean()),
            "kl_p95": float(torch.quantile(restkl.float(), 0.95)),
            "kl_all": float(allkl.mean()),
            "loss": nll / max(n, 1),
            "loss_change": nll / max(n, 1) - self.base_loss,
        }


def rest_kl(base: Tensor, new: Tensor, exclude: Sequence[int]) -> Tensor:
    """KL(base || new) between the next-token distributions with the `exclude` tokens (the
    target, and the contrast token) taken out and the rest renormalised, per position.

    This is the side effect of a fix: an edit that only moves probability into or out of
    the target (from or to every other token in proportion) scores 0, wherever the target
    is predicted or not; one that changes what the model says instead does not."""
    idx = torch.tensor(list(exclude), dtype=torch.long)

    def cond(x: Tensor) -> Tensor:
        x = x.float().clone()
        x[..., idx] = -1e30
        return x - torch.logsumexp(x, -1, keepdim=True)

    b, n = cond(base), cond(new)
    return (b.exp() * (b - n)).sum(-1).clamp_min(0)
