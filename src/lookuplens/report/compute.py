"""What the report needs the model for: per-token activations, attention, vocabulary.

The report stage stores their results in the run directory (`lookuplens.report.views`),
so reports and the dashboard only run them for run directories made before that.

Every function runs the model through `LoadedModel.run_with_cache` (hooks added and
removed by the adapter), stops after the last layer it needs, and keeps only the
slices it shows, so memory stays small even for long prompts and wide MLPs.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lookuplens.errors import UserError
from lookuplens.model import LoadedModel, hook_name, pad_right

log = logging.getLogger(__name__)

__all__ = [
    "ModelViews",
    "VocabTokens",
    "check_model_matches",
    "last_position_attention",
    "neuron_activations",
    "vocab_tokens",
]


@dataclass(frozen=True)
class VocabTokens:
    """The tokens a neuron's output vector promotes and suppresses most (W_out[n] @ W_U)."""

    promoted: tuple[tuple[int, float], ...]
    """(token id, congruence), largest first."""
    suppressed: tuple[tuple[int, float], ...]
    """(token id, congruence), most negative first."""


def check_model_matches(lm: LoadedModel, model_meta: object) -> None:
    """Raise UserError when `lm` is not the model the run was made with (by its sizes)."""
    if not isinstance(model_meta, dict):
        return
    for key in ("n_layers", "n_heads", "d_mlp", "d_vocab"):
        want = model_meta.get(key)
        have = getattr(lm, key)
        if isinstance(want, int) and want != have:
            raise UserError(
                f"the model passed to the report has {key}={have}, but the run was made with "
                f"{key}={want} ({model_meta.get('name')}); pass the run's model, or no model "
                "to build the report without activation and attention shading"
            )


def _batches(order: Sequence[int], size: int) -> list[list[int]]:
    return [list(order[i : i + size]) for i in range(0, len(order), size)]


def neuron_activations(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    neurons: Sequence[tuple[int, int]],
    batch_prompts: int = 16,
) -> list[np.ndarray]:
    """The activation (``mlp.hook_post``) of ``neurons[i]`` at every token of ``prompts[i]``.

    Returns one float64 array of length ``len(prompts[i])`` per prompt. Prompts are
    grouped by layer; each forward pass stops after that layer.
    """
    if len(prompts) != len(neurons):
        raise ValueError(f"{len(prompts)} prompts for {len(neurons)} neurons")
    out: list[np.ndarray] = [np.empty(0)] * len(prompts)
    by_layer: dict[int, list[int]] = defaultdict(list)
    for i, (layer, _) in enumerate(neurons):
        by_layer[int(layer)].append(i)
    for layer, idx in sorted(by_layer.items()):
        idx.sort(key=lambda i: len(prompts[i]))
        for part in _batches(idx, batch_prompts):
            ids, mask = pad_right(lm, [prompts[i] for i in part])
            cols = torch.tensor([neurons[i][1] for i in part], dtype=torch.long)
            got: dict[str, Tensor] = {}

            def grab(x: Tensor, _name: str, cols: Tensor = cols, got: dict = got) -> None:
                rows = torch.arange(x.shape[0], device=x.device)
                got["act"] = x[rows, :, cols.to(x.device)].detach().float().cpu()  # [b, p]

            lm.run_with_cache(
                ids,
                (),
                attention_mask=mask,
                stop_after_layer=layer,
                extra_hooks=[(hook_name(layer, "mlp.hook_post"), grab)],
            )
            act = got["act"].double().numpy()
            for j, i in enumerate(part):
                out[i] = act[j, : len(prompts[i])].copy()
    return out


def last_position_attention(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    head_layer: int,
    batch_prompts: int = 16,
) -> list[np.ndarray]:
    """Each head's attention of layer `head_layer` from the last token of ``prompts[i]``
    over its tokens (``attn.hook_pattern`` [b, H, q, k] at q = last): one float64 array
    ``[n_heads, len(prompts[i])]`` per prompt."""
    out: list[np.ndarray] = [np.empty(0)] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for part in _batches(order, batch_prompts):
        ids, mask = pad_right(lm, [prompts[i] for i in part])
        last = mask.sum(dim=1) - 1
        got: dict[str, Tensor] = {}

        def grab(x: Tensor, _name: str, last: Tensor = last, got: dict = got) -> None:
            rows = torch.arange(x.shape[0], device=x.device)
            got["pattern"] = x[rows, :, last.to(x.device), :].detach().float().cpu()  # [b,H,k]

        lm.run_with_cache(
            ids,
            (),
            attention_mask=mask,
            stop_after_layer=head_layer,
            extra_hooks=[(hook_name(head_layer, "attn.hook_pattern"), grab)],
        )
        pattern = got["pattern"].double().numpy()
        for j, i in enumerate(part):
            out[i] = pattern[j, :, : len(prompts[i])].copy()
    return out


def vocab_tokens(
    lm: LoadedModel,
    neurons: Sequence[tuple[int, int]],
    k: int = 10,
    mode: Literal["folded", "raw"] = "folded",
) -> dict[tuple[int, int], VocabTokens]:
    """The `k` most promoted and most suppressed tokens of each neuron, read from the
    weights the way the neurons stage reads them (`mode`, see `lookuplens.neurons`)."""
    from lookuplens.neurons import out_matrix, unembed_matrix

    result: dict[tuple[int, int], VocabTokens] = {}
    if not neurons or k == 0:
        return result
    w_u = unembed_matrix(lm, mode)
    by_layer: dict[int, list[int]] = defaultdict(list)
    for layer, neuron in neurons:
        by_layer[int(layer)].append(int(neuron))
    kk = min(k, w_u.shape[1])
    with torch.no_grad():
        for layer, ns in sorted(by_layer.items()):
            w_out = out_matrix(lm, layer, mode)[torch.tensor(ns, device=w_u.device)]
            cong = (w_out.to(w_u.device) @ w_u).float()  # [m, vocab]
            top_v, top_i = cong.topk(kk, dim=1)
            low_v, low_i = cong.topk(kk, dim=1, largest=False)
            for j, n in enumerate(ns):
                result[(layer, n)] = VocabTokens(
                    promoted=tuple(zip(top_i[j].tolist(), top_v[j].double().tolist(), strict=True)),
                    suppressed=tuple(
                        zip(low_i[j].tolist(), low_v[j].double().tolist(), strict=True)
                    ),
                )
    return result


@dataclass(frozen=True)
class ModelViews:
    """What the model computed for the prompts the report shows."""

    activations: dict[int, np.ndarray]
    """example_id -> its neuron's activation at every token of the prompt."""
    attention: dict[tuple[int, int, int], np.ndarray]
    """(example_id, head_layer, head) -> the head's attention from the last token to every
    token of the prompt."""
    vocab: dict[tuple[int, int], VocabTokens]
    """(layer, neuron) -> promoted and suppressed tokens."""
