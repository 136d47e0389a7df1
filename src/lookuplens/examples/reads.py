"""What a model computes on a batch of prompts at their last token: a neuron's activation
and its heads' direct attributions (`activation_and_heads_at`), one head's attention
(`last_token_attention`) and the word the neuron's top head reads (`top_head_reads`).

Prompts are right-padded into batches of at most `batch_tokens` padded tokens; each forward
pass stops as early as the wanted values allow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from lookuplens.attribute.readout import (
    decompose_neuron_input,
    frozen_norm_direction,
    mlp_stream_point,
    neuron_act,
)
from lookuplens.model import LoadedModel, hook_name, pad_right

__all__ = [
    "activation_and_heads_at",
    "last_token_attention",
    "neuron_activation_at",
    "top_head_reads",
]


def neuron_activation_at(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    neurons: Sequence[tuple[int, int]],
    batch_tokens: int = 8192,
) -> np.ndarray:
    """The activation of ``neurons[i]`` at the last token of ``prompts[i]``, for every i.

    Prompts are grouped by the neuron's layer and right-padded into batches; each forward
    stops where that layer's MLP reads the residual stream, and only the wanted neurons
    are computed there, at the last positions (the layer's own MLP is never run).
    """
    return activation_and_heads_at(lm, prompts, neurons, None, batch_tokens)[0]


def activation_and_heads_at(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    neurons: Sequence[tuple[int, int]],
    heads: Sequence[Sequence[tuple[int, int]]] | None,
    batch_tokens: int = 8192,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """`neuron_activation_at`, and with `heads` also the exact direct attribution of each
    head ``heads[i][j]`` (layer, head) to ``neurons[i]`` at the last token (the norm-aware
    `direct` method of `lookuplens.attribute`), from the same forward passes."""
    out = np.empty(len(prompts), dtype=np.float64)
    head_out: list[np.ndarray] = [np.empty(0)] * len(prompts)
    layer_of = [int(n[0]) for n in neurons]
    order: np.ndarray | list[int] = (
        np.lexsort(([len(p) for p in prompts], layer_of)) if len(prompts) else []
    )
    start = 0
    while start < len(order):
        layer = layer_of[order[start]]
        stop = start + 1
        while (
            stop < len(order)
            and layer_of[order[stop]] == layer
            and len(prompts[order[stop]]) * (stop - start + 1) <= batch_tokens
        ):
            stop += 1
        rows = order[start:stop]
        ids, mask = pad_right(lm, [prompts[r] for r in rows])
        last = torch.tensor([len(prompts[r]) - 1 for r in rows])
        cols = torch.tensor([int(neurons[r][1]) for r in rows])
        point = mlp_stream_point(lm, layer)
        got: dict[str, Tensor] = {}

        def grab(x: Tensor, _n: str, got: dict[str, Tensor] = got, last: Tensor = last) -> None:
            got["x"] = x[torch.arange(len(last)), last]

        z_layers = sorted({hl for r in rows for hl, _ in heads[r]}) if heads else []
        z_names = [hook_name(hl, "attn.hook_z") for hl in z_layers]
        _, cache = lm.run_with_cache(
            ids, z_names, attention_mask=mask, extra_hooks=[(point, grab)], stop_at=point
        )
        with torch.no_grad():
            x = lm.mlp_norm(layer)(got["x"])
            out[rows] = neuron_act(lm, layer, x, cols.to(x.device)).double().cpu().numpy()
            if z_layers and heads is not None:
                w_in = lm.W_in(layer)[cols.to(x.device)].detach()
                w_eff, _ = frozen_norm_direction(lm, layer, got["x"], w_in)  # [B, d]
                at = torch.arange(len(rows))
                for i, r in enumerate(rows):
                    vals = []
                    for hl, h in heads[r]:
                        z = cache[hook_name(hl, "attn.hook_z")][at[i], last[i], h].double()
                        vals.append(float(z @ lm.W_O(hl)[h].double() @ w_eff[i].double()))
                    head_out[r] = np.array(vals, dtype=np.float64)
        start = stop
    return out, head_out


def last_token_attention(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    layer: int,
    head: int,
    batch_tokens: int = 8192,
) -> list[np.ndarray]:
    """Head (layer, head)'s attention from the last position of each prompt over all its
    positions (BOS included); one array of length ``len(prompt)`` per prompt."""
    out: list[np.ndarray] = [np.empty(0)] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    name = hook_name(layer, "attn.hook_pattern")
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and len(prompts[order[stop]]) * (stop - start + 1) <= batch_tokens:
            stop += 1
        rows = order[start:stop]
        ids, mask = pad_right(lm, [prompts[r] for r in rows])
        _, cache = lm.run_with_cache(ids, [name], attention_mask=mask, stop_after_layer=layer)
        pattern = cache[name]
        for i, r in enumerate(rows):
            n = len(prompts[r])
            out[r] = pattern[i, head, n - 1, :n].double().cpu().numpy()
        start = stop
    return out


def top_head_reads(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    neurons: Sequence[tuple[int, int]],
    batch_tokens: int = 8192,
) -> list[int]:
    """For each prompt, the index of the token the neuron's top head reads: the upstream
    head with the largest exact direct attribution to ``neurons[i]`` at the last position,
    and the position it attends to most from there (BOS, when the model has one, and the
    last token itself left out); -1 when it attends to nothing else."""
    bos_first = lm.bos_token_id is not None
    out = [-1] * len(prompts)
    jobs: dict[tuple[int, int], list[int]] = {}
    for i, (prompt, (layer, neuron)) in enumerate(zip(prompts, neurons, strict=True)):
        dec = decompose_neuron_input(lm, torch.tensor(list(prompt)), layer, neuron, len(prompt) - 1)
        heads = {k: v for k, v in dec.terms.items() if k.startswith("L") and "H" in k}
        if not heads:
            continue
        top = max(heads, key=lambda k: (heads[k], k))
        hl, h = (int(x) for x in top[1:].split("H"))
        jobs.setdefault((hl, h), []).append(i)
    for (hl, h), idx in jobs.items():
        pats = last_token_attention(lm, [prompts[i] for i in idx], hl, h, batch_tokens)
        for i, att in zip(idx, pats, strict=True):
            att = att.copy()
            att[-1] = 0.0  # the last token itself
            if bos_first:
                att[0] = 0.0
            if len(att) >= 2 and att.max() > 0:
                out[i] = int(np.argmax(att))
    return out
