"""Cue swaps: which earlier word decides a neuron's firing, and which heads carry it.

On each top prompt of a neuron, the verify stage looks for the prompt's *cue*: an
earlier word whose replacement by another word of its kind lowers the neuron's
activation at the firing position. Then, for every head that can drive the neuron, it
patches that head's output from the swapped run into the clean run (at every position)
and measures the neuron again: the share of the activation that goes is what the head
carries of the cue. This is the counterfactual the look-up claim makes ("the head reads
the word and drives the neuron"); where the head attends is not used.

- *Another word of its kind* is a filler of the same slot: a word seen between the same
  two neighbours in the run's prompts (e.g. after " in" and before ","), else after the
  same left neighbour. Each slot offers its `VerifyConfig.swap_fillers` most frequent
  fillers, special tokens and the word itself left out.
- Candidate positions are screened to first order: the gradient of the activation with
  respect to the input embeddings, dotted with the embedding change of each filler,
  estimates each swap's effect in one backward pass per prompt. The
  `VerifyConfig.swap_screen` positions with the largest estimated drop (each with its
  best filler) are swapped for real, and those whose swap removes at least
  `VerifyConfig.swap_min_drop` of the activation are the prompt's cues, strongest first
  (at most `VerifyConfig.swap_max_cues`).
- The last `VerifyConfig.swap_skip_last` tokens of the prompt (the firing token and the
  words just before it: the trigger that local heads read) are never cues: a look-up
  reads further back.

Rows, added to ``effects``: ``cue_swap`` (the whole swap: the cue's effect on the neuron
and on log p(token)), ``head_source_swap`` with ``head_layer``/``head`` (only that head's
output from the swapped run). Both carry ``swap_position`` and ``swap_token_id``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lookuplens.attribute import upstream_layers
from lookuplens.interventions import Row, forward, head_edit
from lookuplens.model import HookFn, LoadedModel, hook_name, pad_right


class SlotIndex:
    """Which words fill which slot in a set of prompts (see the module docstring)."""

    def __init__(self, prompts: Iterable[Sequence[int]], skip: Iterable[int] = ()) -> None:
        self.skip = {int(t) for t in skip}
        both: dict[tuple[int, int], Counter[int]] = {}
        left: dict[int, Counter[int]] = {}
        for toks in prompts:
            t = [int(x) for x in toks]
            for i in range(1, len(t)):
                if t[i] in self.skip:
                    continue
                left.setdefault(t[i - 1], Counter())[t[i]] += 1
                if i + 1 < len(t):
                    both.setdefault((t[i - 1], t[i + 1]), Counter())[t[i]] += 1
        self._both = both
        self._left = left

    def fillers(self, prev: int, nxt: int | None, word: int, k: int) -> list[int]:
        """Up to `k` words other than `word` seen between `prev` and `nxt` (most frequent
        first, ties by token id), else after `prev`."""
        pair = self._both.get((prev, nxt)) if nxt is not None else None
        for counts in (pair, self._left.get(prev)):
            if not counts:
                continue
            ranked = sorted((-c, t) for t, c in counts.items() if t != word)
            if ranked:
                return [t for _, t in ranked[:k]]
        return []


@dataclass(eq=False)
class Cue:
    """One swap of one top prompt."""

    row: Row
    position: int
    replacement: int
    estimate: float
    """First-order estimate of the change of activation."""
    row_activation: float
    """The neuron's activation on the clean prompt."""
    logprobs: Tensor | None = None
    """Next-token log-probs of the swapped prompt."""
    activation: float | None = None
    """The neuron's activation on the swapped prompt."""
    donor: dict[int, Tensor] | None = None
    """``z`` ``[p, H, d_head]`` of each upstream layer in the swapped run."""

    @property
    def tokens(self) -> list[int]:
        t = list(self.row.tokens)
        t[self.position] = self.replacement
        return t


@dataclass(frozen=True)
class SwapSettings:
    """The knobs of `cue_swaps` (`VerifyConfig`'s ``swap_*`` fields)."""

    fillers: int
    screen: int
    min_drop: float
    max_cues: int
    skip_last: int
    heads: int
    """Heads patched per cue: those with the largest first-order estimate; 0: every head."""
    batch_rows: int
    attended: bool = False
    """Also swap, per prompt, the position each of its neuron's `cue_swaps` ``readers``
    attends to most from the firing token (whatever the first-order estimate says)."""


