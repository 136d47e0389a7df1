"""What `lookuplens fix` measures for every candidate: the target on the prompts, the
controls' answers, and side effects on held-out text.

All of it is a plain forward pass of the (edited) model: the final residual stream of
every sequence, unembedded at the positions that are read. Side effects compare the
next-token distribution at every position of the held-out text with the original
model's (KL(original || edited) per token) and report the change of the text's loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from lookuplens.errors import UserError
from lookuplens.model import LoadedModel, hook_name, pad_right

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


def _final_resid(lm: LoadedModel, ids: Tensor, mask: Tensor) -> Tensor:
    got: dict[str, Tensor] = {}

    def keep(x: Tensor, _n: str) -> None:
        got["out"] = x

    last = lm.n_layers - 1
    lm.run_with_cache(
        ids,
        [],
        attention_mask=mask,
        extra_hooks=[(hook_name(last, "hook_resid_post"), keep)],
        stop_after_layer=last,
    )
    return got["out"]


def final_logprobs(lm: LoadedModel, seqs: Sequence[Sequence[int]]) -> Tensor:
    """Next-token log-probs at each sequence's last position, ``[n, d_vocab]`` float64."""
    out = torch.empty(len(seqs), lm.d_vocab, dtype=torch.float64)
    for idx in _batches(seqs):
        ids, mask = pad_right(lm, [list(seqs[i]) for i in idx])
        pos = (mask.sum(1) - 1).to(lm.device)
        resid = _final_resid(lm, ids, mask)
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
        }


def measure_target(lm: LoadedModel, prompts: PromptSet) -> TargetResult:
    lp = final_logprobs(lm, prompts.ids)
    t = lp[:, prompts.target_id]
    top_ids = lp.argmax(-1).tolist()
    diff = wins = None
    if prompts.contrast_id is not None:
        c = lp[:, prompts.contrast_id]
        diff = (t - c).tolist()
        wins = [bool(x) for x in (c > t).tolist()]
    return TargetResult(
        prob=t.exp().tolist(),
        logprob=t.tolist(),
        diff=diff,
        top=[lm.token_str(int(i)) for i in top_ids],
        top_is_target=[int(i) == prompts.target_id for i in top_ids],
        contrast_wins=wins,
    )


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
    target_id: int
    base_loss: float = float("nan")
    on_target_tokens: int = 0
    """Scored positions where the original model predicts the target (left out of ``kl``)."""
    _cache: list[Tensor] | None = field(default=None, repr=False)
    _batches: list[list[int]] = field(default_factory=list, repr=False)
    _on_target: list[Tensor] = field(default_factory=list, repr=False)

    @property
    def n_tokens(self) -> int:
        """Positions whose next token is scored (all but each sequence's last)."""
        return sum(len(s) - 1 for s in self.seqs)

    def _logprobs(self, lm: LoadedModel, idx: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        """Log-probs ``[b, p, V]`` (float32), the next tokens and the mask of scored positions."""
        ids, mask = pad_right(lm, [self.seqs[i] for i in idx])
        resid = _final_resid(lm, ids, mask)
        lp = torch.log_softmax(lm.unembed(resid[:, :-1]).float(), -1).cpu()
        scored = mask[:, 1:].bool() & mask[:, :-1].bool()
        return lp, ids[:, 1:].cpu(), scored.cpu()

    def prepare(self, lm: LoadedModel) -> None:
        """Measure the original model (call with the weights unedited)."""
        # a batch's log-probs over the vocabulary stay under about 256 MiB
        self._batches = _batches(self.seqs, max(256, min(_BATCH_TOKENS, 2**26 // lm.d_vocab)))
        nll, n = 0.0, 0
        cache: list[Tensor] = []
        size = self.n_tokens * lm.d_vocab * 4
        for idx in self._batches:
            lp, nxt, scored = self._logprobs(lm, idx)
            nll -= float(lp.gather(-1, nxt[..., None])[..., 0][scored].double().sum())
            n += int(scored.sum())
            self._on_target.append((lp.argmax(-1) == self.target_id) & scored)
            if size <= _CACHE_BYTES:
                cache.append(lp)
        self.base_loss = nll / max(n, 1)
        self._cache = cache if size <= _CACHE_BYTES else None
        self.on_target_tokens = sum(int(o.sum()) for o in self._on_target)

    def measure(self, lm: LoadedModel, original: LoadedModel | None = None) -> dict[str, float]:
        """Side effects: ``kl``, the mean KL(original || edited) per token at the positions
        where the original model's top prediction is not the target, and its 95th
        percentile; ``kl_all``, the mean over every position; the loss and its change.

        Without a cache (large vocabularies), `original` must be an unedited model of the
        same weights (it may be `lm` itself only when nothing is edited)."""
        if not self._batches:
            raise RuntimeError("SideEffects.prepare must run on the original model first")
        kls: list[Tensor] = []
        off: list[Tensor] = []
        nll, n = 0.0, 0
        for b, idx in enumerate(self._batches):
            lp, nxt, scored = self._logprobs(lm, idx)
            if self._cache is not None:
                base = self._cache[b]
            else:
                if original is None:
                    raise RuntimeError("no cached original log-probs: pass the original model")
                base, _, _ = self._logprobs(original, idx)
            kl = (base.exp() * (base - lp)).sum(-1).clamp_min(0)
            kls.append(kl[scored].double())
            off.append(kl[scored & ~self._on_target[b]].double())
            nll -= float(lp.gather(-1, nxt[..., None])[..., 0][scored].double().sum())
            n += int(scored.sum())
        allkl, offkl = torch.cat(kls), torch.cat(off)
        return {
            "kl": float(offkl.mean()) if len(offkl) else 0.0,
            "kl_all": float(allkl.mean()),
            "kl_p95": float(torch.quantile(offkl.float(), 0.95)) if len(offkl) else 0.0,
            "loss": nll / max(n, 1),
            "loss_change": nll / max(n, 1) - self.base_loss,
        }
