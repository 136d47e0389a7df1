"""A neuron's input read along its direction: the upstream layers, the MLP norm frozen at
one residual (so each component's direct share is exact), and the neuron's activation.

Shared by the attribute stage (`direct` and `path_patching`), examples (trimming), the
offline explainer's look-up scores, ``lookuplens why`` and the dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lookuplens.model import LoadedModel, hook_name

__all__ = [
    "Decomposition",
    "decompose_neuron_input",
    "frozen_norm_direction",
    "mlp_stream_point",
    "neuron_act",
    "norm_readout",
    "upstream_layers",
]


def upstream_layers(lm: LoadedModel, layer: int, include_same_layer: bool = True) -> list[int]:
    """Layers whose heads can drive a neuron in `layer` (see `lookuplens.attribute`)."""
    same = include_same_layer and not lm.parallel_residual
    return list(range(layer + 1 if same else layer))


def mlp_stream_point(lm: LoadedModel, layer: int) -> str:
    """The hook point of the residual stream that layer `layer`'s MLP norm reads."""
    return hook_name(layer, "hook_resid_pre" if lm.parallel_residual else "hook_resid_mid")


def norm_readout(lm: LoadedModel, layer: int, w: Tensor) -> Tensor:
    """Read-out directions `w` ([..., d]) moved before the MLP norm's gain and (LayerNorm)
    centring, in float64: the direction up to the norm's per-position scale."""
    p = lm.norm_params(lm.mlp_norm(layer))
    g = p.weight.double().to(w.device) * w.double()
    if p.kind == "layernorm":
        g = g - g.mean(dim=-1, keepdim=True)  # centring, moved onto w
    return g


def frozen_norm_direction(
    lm: LoadedModel, layer: int, x: Tensor, w: Tensor
) -> tuple[Tensor, Tensor]:
    """Linearise the MLP norm at residual `x` ([b, d]) for read-out directions `w` ([b, d]).

    Returns ``(w_eff, const)`` with ``norm(y) . w == y . w_eff + const`` for every y that
    shares x's frozen scale (and, for LayerNorm, whose mean is removed by centring).
    """
    p = lm.norm_params(lm.mlp_norm(layer))
    x = x.double()
    if p.kind == "layernorm":
        scale = torch.sqrt(x.var(dim=-1, unbiased=False) + p.eps)
    else:
        scale = torch.sqrt((x * x).mean(dim=-1) + p.eps)
    w_eff = norm_readout(lm, layer, w) / scale[:, None]
    const = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    if p.bias is not None:
        const = const + (p.bias.double() * w.double()).sum(-1)
    return w_eff, const


@dataclass(frozen=True)
class Decomposition:
    """The direct terms of a neuron's (gate) pre-activation at one position."""

    terms: dict[str, float]
    """``embed``, ``L{l}H{h}`` (heads), ``L{l}.attn_bias``, ``L{l}.mlp``, ``bias`` (norm bias
    and the neuron's own bias)."""
    pre_activation: float
    """The measured pre-activation the terms sum to."""


def decompose_neuron_input(
    lm: LoadedModel, tokens: Tensor, layer: int, neuron: int, position: int
) -> Decomposition:
    """Exact direct decomposition of one neuron's pre-activation (see `direct`)."""
    ids = tokens.reshape(1, -1)
    names = [
        hook_name(0, "hook_resid_pre"),
        mlp_stream_point(lm, layer),
        hook_name(layer, "mlp.hook_pre"),
    ]
    head_layers = range(layer + (0 if lm.parallel_residual else 1))
    names += [hook_name(l_, "attn.hook_z") for l_ in head_layers]
    names += [hook_name(l_, "hook_mlp_out") for l_ in range(layer)]
    _, cache = lm.run_with_cache(ids, names, stop_after_layer=layer)
    x = cache[mlp_stream_point(lm, layer)][:, position]
    w = lm.W_in(layer)[neuron].detach()[None]
    w_eff, const = frozen_norm_direction(lm, layer, x, w)
    w_eff = w_eff[0]
    terms: dict[str, float] = {}
    emb = cache[hook_name(0, "hook_resid_pre")][0, position].double()
    terms["embed"] = float(emb @ w_eff)
    for l_ in head_layers:
        z = cache[hook_name(l_, "attn.hook_z")][0, position].double()  # [H, dh]
        w_o = lm.W_O(l_).double()  # [H, dh, d]
        per_head = torch.einsum("hd,hdm,m->h", z, w_o, w_eff)
        for h, v in enumerate(per_head.tolist()):
            terms[f"L{l_}H{h}"] = v
        b = lm.b_O(l_)
        if b is not None:
            terms[f"L{l_}.attn_bias"] = float(b.double() @ w_eff)
    for l_ in range(layer):
        terms[f"L{l_}.mlp"] = float(
            cache[hook_name(l_, "hook_mlp_out")][0, position].double() @ w_eff
        )
    b_in = lm.b_in(layer)
    terms["bias"] = float(const[0]) + (float(b_in[neuron]) if b_in is not None else 0.0)
    pre = float(cache[hook_name(layer, "mlp.hook_pre")][0, position, neuron])
    return Decomposition(terms=terms, pre_activation=pre)


def neuron_act(lm: LoadedModel, layer: int, x_normed_pre: Tensor, neurons: Tensor) -> Tensor:
    """Post-activation of `neurons[i]` given the MLP norm's output rows ``[n, d]``."""
    w_in = lm.W_in(layer)[neurons]  # [n, d]
    pre = (x_normed_pre * w_in).sum(-1)
    b_in = lm.b_in(layer)
    if b_in is not None:
        pre = pre + b_in[neurons]
    post = lm.act_fn(layer)(pre)
    w_up = lm.W_up(layer)
    if w_up is not None:
        up = (x_normed_pre * w_up[neurons]).sum(-1)
        b_up = lm.b_up(layer)
        if b_up is not None:
            up = up + b_up[neurons]
        post = post * up
    return post