@dataclass
class _Clean:
    """What one backward pass of the clean prompts gives."""

    grad_embed: Tensor
    """``[B, p, d_model]`` d(activation)/d(input embedding)."""
    grad_z: dict[int, Tensor]
    """Per upstream layer ``[B, p, H, d_head]`` d(activation)/d(z) (only for the head
    screen, ``SwapSettings.heads`` > 0; else empty)."""
    z: dict[int, Tensor]
    """Per upstream layer ``[B, p, H, d_head]`` z of the clean run (as `grad_z`)."""
    activation: Tensor
    """``[B]`` the neuron's activation at the last position."""
    attention: dict[int, Tensor]
    """Per layer of the rows' readers ``[B, H, p]`` the attention from the last position
    (only with `SwapSettings.attended`; else empty)."""


def cue_swaps(
    lm: LoadedModel,
    rows: list[Row],
    slots: SlotIndex,
    cfg: SwapSettings,
    on_done: Callable[[int, int], None] | None = None,
    readers: Mapping[tuple[int, int], Sequence[tuple[int, int]]] | None = None,
) -> Iterator[tuple[Cue, tuple[int, int] | None, Tensor, float]]:
    """(cue, head or None, log-probs, activation) of every cue of every row: with head
    None the whole swap, else only that head's output patched in from the swapped run.
    `readers` maps a (layer, neuron) to the heads whose most-attended position is also a
    candidate (with `SwapSettings.attended`). `on_done(rows done, rows)` reports progress."""
    readers = readers or {}
    by_layer: dict[int, list[Row]] = {}
    for r in rows:
        by_layer.setdefault(r.layer, []).append(r)
    done = 0
    for layer, rs in sorted(by_layer.items()):
        for j in range(0, len(rs), cfg.batch_rows):
            part = rs[j : j + cfg.batch_rows]
            read = [readers.get((r.layer, r.neuron), ()) if cfg.attended else () for r in part]
            clean = _clean_grads(lm, part, layer, with_z=cfg.heads > 0, read=read)
            cands = _screen(lm, part, clean, slots, cfg, read)
            _run_swaps(lm, cands, layer, cfg.batch_rows)
            cues = _strongest(cands, cfg)
            chosen = {id(c) for c in cues}
            for c in cands:
                if id(c) not in chosen:
                    c.donor = None
            _add_logprobs(lm, cues, cfg.batch_rows)
            for c in cues:
                assert c.logprobs is not None and c.activation is not None
                yield c, None, c.logprobs, c.activation
            index = {id(r): i for i, r in enumerate(part)}
            jobs = [(c, h) for c in cues for h in _heads(lm, c, index[id(c.row)], clean, cfg)]
            for c, h, lp, act in _head_patches(lm, part, jobs, cfg.batch_rows):
                yield c, h, lp, act
            done += len(part)
            if on_done is not None:
                on_done(done, len(rows))


def _clean_grads(
    lm: LoadedModel,
    rows: list[Row],
    layer: int,
    with_z: bool,
    read: Sequence[Sequence[tuple[int, int]]] = (),
) -> _Clean:
    """One forward and backward pass of the clean prompts (see `_Clean`); the heads' ``z``
    and its gradient only `with_z`; the attention from the last position of the layers of
    the heads in `read` (one list per row)."""
    ids, mask = pad_right(lm, [r.tokens for r in rows])
    pos = mask.sum(1) - 1
    cols = torch.tensor([r.neuron for r in rows])
    layers = upstream_layers(lm, layer) if with_z else []
    leaf: dict[str, Tensor] = {}
    zs: dict[int, Tensor] = {}
    got: dict[str, Tensor] = {}

    def track(x: Tensor, _n: str) -> Tensor:
        x = x.detach().requires_grad_(True)
        leaf["x"] = x
        return x

    def grab(x: Tensor, _n: str) -> None:
        got["post"] = x

    attention: dict[int, Tensor] = {}

    def last_row(hl: int) -> HookFn:
        def fn(x: Tensor, _n: str) -> None:
            attention[hl] = x[torch.arange(len(rows)), :, pos].detach().double().cpu()

        return fn

    hooks: list[tuple[str, HookFn]] = [(hook_name(0, "hook_resid_pre"), track)]
    hooks += [(hook_name(hl, "attn.hook_z"), _keep(zs, hl, detach=False)) for hl in layers]
    read_layers = sorted({hl for heads in read for hl, _ in heads if hl <= layer})
    hooks += [(hook_name(hl, "attn.hook_pattern"), last_row(hl)) for hl in read_layers]
    hooks.append((hook_name(layer, "mlp.hook_post"), grab))
    lm.run_with_cache(
        ids, [], attention_mask=mask, stop_after_layer=layer, extra_hooks=hooks, grad=True
    )
    target = got["post"][torch.arange(len(rows)), pos, cols].sum()
    grads = torch.autograd.grad(target, [leaf["x"], *(zs[hl] for hl in layers)], allow_unused=True)
    g_z = {
        hl: (torch.zeros_like(zs[hl]) if g is None else g).detach().double().cpu()
        for hl, g in zip(layers, grads[1:], strict=True)
    }
    return _Clean(
        grads[0].detach().double().cpu(),
        g_z,
        {hl: zs[hl].detach().double().cpu() for hl in layers},
        got["post"][torch.arange(len(rows)), pos, cols].detach().double().cpu(),
        attention,
    )


