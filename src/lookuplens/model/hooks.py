"""Hook point names, in the dotted convention of TransformerLens.

A hook point is ``blocks.{layer}.{point}``; `hook_name` builds one and `parse_hook_name`
validates one. Shapes (b = batch, p = position, H = heads):

==========================  ==========================  =====================================
point                       shape                       what
==========================  ==========================  =====================================
``hook_resid_pre``          [b, p, d_model]             residual stream entering the block
``hook_resid_mid``          [b, p, d_model]             after attention, before the MLP norm
                                                        (sequential-residual models only)
``hook_resid_post``         [b, p, d_model]             residual stream leaving the block
``hook_attn_out``           [b, p, d_model]             attention output (all heads + bias)
``hook_mlp_in``             [b, p, d_model]             the MLP's normed input
``hook_mlp_out``            [b, p, d_model]             MLP output
``attn.hook_z``             [b, p, H, d_head]           per-head mix of values, before o_proj
``attn.hook_result``        [b, p, H, d_model]          per-head output written to the residual
                                                        (z_h @ W_O[h]; the bias is not in it)
``attn.hook_pattern``       [b, H, p_q, p_k]            attention weights (capture only)
``mlp.hook_pre``            [b, p, d_mlp]               neuron pre-activation (gate for gated)
``mlp.hook_pre_linear``     [b, p, d_mlp]               up projection (gated MLPs only)
``mlp.hook_post``           [b, p, d_mlp]               neuron activation
==========================  ==========================  =====================================
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import Tensor

HookFn = Callable[[Tensor, str], "Tensor | None"]
"""A hook function: gets the activation and the hook name; returns None to leave the
activation as it is, or a tensor of the same shape to replace it."""

POINTS: tuple[str, ...] = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_in",
    "hook_mlp_out",
    "attn.hook_z",
    "attn.hook_result",
    "attn.hook_pattern",
    "mlp.hook_pre",
    "mlp.hook_pre_linear",
    "mlp.hook_post",
)

_NAME_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def hook_name(layer: int, point: str) -> str:
    """Build the name of a hook point, e.g. ``hook_name(3, "mlp.hook_post")``."""
    if point not in POINTS:
        raise ValueError(f"unknown hook point {point!r}; known points: {', '.join(POINTS)}")
    if layer < 0:
        raise ValueError(f"layer must be >= 0, got {layer}")
    return f"blocks.{layer}.{point}"


def parse_hook_name(name: str, n_layers: int | None = None) -> tuple[int, str]:
    """Split ``blocks.{l}.{point}`` into ``(l, point)``, validating both parts."""
    m = _NAME_RE.match(name)
    if m is None or m.group(2) not in POINTS:
        raise ValueError(
            f"bad hook name {name!r}: expected 'blocks.<layer>.<point>' with point one of "
            f"{', '.join(POINTS)}"
        )
    layer = int(m.group(1))
    if n_layers is not None and layer >= n_layers:
        raise ValueError(f"hook {name!r}: layer {layer} is out of range (model has {n_layers})")
    return layer, m.group(2)
