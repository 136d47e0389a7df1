"""The weight edits of `lookuplens fix` are exact, on every supported family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from lookuplens.errors import UserError
from lookuplens.fix.edits import Edit, applied, apply_edits, neuron_directions
from lookuplens.model import LoadedModel, hook_name, load_model

PROMPT = "She bought an apple and a pear at the market."


@pytest.fixture
def lm(tiny_dirs: dict[str, Path], family: str) -> LoadedModel:
    return load_model(tiny_dirs[family], device="cpu")


def _layers(lm: LoadedModel) -> tuple[int, int]:
    """A neuron layer with an upstream head layer (parallel residual: an earlier one)."""
    layer = lm.n_layers - 1
    return layer, (layer - 1 if lm.parallel_residual else layer)


def _z(lm: LoadedModel, layer: int) -> Tensor:
    name = hook_name(layer, "attn.hook_z")
    _, cache = lm.run_with_cache(lm.to_tokens(PROMPT), [name])
    return cache[name][0].double()  # [pos, n_heads, d_head]


def _writes(lm: LoadedModel, z: Tensor, hl: int, h: int) -> Tensor:
    return z[:, h] @ lm.W_O(hl)[h].double()  # [pos, d_model]: the head's output


def _params(lm: LoadedModel) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in lm.hf.named_parameters()}


def test_path_edit_removes_exactly_the_heads_write_into_the_neuron(lm: LoadedModel) -> None:
    layer, hl = _layers(lm)
    n, h = 3, 1
    z = _z(lm, hl)
    before = _writes(lm, z, hl, h)
    d_n = neuron_directions(lm, layer, n)  # [k, d]
    others = [(layer, m) for m in (0, 5, 7)] + [(hl, 2)] * (hl != layer)
    d_others = {o: neuron_directions(lm, *o) for o in others}
    params = _params(lm)
    edit = Edit("path", 0.0, layer=layer, neuron=n, head_layer=hl, head=h)
    with applied(lm, [edit]):
        after = _writes(lm, z, hl, h)
        # the neuron's input from the head is 0 (every input direction, every position)
        scale = (before @ d_n.T).abs().max()
        assert (after @ d_n.T).abs().max() <= 1e-9 * max(float(scale), 1.0)
        assert scale > 1e-4  # the test is not vacuous
        # other neurons' inputs change only by their overlap with the removed directions
        q, _ = torch.linalg.qr(d_n.T)
        removed = before @ q @ q.T
        for d in d_others.values():
            torch.testing.assert_close(after @ d.T, (before - removed) @ d.T, rtol=0, atol=1e-7)
        # only that head's slice of the output projection changed
        changed = [k for k, v in lm.hf.named_parameters() if not torch.equal(v, params[k])]
        assert len(changed) == 1, changed
        assert changed[0].endswith(f"{hl}.{lm.spec.attn_out_proj}.weight")
    # restored bit for bit
    assert all(torch.equal(v, params[k]) for k, v in lm.hf.named_parameters())


def test_path_edit_scales_the_write(lm: LoadedModel) -> None:
    layer, hl = _layers(lm)
    z = _z(lm, hl)
    d = neuron_directions(lm, layer, 4)
    before = _writes(lm, z, hl, 0) @ d.T
    with applied(lm, [Edit("path", 2.5, layer=layer, neuron=4, head_layer=hl, head=0)]):
        after = _writes(lm, z, hl, 0) @ d.T
    torch.testing.assert_close(after, 2.5 * before, rtol=1e-6, atol=1e-9)


def test_paths_of_one_head_compose(lm: LoadedModel) -> None:
    """Two path edits of one head remove its write into both neurons (not only the last)."""
    layer, hl = _layers(lm)
    z = _z(lm, hl)
    edits = [Edit("path", 0.0, layer=layer, neuron=n, head_layer=hl, head=1) for n in (2, 9)]
    with applied(lm, edits):
        w = _writes(lm, z, hl, 1)
        for n in (2, 9):
            assert (w @ neuron_directions(lm, layer, n).T).abs().max() < 1e-9


def _last_logits(lm: LoadedModel, hooks: list | None = None) -> Tensor:  # type: ignore[type-arg]
    logits, _ = lm.run_with_cache(lm.to_tokens(PROMPT), [], extra_hooks=hooks or [])
    assert logits is not None
    return logits[0].double()


def test_head_edit_equals_zeroing_the_head(lm: LoadedModel) -> None:
    hl = lm.n_layers - 1

    def zero(zv: Tensor, _n: str) -> Tensor:
        zv = zv.clone()
        zv[:, :, 2] = 0
        return zv

    hooked = _last_logits(lm, [(hook_name(hl, "attn.hook_z"), zero)])
    with applied(lm, [Edit("head", 0.0, head_layer=hl, head=2)]):
        edited = _last_logits(lm)
    torch.testing.assert_close(edited, hooked, rtol=0, atol=1e-5)
    assert not torch.allclose(edited, _last_logits(lm), atol=1e-5)


@pytest.mark.parametrize("scale", [0.0, 3.0])
def test_neuron_edit_equals_scaling_the_neuron(lm: LoadedModel, scale: float) -> None:
    layer = 0

    def fn(x: Tensor, _n: str) -> Tensor:
        x = x.clone()
        x[:, :, 6] *= scale
        return x

    hooked = _last_logits(lm, [(hook_name(layer, "mlp.hook_post"), fn)])
    with applied(lm, [Edit("neuron", scale, layer=layer, neuron=6)]):
        edited = _last_logits(lm)
    torch.testing.assert_close(edited, hooked, rtol=0, atol=1e-5)


def test_bad_edits_are_one_clear_error(lm: LoadedModel) -> None:
    with pytest.raises(UserError, match="layers"):
        apply_edits(lm, [Edit("neuron", 0.0, layer=lm.n_layers, neuron=0)])
    with pytest.raises(UserError, match="not upstream"):
        apply_edits(lm, [Edit("path", 0.0, layer=0, neuron=0, head_layer=1, head=0)])
    with pytest.raises(ValueError, match="needs"):
        Edit("path", 0.0, layer=0, neuron=0)


@pytest.mark.parametrize("scale", [0.0, -2.0])
def test_logit_edit_changes_only_the_neurons_write_along_the_target_direction(
    lm: LoadedModel, scale: float
) -> None:
    from lookuplens.fix.edits import logit_direction

    layer, n, target, alts = 1, 5, 7, ((3, 0.75), (11, 0.25))
    d = logit_direction(lm, target, alts)
    before = lm.W_out(layer)[n].double().clone()
    edit = Edit("logit", scale, layer=layer, neuron=n, token=target, alternatives=alts)
    params = _params(lm)
    with applied(lm, [edit]):
        after = lm.W_out(layer)[n].double()
        # along the direction: scaled; across it: unchanged
        assert float(after @ d) == pytest.approx(scale * float(before @ d), abs=1e-6)
        ortho = before - (before @ d) * d
        torch.testing.assert_close(after - (after @ d) * d, ortho, rtol=0, atol=1e-6)
        changed = [k for k, v in lm.hf.named_parameters() if not torch.equal(v, params[k])]
        assert len(changed) == 1 and changed[0].endswith(f"{lm.spec.mlp_out}.weight")
    # the direction is the target's logit against its alternatives through the final
    # norm: for a residual change along it, the target's logit minus the alternatives'
    # weighted logits moves, a direction orthogonal to it does not move that difference
    w = lm.W_U[:, target].double() - sum(a * lm.W_U[:, t].double() for t, a in alts)
    g = lm.norm_params(lm.final_norm).weight.double()
    assert float((g * w) @ d) > 0
    assert Edit.from_dict(edit.to_dict()) == edit
