"""Weight edits of a Hugging Face model: what `lookuplens fix` proposes, measures and exports.

Three kinds, each a change of the model's own parameters (no hooks), so the edited model
runs anywhere plain `transformers` runs:

``path``
    Remove (scale 0) or scale what head H writes along neuron N's input direction. The
    direction is N's input weights moved before the MLP norm's gain and centring
    (`norm_readout`); for gated MLPs the gate's and the up projection's directions
    together. With Q an orthonormal basis of those directions, the head's output
    projection becomes ``W_O[H] - (1 - scale) W_O[H] Q Q^T``: a rank-one change (rank two
    for gated MLPs) after which the head's write into N's input is ``scale`` times what it
    was, at every position and on every input, and its write into any other neuron M's
    input changes by ``-(1 - scale)`` times its component along N's direction. Several path
    edits of one head with one scale are applied as one projection onto the span of their
    directions, so they compose exactly.
``neuron``
    Scale neuron N's output weights (its row of W_out).
``head``
    Scale head H's output projection (the attention output bias, shared by all heads,
    stays).
``logit``
    Remove (scale 0), scale or reverse (a negative scale) what neuron N writes along the
    target's logit direction: the target's unembedding minus the weighted unembeddings
    of its `alternatives` (the contrast token, or what the model predicts instead of the
    target on the prompts), moved before the final norm's gain and centring. A rank-one
    change of N's output weights: only its write along that one direction changes, so
    the edit moves probability between the target and its alternatives where N fires
    and leaves the rest of N's output alone.

Edits of the same model commute, and `applied` restores the weights exactly on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from lookuplens.attribute.readout import norm_readout
from lookuplens.errors import UserError
from lookuplens.model import LoadedModel

__all__ = [
    "EDIT_KINDS",
    "Edit",
    "EditKind",
    "apply_edits",
    "applied",
    "describe",
    "logit_direction",
    "neuron_directions",
]

EditKind = Literal["path", "neuron", "head", "logit"]
EDIT_KINDS: tuple[str, ...] = ("path", "neuron", "head", "logit")


@dataclass(frozen=True, order=True)
class Edit:
    """One weight edit; `scale` 0 removes, above 1 amplifies."""

    kind: EditKind
    scale: float
    layer: int | None = None
    """The neuron's layer (path and neuron edits)."""
    neuron: int | None = None
    head_layer: int | None = None
    """The head's layer (path and head edits)."""
    head: int | None = None
    token: int | None = None
    """The target token id (logit edits)."""
    alternatives: tuple[tuple[int, float], ...] = ()
    """(token id, weight) pairs, weights summing to 1: what the target's direction is
    taken against (logit edits)."""
    token_text: str = field(default="", compare=False)
    """The target as running text, for the name."""

    def __post_init__(self) -> None:
        need = {
            "path": ("layer", "neuron", "head_layer", "head"),
            "neuron": ("layer", "neuron"),
            "head": ("head_layer", "head"),
            "logit": ("layer", "neuron", "token"),
        }.get(self.kind)
        if need is None:
            raise ValueError(f"edit kind must be one of {', '.join(EDIT_KINDS)}, got {self.kind!r}")
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"a {self.kind} edit needs {', '.join(missing)}")

    @property
    def name(self) -> str:
        head = f"L{self.head_layer}H{self.head}"
        neuron = f"L{self.layer}N{self.neuron}"
        logit = f"{neuron}→logit({self.token_text or self.token})"
        what = {"path": f"{head}→{neuron}", "neuron": neuron, "head": head, "logit": logit}
        return f"{what[self.kind]} ×{self.scale:g}"

    def to_dict(self) -> dict[str, object]:
        d = {**asdict(self), "name": self.name}
        d["alternatives"] = [list(a) for a in self.alternatives]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Edit:
        keys = ("kind", "scale", "layer", "neuron", "head_layer", "head", "token", "token_text")
        kw = {k: d[k] for k in keys if d.get(k) is not None}
        alts: Any = d.get("alternatives") or []
        return cls(alternatives=tuple((int(a), float(w)) for a, w in alts), **kw)  # type: ignore[arg-type]


def describe(edits: Sequence[Edit]) -> str:
    return " + ".join(e.name for e in edits)


