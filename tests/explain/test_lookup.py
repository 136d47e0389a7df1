"""Look-up scores (the OV view of a head into a neuron) against a hand computation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lookuplens.explain.features import Background, cue_positions
from lookuplens.explain.lookup import LookupScores
from lookuplens.model import load_model


def test_layer0_scores_equal_the_hand_computed_ov_circuit(tiny_dirs: dict[str, Path]) -> None:
    lm = load_model(str(tiny_dirs["gpt2"]), device="cpu")
    hf = lm.hf
    blk0, blk1 = hf.transformer.h[0], hf.transformer.h[1]
    d, n_heads = hf.config.n_embd, hf.config.n_head
    dh = d // n_heads
    head, neuron = 1, 7
    with torch.no_grad():
        x = hf.transformer.wte.weight + hf.transformer.wpe.weight[0]  # every token at position 0
        v = (
            blk0.ln_1(x) @ blk0.attn.c_attn.weight[:, 2 * d : 3 * d]
            + blk0.attn.c_attn.bias[2 * d :]
        )
        v_h = v[:, head * dh : (head + 1) * dh]
        out = v_h @ blk0.attn.c_proj.weight[head * dh : (head + 1) * dh]  # [vocab, d]
        w = blk1.ln_2.weight * blk1.mlp.c_fc.weight[:, neuron]
        w = w - w.mean()
        want = out.double() @ w.double()
        want = want - want.median()
    got = LookupScores(lm, batch=7).scores(0, head, 1, neuron)
    assert torch.allclose(got, want, atol=1e-4)
    ids, scores = LookupScores(lm).top_tokens(0, head, 1, neuron, 0.5, 5)
    assert 1 <= len(ids) <= 5 and scores == sorted(scores, reverse=True)
    assert scores[-1] >= 0.5 * scores[0] and ids[0] == int(torch.argmax(want))


def test_any_of_cue_positions_and_background_rate() -> None:
    cue = ("any_of", (5, 9))
    assert cue_positions((1, 5, 2, 9, 5), cue) == [1, 3, 4]
    assert cue_positions((1, 2), cue) == []
    bg = Background([(1, 5), (2, 3), (9,), (4,)], max_n=2)
    assert bg.rate(cue) == pytest.approx((2 + 0.5) / 5)
