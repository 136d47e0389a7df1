"""Cue swaps: the slot fillers, and the cue and head rows against a hand computation."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import torch
from torch import Tensor
from transformers import GPT2Config, GPT2LMHeadModel

from lookuplens.cueswap import SlotIndex
from lookuplens.model import LoadedModel, from_hf, hook_name, load_model
from lookuplens.verify import VerifyConfig, verify_run

TOP = [
    "An owl sat on the old wall and then the",
    "She bought an apple at the market and the",
    "We saw an eagle over the hill and then the",
]


def test_slot_fillers_share_both_neighbours_else_the_left_one() -> None:
    prompts = [[1, 5, 2], [1, 6, 2], [1, 6, 2], [1, 7, 3], [4, 8, 2], [1, 9]]
    slots = SlotIndex(prompts, skip=[9])
    # between 1 and 2: 6 (twice) before 5; the word itself is never its own filler
    assert slots.fillers(1, 2, 0, 5) == [6, 5]
    assert slots.fillers(1, 2, 6, 5) == [5]
    assert slots.fillers(1, 2, 0, 1) == [6]
    # no other word between 4 and 2: fall back to what follows 4, then to nothing
    assert slots.fillers(4, 2, 8, 3) == []
    assert slots.fillers(1, 3, 7, 3) == [6, 5]
    # skipped tokens (special ids) never fill a slot
    assert 9 not in slots.fillers(1, None, 0, 10)


def _tables(lm: LoadedModel, prompts: list[list[int]], neuron: int, layer: int) -> tuple:
    k = len(prompts)
    examples = pa.table(
        {
            "example_id": list(range(k)),
            "layer": [layer] * k,
            "neuron": [neuron] * k,
            "tokens": prompts,
            "kind": ["top"] * k,
        }
    )
    neurons = pa.table({"layer": [layer], "neuron": [neuron], "token_id": [17]})
    stats = pa.table({"layer": [layer], "neuron": [neuron], "act_mean": [0.0]})
    labels = pa.table(
        {
            "example_id": list(range(k)),
            "layer": [layer] * k,
            "neuron": [neuron] * k,
            "head_layer": [0] * k,
            "head": [0] * k,
            "active": [True] * k,
            "split": ["train"] * k,
        }
    )
    pairs = pa.table(
        {
            "layer": [layer],
            "neuron": [neuron],
            "head_layer": [0],
            "head": [0],
            "kept": [True],
            "ks_stat": [float("nan")],
            "ks_pvalue": [float("nan")],
        }
    )
    return examples, neurons, stats, labels, pairs


def _act(lm: LoadedModel, toks: list[int], layer: int, n: int, hooks=()) -> float:  # type: ignore[no-untyped-def]
    post = hook_name(layer, "mlp.hook_post")
    _, c = lm.run_with_cache(torch.tensor([toks]), [post], extra_hooks=list(hooks))
    return float(c[post][0, -1, n])


def _logprob(lm: LoadedModel, toks: list[int], hooks=()) -> float:  # type: ignore[no-untyped-def]
    logits, _ = lm.run_with_cache(torch.tensor([toks]), [], extra_hooks=list(hooks))
    assert logits is not None
    return float(torch.log_softmax(logits[0, -1].double(), -1)[17])


def _strongest_neuron(lm: LoadedModel, prompts: list[list[int]], layer: int) -> int:
    post = hook_name(layer, "mlp.hook_post")
    acts = torch.stack(
        [lm.run_with_cache(torch.tensor([t]), [post])[1][post][0, -1] for t in prompts]
    )
    return int(torch.argmax(acts.min(0).values))


@pytest.fixture
def lm(tiny_dirs: dict[str, Path]) -> LoadedModel:
    return load_model(tiny_dirs["gpt2"], device="cpu")


def test_cue_and_head_rows_match_hand_computation(lm: LoadedModel) -> None:
    """Every ``cue_swap`` row is the swapped prompt's effect on the neuron, removes at least
    `swap_min_drop`, swaps a filler of the slot outside the last `swap_skip_last` tokens;
    every ``head_source_swap`` row is that head's ``z`` from the swapped run patched into
    the clean run, for every head upstream of the neuron."""
    layer = 1
    prompts = [lm.to_tokens(t)[0].tolist() for t in TOP]
    n = _strongest_neuron(lm, prompts, layer)
    tables = _tables(lm, prompts, n, layer)
    cfg = VerifyConfig(
        neuron_interventions=False,
        batch_rows=5,
        swap_min_drop=1e-4,
        swap_max_cues=2,
        swap_skip_last=2,
        swap_fillers=2,
    )
    effects, _ = verify_run(lm, *tables, cfg)
    df = effects.to_pandas()
    cues = df[df.intervention == "cue_swap"]
    heads = df[df.intervention == "head_source_swap"]
    assert len(cues), "a random model moves its neurons little, but more than 0.01%"
    slots = SlotIndex(prompts, skip=lm.tokenizer.all_special_ids)
    n_heads = (layer + 1) * lm.n_heads
    for row in cues.itertuples():
        toks = prompts[int(row.example_id)]
        s, t = int(row.swap_position), int(row.swap_token_id)
        assert 1 <= s < len(toks) - cfg.swap_skip_last
        assert t in slots.fillers(toks[s - 1], toks[s + 1], toks[s], cfg.swap_fillers)
        swapped = toks[:s] + [t] + toks[s + 1 :]
        clean = _act(lm, toks, layer, n)
        assert row.delta_activation == pytest.approx(_act(lm, swapped, layer, n) - clean, abs=1e-5)
        assert row.delta_activation <= -cfg.swap_min_drop * clean
        mine = heads[(heads.example_id == row.example_id) & (heads.swap_position == s)]
        assert len(mine) == n_heads
        names = {hl: hook_name(hl, "attn.hook_z") for hl in range(layer + 1)}
        _, donor = lm.run_with_cache(torch.tensor([swapped]), list(names.values()))
        for h in mine.itertuples():
            hl, hh = int(h.head_layer), int(h.head)

            def patch(
                z: Tensor, _n: str, new: Tensor = donor[names[hl]][:, :, hh], hh: int = hh
            ) -> Tensor:
                z = z.clone()
                z[:, :, hh] = new
                return z

            want = _act(lm, toks, layer, n, [(names[hl], patch)]) - clean
            assert h.delta_activation == pytest.approx(want, abs=1e-5)
            lp = _logprob(lm, toks, [(names[hl], patch)]) - _logprob(lm, toks)
            assert h.delta_logprob == pytest.approx(lp, abs=1e-5)
    assert cues.groupby("example_id").size().max() <= cfg.swap_max_cues


def test_patching_the_only_head_reproduces_the_swap(tmp_path: Path) -> None:
    """With one layer of one head, a layer-0 neuron's input at the last position is its
    token, its position and the head's output: patching the head from the swapped run is
    the whole swap, so each head row equals its cue row (the donor is aligned)."""
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(
        GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=1, n_inner=32)
    ).eval()
    lm = from_hf(hf, _tokenizer(tmp_path), "one-head")
    prompts = [[int(x) for x in torch.randint(1, 10, (12,))] for _ in range(4)]
    n = _strongest_neuron(lm, prompts, 0)
    cfg = VerifyConfig(neuron_interventions=False, swap_min_drop=0.01, batch_rows=3)
    effects, _ = verify_run(lm, *_tables(lm, prompts, n, 0), cfg)
    df = effects.to_pandas()
    cue = df[df.intervention == "cue_swap"].set_index(["example_id", "swap_position"])
    head = df[df.intervention == "head_source_swap"].set_index(["example_id", "swap_position"])
    assert len(cue) and sorted(cue.index) == sorted(head.index)
    for key, row in cue.iterrows():
        assert head.loc[key].delta_activation == pytest.approx(row.delta_activation, abs=1e-5)


def _tokenizer(tmp_path: Path):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(64)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0")


def test_the_head_screen_patches_only_the_heads_it_ranks_highest(lm: LoadedModel) -> None:
    """With `swap_heads` = 1, each cue gets one head row, and it is one of the rows the
    unscreened run measures, with the same effect."""
    layer = 1
    prompts = [lm.to_tokens(t)[0].tolist() for t in TOP]
    n = _strongest_neuron(lm, prompts, layer)
    base = {"neuron_interventions": False, "swap_min_drop": 1e-4, "batch_rows": 5}
    full = verify_run(lm, *_tables(lm, prompts, n, layer), VerifyConfig(**base))[0].to_pandas()
    one = verify_run(lm, *_tables(lm, prompts, n, layer), VerifyConfig(**base, swap_heads=1))[
        0
    ].to_pandas()
    cols = ["example_id", "swap_position", "head_layer", "head"]
    heads = one[one.intervention == "head_source_swap"]
    assert len(heads) == (one.intervention == "cue_swap").sum() > 0
    merged = heads.merge(full[full.intervention == "head_source_swap"], on=cols)
    assert len(merged) == len(heads)
    assert (merged.delta_activation_x - merged.delta_activation_y).abs().max() < 1e-5


def test_the_screen_adds_the_positions_the_readers_attend_to_most(lm: LoadedModel) -> None:
    """With `attended`, each row's candidates hold, besides the gradient screen's, the
    swappable position each reader head attends to most from the last token (by hand:
    `last_token_attention`), whatever its first-order estimate."""
    from lookuplens import cueswap
    from lookuplens.examples.reads import last_token_attention
    from lookuplens.interventions import Row

    layer, readers = 1, [(0, 1), (1, 0)]
    prompts = [lm.to_tokens(t)[0].tolist() for t in TOP]
    n = _strongest_neuron(lm, prompts, layer)
    rows = [Row(i, layer, n, p, 17) for i, p in enumerate(prompts)]
    slots = SlotIndex(prompts, skip=lm.tokenizer.all_special_ids)
    cfg = cueswap.SwapSettings(4, 1, 0.2, 1, 2, 0, 8, attended=True)
    clean = cueswap._clean_grads(lm, rows, layer, False, [readers] * len(rows))
    got = cueswap._screen(lm, rows, clean, slots, cfg, [readers] * len(rows))
    plain = cueswap._screen(lm, rows, clean, slots, cfg)
    assert all(c.estimate < 0 for c in plain) and len(plain) <= len(rows) < len(got)
    for i, toks in enumerate(prompts):
        mine = {c.position for c in got if c.row is rows[i]}
        swappable = [
            s
            for s in range(1, len(toks) - cfg.skip_last)
            if slots.fillers(toks[s - 1], toks[s + 1], toks[s], cfg.fillers)
        ]
        want = {c.position for c in plain if c.row is rows[i]}
        for hl, h in readers:
            att = last_token_attention(lm, [toks], hl, h)[0]
            want.add(max(swappable, key=lambda s: (att[s], -s)))
        assert mine == want