def check_edit(lm: LoadedModel, e: Edit) -> None:
    """Refuse an edit that names a layer, neuron or head the model does not have."""
    if e.layer is not None and not (0 <= e.layer < lm.n_layers and 0 <= e.neuron < lm.d_mlp):  # type: ignore[operator]
        raise UserError(f"{e.name}: the model has {lm.n_layers} layers of {lm.d_mlp} neurons")
    if e.head_layer is not None and not (
        0 <= e.head_layer < lm.n_layers and 0 <= e.head < lm.n_heads  # type: ignore[operator]
    ):
        raise UserError(f"{e.name}: the model has {lm.n_layers} layers of {lm.n_heads} heads")
    if e.token is not None and not all(
        0 <= t < lm.d_vocab for t in (e.token, *(a for a, _ in e.alternatives))
    ):
        raise UserError(f"{e.name}: a token id is outside the vocabulary of {lm.d_vocab}")
    if e.kind == "path":
        assert e.layer is not None and e.head_layer is not None
        upstream = e.head_layer < e.layer or (e.head_layer == e.layer and not lm.parallel_residual)
        if not upstream:
            raise UserError(
                f"{e.name}: the head does not write into the neuron's input (it is not "
                "upstream of the neuron's MLP)"
            )


def neuron_directions(lm: LoadedModel, layer: int, neuron: int) -> Tensor:
    """The residual-stream directions that neuron reads, ``[k, d_model]`` in float64 (k is 1,
    or 2 for a gated MLP: gate and up)."""
    rows = [lm.W_in(layer)[neuron]]
    up = lm.W_up(layer)
    if up is not None:
        rows.append(up[neuron])
    return norm_readout(lm, layer, torch.stack(rows))


def logit_direction(
    lm: LoadedModel, token: int, alternatives: Sequence[tuple[int, float]]
) -> Tensor:
    """The unit residual direction along which writing raises the target's logit against
    its alternatives (the final norm's gain and centring folded in), float64."""
    w_u = lm.W_U.double()
    w = w_u[:, token].clone()
    for t, weight in alternatives:
        w -= weight * w_u[:, t]
    p = lm.norm_params(lm.final_norm)
    d = p.weight.double().to(w.device) * w
    if p.kind == "layernorm":
        d = d - d.mean()
    return d / d.norm().clamp_min(1e-30)


def _path_matrix(lm: LoadedModel, paths: Sequence[Edit]) -> Tensor:
    """``I - (1 - scale) Q Q^T`` for the span of the paths' neuron directions."""
    dirs = torch.cat([neuron_directions(lm, e.layer, e.neuron) for e in paths])  # type: ignore[arg-type]
    q, r = torch.linalg.qr(dirs.T)  # [d_model, k]
    keep = r.diagonal().abs() > 1e-10 * r.diagonal().abs().max()
    q = q[:, keep]
    eye = torch.eye(lm.d_model, dtype=torch.float64, device=q.device)
    return eye - (1.0 - paths[0].scale) * (q @ q.T)


def _targets(lm: LoadedModel, edits: Sequence[Edit]) -> list[Tensor]:
    """The parameter views the edits write (for saving and restoring them)."""
    views: list[Tensor] = []
    for e in edits:
        if e.kind in ("neuron", "logit"):
            views.append(lm.W_out(e.layer)[e.neuron])  # type: ignore[arg-type]
        else:
            views.append(lm.W_O(e.head_layer)[e.head])  # type: ignore[arg-type]
    return views


def apply_edits(lm: LoadedModel, edits: Sequence[Edit]) -> None:
    """Change the model's weights in place (see the module docstring)."""
    for e in edits:
        check_edit(lm, e)
    with torch.no_grad():
        groups: dict[tuple[int, int, float], list[Edit]] = {}
        for e in edits:
            if e.kind == "path":
                groups.setdefault((e.head_layer, e.head, e.scale), []).append(e)  # type: ignore[arg-type]
        for (hl, h, _s), paths in sorted(groups.items()):
            w = lm.W_O(hl)[h]  # [d_head, d_model], a view of the parameter
            w.copy_((w.double() @ _path_matrix(lm, paths).to(w.device)).to(w.dtype))
        for e in edits:
            if e.kind == "neuron":
                lm.W_out(e.layer)[e.neuron].mul_(e.scale)  # type: ignore[arg-type]
            elif e.kind == "head":
                lm.W_O(e.head_layer)[e.head].mul_(e.scale)  # type: ignore[arg-type]
            elif e.kind == "logit":
                row = lm.W_out(e.layer)[e.neuron]  # type: ignore[arg-type]
                d = logit_direction(lm, e.token, e.alternatives).to(row.device)  # type: ignore[arg-type]
                r = row.double()
                row.copy_((r - (1.0 - e.scale) * (r @ d) * d).to(row.dtype))


@contextlib.contextmanager
def applied(lm: LoadedModel, edits: Sequence[Edit]) -> Iterator[None]:
    """The edits applied inside the block; the original weights restored bit for bit after."""
    views = _targets(lm, edits)
    saved = [v.detach().clone() for v in views]
    try:
        apply_edits(lm, edits)
        yield
    finally:
        with torch.no_grad():
            for v, s in zip(views, saved, strict=True):
                v.copy_(s)
