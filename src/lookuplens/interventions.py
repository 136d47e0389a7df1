"""Interventions at a prompt's last position: the forward passes the verify stage and the
ground truth share.

A `Row` is one prompt and the neuron read at its last token; `forward` runs a batch of
rows with an optional edit (a function of the rows returning hooks) and returns the
next-token log-probs and the neuron's activation at each row's last position.
`neuron_edit` sets or scales neurons at every position; `head_edit` zeroes heads, or
patches in their ``z`` from another run, at every position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lookuplens.model import HookFn, LayerCall, LoadedModel, hook_name, pad_right


@dataclass(frozen=True)
class Row:
    example_id: int
    layer: int
    neuron: int
    tokens: list[int]
    token_id: int


def forward(
    lm: LoadedModel,
    rows: list[Row],
    edit: Callable[[list[Row]], list[tuple[str, HookFn]]] | None,
    calls: list[LayerCall] | None = None,
) -> tuple[Tensor, Tensor]:
    """Log-probs of the next token at each prompt's last position, and the neuron's activation.

    With `calls` (the batch's recorded layer calls), only the layers from the rows' first
    neuron layer on are run again.
    """
    ids, mask = pad_right(lm, [r.tokens for r in rows])
    pos = mask.sum(1) - 1
    acts = torch.empty(len(rows), dtype=torch.float64)
    by_layer: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_layer.setdefault(r.layer, []).append(i)
    hooks = list(edit(rows)) if edit is not None else []
    for layer, idx in by_layer.items():
        sel = torch.tensor(idx)
        cols = torch.tensor([rows[i].neuron for i in idx])

        def grab(x: Tensor, _n: str, sel: Tensor = sel, cols: Tensor = cols) -> None:
            acts[sel] = x[sel, pos[sel], cols].double().cpu()

        hooks.append((hook_name(layer, "mlp.hook_post"), grab))
    at = torch.arange(len(rows))
    if calls is None:
        # unembedded at the last positions only (a full LM head over every position costs
        # as much as the rest for a large vocabulary)
        out = final_residual(lm, ids, mask, hooks)
    else:
        # prefix reuse: layers before the first edited one are the same as in the clean run
        start = min(r.layer for r in rows)
        out = lm.replay_layers(calls, start, lm.n_layers - 1, calls[start].hidden, at, hooks=hooks)
    last = lm.unembed(out[at, pos.to(out.device)]).double()
    return torch.log_softmax(last, dim=-1).cpu(), acts


def final_residual(
    lm: LoadedModel, ids: Tensor, mask: Tensor, hooks: list[tuple[str, HookFn]] | None = None
) -> Tensor:
    """The last layer's output residual stream ``[b, p, d]`` (before the final norm), with
    `hooks` applied; the final norm and the LM head are not run."""
    got: dict[str, Tensor] = {}

    def keep(x: Tensor, _n: str) -> None:
        got["out"] = x

    last = lm.n_layers - 1
    extra = [*(hooks or []), (hook_name(last, "hook_resid_post"), keep)]
    lm.run_with_cache(ids, [], attention_mask=mask, extra_hooks=extra, stop_after_layer=last)
    return got["out"]


def neuron_edit(kind: str, value: dict[tuple[int, int], float] | float) -> Callable:
    def make(rows: list[Row]) -> list[tuple[str, HookFn]]:
        hooks: list[tuple[str, HookFn]] = []
        for layer in sorted({r.layer for r in rows}):
            idx = [i for i, r in enumerate(rows) if r.layer == layer]
            sel = torch.tensor(idx)
            cols = torch.tensor([rows[i].neuron for i in idx])
            if isinstance(value, dict):
                vals = torch.tensor([value[(layer, rows[i].neuron)] for i in idx])
            else:
                vals = torch.full((len(idx),), float(value))

            def fn(
                x: Tensor, _n: str, sel: Tensor = sel, cols: Tensor = cols, vals: Tensor = vals
            ) -> Tensor:
                x = x.clone()
                cur = x[sel, :, cols]  # [n, p]
                v = vals[:, None].to(x.device, x.dtype)
                new = cur * v if kind == "scale" else v.expand_as(cur)
                x[sel[:, None], torch.arange(x.shape[1])[None, :], cols[:, None]] = new
                return x

            hooks.append((hook_name(layer, "mlp.hook_post"), fn))
        return hooks

    return make


def head_edit(heads: list[tuple[int, int]], donor: dict[int, Tensor] | None = None) -> Callable:
    """Zero the head ``heads[i]`` for row i at every position, or with `donor` (``z`` of
    each head layer from another run of the same batch shape) patch in its value there."""

    def make(rows: list[Row]) -> list[tuple[str, HookFn]]:
        hooks: list[tuple[str, HookFn]] = []
        for hl in sorted({h[0] for h in heads}):
            idx = [i for i, h in enumerate(heads) if h[0] == hl]
            sel = torch.tensor(idx)
            hs = torch.tensor([heads[i][1] for i in idx])

            new = None if donor is None else donor[hl][sel, :, hs]

            def fn(
                z: Tensor, _n: str, sel: Tensor = sel, hs: Tensor = hs, new: Tensor | None = new
            ) -> Tensor:
                z = z.clone()
                z[sel, :, hs] = 0 if new is None else new.to(z.device, z.dtype)
                return z

            hooks.append((hook_name(hl, "attn.hook_z"), fn))
        return hooks

    return make


def kl(clean: Tensor, new: Tensor) -> np.ndarray:
    return (clean.exp() * (clean - new)).sum(-1).clamp_min(0).numpy()