def _screen(
    lm: LoadedModel,
    rows: list[Row],
    clean: _Clean,
    slots: SlotIndex,
    cfg: SwapSettings,
    read: Sequence[Sequence[tuple[int, int]]] = (),
) -> list[Cue]:
    """The candidate swaps of each row: the `cfg.screen` positions with the largest
    estimated drop of the activation, each with the filler estimated to lower it most,
    and the position each head of ``read[i]`` attends to most from the last token (the
    first-order estimate misjudges a far-back word that a head reads: swapping one place
    for another changes what the head moves, not the word's own gradient)."""
    w_e = lm.W_E.detach()
    bos = lm.bos_token_id
    out: list[Cue] = []
    for i, r in enumerate(rows):
        # a leading BOS is never swapped; every candidate has both neighbours
        cands: list[tuple[float, int, int]] = []
        for s in range(1, len(r.tokens) - cfg.skip_last):
            if r.tokens[s] == bos:
                continue
            fill = slots.fillers(r.tokens[s - 1], r.tokens[s + 1], r.tokens[s], cfg.fillers)
            if not fill:
                continue
            delta = w_e[fill].double().cpu() - w_e[r.tokens[s]].double().cpu()  # [k, d]
            est = delta @ clean.grad_embed[i, s]
            k = int(torch.argmin(est))
            cands.append((float(est[k]), s, fill[k]))
        cands.sort()
        act = float(clean.activation[i])
        chosen = [(e, s, f) for e, s, f in cands[: cfg.screen] if e < 0]
        taken = {s for _, s, _ in chosen}
        by_pos = {s: (e, s, f) for e, s, f in cands}
        for hl, h in read[i] if i < len(read) else ():
            att = clean.attention.get(hl)
            if att is None:
                continue
            # the most attended position among those that can be swapped
            best = max(by_pos, key=lambda p: (float(att[i, h, p]), -p), default=None)
            if best is not None and best not in taken:
                chosen.append(by_pos[best])
                taken.add(best)
        out += [Cue(r, s, f, e, act) for e, s, f in chosen]
    return out


def _strongest(cands: list[Cue], cfg: SwapSettings) -> list[Cue]:
    """Per row, the swaps that remove at least `cfg.min_drop` of the activation, strongest
    first, at most `cfg.max_cues`."""
    by_row: dict[int, list[Cue]] = {}
    for c in cands:
        act = c.row_activation
        assert c.activation is not None
        if act > 0 and act - c.activation >= cfg.min_drop * act:
            by_row.setdefault(c.row.example_id, []).append(c)
    out: list[Cue] = []
    for rid in sorted(by_row):
        out += sorted(by_row[rid], key=lambda c: (c.activation, c.position))[: cfg.max_cues]
    return out


def _heads(
    lm: LoadedModel, c: Cue, i: int, clean: _Clean, cfg: SwapSettings
) -> list[tuple[int, int]]:
    """The heads to patch for cue `c` (row `i` of the clean batch): every upstream head, or
    the `cfg.heads` whose first-order estimate (d act/dz times the change of z) drops the
    activation most."""
    heads = [(hl, h) for hl in upstream_layers(lm, c.row.layer) for h in range(lm.n_heads)]
    if cfg.heads <= 0 or cfg.heads >= len(heads):
        return heads
    assert c.donor is not None
    n = len(c.row.tokens)
    est = []
    for hl in upstream_layers(lm, c.row.layer):
        dz = c.donor[hl].double() - clean.z[hl][i, :n]
        est.append((clean.grad_z[hl][i, :n] * dz).sum(dim=(0, 2)))  # [H]
    flat = torch.cat(est)
    order = torch.argsort(flat, stable=True)[: cfg.heads]
    return sorted(heads[int(k)] for k in order)


