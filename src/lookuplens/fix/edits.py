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

Edits of the same model commute, and `applied` restores the weights exactly on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor

from lookuplens.attribute.readout import norm_readout
from lookuplens.errors import UserError
from lookuplens.model import LoadedModel

__all__ = ["Edit", "EditKind", "apply_edits", "applied", "describe", "neuron_directions"]

EditKind = Literal["path", "neuron", "head"]


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

    def __post_init__(self) -> None:
        need = {
            "path": ("layer", "neuron", "head_layer", "head"),
            "neuron": ("layer", "neuron"),
            "head": ("head_layer", "head"),
        }.get(self.kind)
        if need is None:
            raise ValueError(f"edit kind must be path, neuron or head, got {self.kind!r}")
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"a {self.kind} edit needs {', '.join(missing)}")

    @property
    def name(self) -> str:
        head = f"L{self.head_layer}H{self.head}"
        neuron = f"L{self.layer}N{self.neuron}"
        what = {"path": f"{head}→{neuron}", "neuron": neuron, "head": head}[self.kind]
        return f"{what} ×{self.scale:g}"

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "name": self.name}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Edit:
        keys = ("kind", "scale", "layer", "neuron", "head_layer", "head")
        return cls(**{k: d.get(k) for k in keys})  # type: ignore[arg-type]


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
        if e.kind == "neuron":
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
