"""The neurons stage against a hand computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from lookuplens.errors import UserError
from lookuplens.model import load_model
from lookuplens.neurons import NeuronsConfig, find_neurons, layer_congruence, tracked


@pytest.mark.parametrize("fam", ["gpt2", "llama"])
@pytest.mark.parametrize("mode", ["folded", "raw"])
def test_congruence_equals_hand_computation(
    tiny_dirs: dict[str, Path], fam: str, mode: str
) -> None:
    lm = load_model(tiny_dirs[fam], device="cpu")
    cfg = NeuronsConfig(congruence=mode, neuron_block=7, vocab_block=33)  # uneven blocks
    layer = 1
    # hand computation, whole matrix at once, in float64
    w_out = lm.W_out(layer).double()
    w_u = lm.W_U.double()
    if mode == "folded":
        w_u = lm.final_norm.weight.double()[:, None] * w_u
        w_u = w_u - w_u.mean(dim=1, keepdim=True)
        if fam == "gpt2":  # LayerNorm removes the residual's mean: centre W_out
            w_out = w_out - w_out.mean(dim=1, keepdim=True)
    full = (w_out @ w_u).numpy()
    lc = layer_congruence(lm, layer, cfg)
    np.testing.assert_allclose(lc.top_value, full.max(axis=1), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(lc.top_token, full.argmax(axis=1))
    np.testing.assert_allclose(lc.skew, stats.skew(full, axis=1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        lc.kurtosis, stats.kurtosis(full, axis=1, fisher=False), rtol=1e-4, atol=1e-6
    )


def test_selection_follows_filter_and_baseline_is_disjoint(tiny_dirs: dict[str, Path]) -> None:
    lm = load_model(tiny_dirs["gpt2"], device="cpu")
    paper = find_neurons(lm, NeuronsConfig(top_n=4, seed=3)).to_pandas()
    assert len(paper) == lm.n_layers * lm.d_mlp
    sel = paper[paper.selected]
    assert len(sel) > 0
    assert sel.token.str.startswith(" ").all() and (sel.token.str.len() > 2).all()
    # within a layer, a selected neuron beats every unselected neuron passing the filter
    for _, g in paper.groupby("layer"):
        ok = g.token.str.startswith(" ") & (g.token.str.len() > 2)
        rest = g[ok & ~g.selected]
        if len(rest):
            assert (g.selected.sum() == 4) and g[
                g.selected
            ].congruence.min() >= rest.congruence.max()
    table = find_neurons(lm, NeuronsConfig(top_n=4, seed=3, token_filter="none")).to_pandas()
    assert (table[table.selected].groupby("layer").size() == 4).all()
    assert not (table.selected & table.baseline).any()
    assert (table[table.baseline].groupby("layer").size() == 4).all()
    for _, g in table.groupby("layer"):
        assert g[g.selected].congruence.min() >= g[~g.selected].congruence.max()
    cfg = NeuronsConfig(top_n=4, seed=3, token_filter="none")
    assert find_neurons(lm, cfg).to_pandas().equals(table)
    other = find_neurons(lm, NeuronsConfig(top_n=4, seed=4, token_filter="none")).to_pandas()
    assert not (other.baseline == table.baseline).all()
    assert len(tracked(find_neurons(lm, cfg))) == 16


def test_token_targeted_selection(tiny_dirs: dict[str, Path]) -> None:
    lm = load_model(tiny_dirs["gpt2"], device="cpu")
    an = lm.tokenizer(" an", add_special_tokens=False)["input_ids"]
    assert len(an) == 1
    table = find_neurons(lm, NeuronsConfig(top_n=2, tokens=(" an",), layers=(-1,))).to_pandas()
    sel = table[table.selected]
    assert len(sel) == 2 and (sel.target_token_id == an[0]).all()
    w = lm.W_out(1).double() - lm.W_out(1).double().mean(1, keepdim=True)
    w_u = lm.final_norm.weight.double()[:, None] * lm.W_U.double()
    col = (w @ (w_u - w_u.mean(1, keepdim=True)))[:, an[0]]
    assert set(sel.neuron) == set(torch.topk(col, 2).indices.tolist())


def test_bad_layer_and_token(tiny_dirs: dict[str, Path]) -> None:
    lm = load_model(tiny_dirs["gpt2"], device="cpu")
    with pytest.raises(UserError, match="out of range"):
        find_neurons(lm, NeuronsConfig(layers=(5,)))
    with pytest.raises(UserError, match="not a single token"):
        find_neurons(lm, NeuronsConfig(tokens=(" xylophonequux",)))
    with pytest.raises(ValueError, match="top_n"):
        NeuronsConfig(top_n=0)