def _keep(store: dict[int, Tensor], hl: int, detach: bool = True) -> HookFn:
    def fn(x: Tensor, _n: str) -> None:
        store[hl] = x.detach().cpu() if detach else x

    return fn


def _run_swaps(lm: LoadedModel, cues: list[Cue], layer: int, batch_rows: int) -> None:
    """Fill each cue's activation and donor ``z`` from its swapped prompt (the forward
    stops after the neurons' `layer`)."""
    post = hook_name(layer, "mlp.hook_post")
    layers = upstream_layers(lm, layer)
    names = [hook_name(hl, "attn.hook_z") for hl in layers]
    order = sorted(cues, key=lambda c: len(c.row.tokens))
    for j in range(0, len(order), batch_rows):
        part = order[j : j + batch_rows]
        ids, mask = pad_right(lm, [c.tokens for c in part])
        _, cache = lm.run_with_cache(
            ids, [*names, post], attention_mask=mask, stop_after_layer=layer
        )
        pos = mask.sum(1) - 1
        cols = torch.tensor([c.row.neuron for c in part])
        acts = cache[post][torch.arange(len(part)), pos, cols].double().cpu()
        for i, c in enumerate(part):
            n = len(c.row.tokens)
            c.activation = float(acts[i])
            c.donor = {
                hl: cache[nm][i, :n].detach().cpu().clone()
                for hl, nm in zip(layers, names, strict=True)
            }


def _add_logprobs(lm: LoadedModel, cues: list[Cue], batch_rows: int) -> None:
    """Fill each cue's next-token log-probs on its swapped prompt."""
    for j in range(0, len(cues), batch_rows):
        part = cues[j : j + batch_rows]
        rows = [
            Row(c.row.example_id, c.row.layer, c.row.neuron, c.tokens, c.row.token_id) for c in part
        ]
        lp, _ = forward(lm, rows, None)
        for i, c in enumerate(part):
            c.logprobs = lp[i]


def _head_patches(
    lm: LoadedModel,
    part: list[Row],
    jobs: list[tuple[Cue, tuple[int, int]]],
    batch_rows: int,
) -> Iterator[tuple[Cue, tuple[int, int], Tensor, float]]:
    """(cue, head, log-probs, activation) with the head's output patched in from the cue's
    swapped run, for each (cue, head) of `jobs` (cues of the clean rows `part`, all of
    one neuron layer). Prefix reuse: the clean batch's layer calls are recorded once, and
    a head of layer l is patched by replaying layers l.. only."""
    if not jobs:
        return
    layer = part[0].layer
    ids, mask = pad_right(lm, [r.tokens for r in part])
    calls, _ = lm.capture_layer_calls(ids, mask, lm.n_layers - 1)
    by_layer = {c.layer: c for c in calls}
    index = {id(r): i for i, r in enumerate(part)}
    width = ids.shape[1]
    jobs = sorted(jobs, key=lambda j: (j[1], index[id(j[0].row)], j[0].position))
    groups: dict[int, list[tuple[Cue, tuple[int, int]]]] = {}
    for job in jobs:
        groups.setdefault(job[1][0], []).append(job)
    chunks = [
        g[k : k + batch_rows]
        for _, g in sorted(groups.items())
        for k in range(0, len(g), batch_rows)
    ]
    for chunk in chunks:
        hl = chunk[0][1][0]
        rows = torch.tensor([index[id(c.row)] for c, _ in chunk])
        first = chunk[0][0].donor
        assert first is not None
        donor = torch.zeros((len(chunk), width, *first[hl].shape[1:]), dtype=first[hl].dtype)
        for i, (c, _h) in enumerate(chunk):
            assert c.donor is not None
            donor[i, : c.donor[hl].shape[0]] = c.donor[hl]
        got: dict[str, Tensor] = {}

        def grab(x: Tensor, _n: str, got: dict[str, Tensor] = got) -> None:
            got["post"] = x

        hooks = head_edit([h for _, h in chunk], {hl: donor})([c.row for c, _ in chunk])
        hooks.append((hook_name(layer, "mlp.hook_post"), grab))
        out = lm.replay_layers(calls, hl, lm.n_layers - 1, by_layer[hl].hidden[rows], rows, hooks)
        pos = mask[rows].sum(1) - 1
        at = torch.arange(len(chunk))
        logits = lm.unembed(out[at, pos]).double()
        lp = torch.log_softmax(logits, dim=-1).cpu()
        cols = torch.tensor([c.row.neuron for c, _ in chunk])
        act = got["post"][at, pos, cols].double().cpu()
        for i, (c, h) in enumerate(chunk):
            yield c, h, lp[i], float(act[i])
